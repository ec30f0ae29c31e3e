//! The Debian package (issue 21): `scripts/build-deb.sh` packages the binary
//! under test; dpkg installs it into an empty directory tree (maintainer
//! scripts run against the tree, as on a fresh Debian 12), and the installed
//! router checks its installed example config. The units are checked by
//! `systemd-analyze verify`, the man pages and completions are there, and a
//! purge removes the state directories.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The id of `name` in a passwd or group file of the tree.
fn id_in(file: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|id| id.parse().ok())
}

#[test]
fn the_package_installs_into_a_fresh_tree_and_its_router_checks_its_config() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let printed = run(Command::new("bash")
        .arg(repo().join("scripts/build-deb.sh"))
        .args(["--binary", FERRY, "--fast", "--out"])
        .arg(&out));
    // The script's last line on stdout is the package's path.
    let deb = PathBuf::from(
        printed
            .lines()
            .rfind(|l| l.starts_with('/') && l.ends_with(".deb"))
            .expect("build-deb.sh printed the package's path"),
    );
    assert!(deb.is_file(), "no package at {}", deb.display());

    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/ferry",
        "./lib/systemd/system/ferry-proxy.service",
        "./lib/systemd/system/ferry-agent.service",
        "./lib/systemd/system/ferry-exec.service",
        "./lib/systemd/system/ferry-migrate@.service",
        "./usr/lib/sysusers.d/ferry.conf",
        "./etc/ferry/proxy.toml",
        "./etc/logrotate.d/ferry",
        "./usr/share/man/man1/ferry.1.gz",
        "./usr/share/man/man1/ferry-proxy.1.gz",
        "./usr/share/bash-completion/completions/ferry",
        "./usr/share/zsh/vendor-completions/_ferry",
        "./usr/share/fish/vendor_completions.d/ferry.fish",
        "./usr/share/doc/ferry/copyright",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    let conffiles = run(Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&deb)
        .arg("conffiles"));
    assert!(conffiles.contains("/etc/ferry/proxy.toml"), "{conffiles}");

    // A fresh tree: an empty dpkg database and a passwd with root only.
    let tree = work.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(tree.join("etc/group"), "root:x:0:\n").unwrap();
    // Dependencies (libc) are the host's: the tree has no package database for them.
    run(Command::new("dpkg")
        .arg(format!("--root={}", tree.display()))
        .args(["--force-script-chrootless", "--force-depends", "-i"])
        .arg(&deb));

    let uid = id_in(&tree.join("etc/passwd"), "ferry").expect("postinst created the ferry user");
    let gid = id_in(&tree.join("etc/group"), "ferry").expect("and its group");
    for d in ["var/lib/ferry", "var/log/ferry"] {
        let m = std::fs::metadata(tree.join(d)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{d} owned by ferry");
        assert_eq!(m.permissions().mode() & 0o777, 0o750, "{d} mode");
    }
    let m = std::fs::metadata(tree.join("etc/ferry/proxy.toml")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, gid), "proxy.toml is root:ferry");
    assert_eq!(
        m.permissions().mode() & 0o777,
        0o640,
        "proxy.toml holds a token"
    );

    // The installed binary names its commit and checks the installed example.
    let installed = tree.join("usr/bin/ferry");
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.contains("commit "), "{version}");
    let check = run(Command::new(&installed)
        .args(["proxy", "--check", "--config"])
        .arg(tree.join("etc/ferry/proxy.toml")));
    assert!(check.contains("valid"), "{check}");

    // The units, pointed at the installed binary, pass systemd's own check
    // (the template as one instance).
    let units = work.path().join("units");
    std::fs::create_dir(&units).unwrap();
    for e in std::fs::read_dir(tree.join("lib/systemd/system")).unwrap() {
        let e = e.unwrap();
        let name = e
            .file_name()
            .to_string_lossy()
            .replace("@.service", "@night1.service");
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/bin/ferry", &installed.to_string_lossy());
        std::fs::write(units.join(name), text).unwrap();
    }
    let files: Vec<_> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let verify = run(Command::new("systemd-analyze").arg("verify").args(&files));
    assert!(
        !verify.contains("Unknown") && !verify.contains("rror"),
        "systemd-analyze verify:\n{verify}"
    );

    // Purge removes the state the package created.
    run(Command::new("dpkg")
        .arg(format!("--root={}", tree.display()))
        .args(["--force-script-chrootless", "--purge", "ferry"]));
    assert!(
        !tree.join("var/lib/ferry").exists(),
        "purge removes /var/lib/ferry"
    );
    assert!(!tree.join("usr/bin/ferry").exists());
}
