//! The etcd connection keys: one set of rules and messages, for TOML keys
//! (at their spans) and for `--etcd-*` flags.

use super::*;
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;

#[derive(Deserialize)]
struct Raw {
    backend: Spanned<String>,
    endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    prefix: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

fn keys(raw: &Raw) -> EtcdKeys<'_> {
    EtcdKeys {
        naming: Naming::Table("store"),
        endpoints: raw.endpoints.as_ref(),
        prefix: raw.prefix.as_ref(),
        missing_at: raw.backend.span(),
        user: raw.user.as_ref(),
        password_file: raw.password_file.as_ref(),
        ca_file: raw.ca_file.as_ref(),
        cert_file: raw.cert_file.as_ref(),
        key_file: raw.key_file.as_ref(),
    }
}

const BASE: &str = "backend = \"etcd\"\n";

/// Checks `BASE` + `extra` in `dir`; on a refusal, the refused text and
/// the message.
fn check(dir: &Path, extra: &str) -> Result<EtcdAccess, (String, String)> {
    let text = format!("{BASE}{extra}");
    let raw: Raw = toml::from_str(&text).unwrap();
    keys(&raw)
        .check(dir)
        .map_err(|e| (text[e.span.clone()].to_string(), e.message))
}

fn write(dir: &Path, name: &str, content: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn endpoints_prefix_and_their_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let ok = check(
        dir.path(),
        "endpoints = [\"http://10.0.0.1:2379/\", \"http://etcd-2:2379\"]\nprefix = \"/ferry/dc1/\"\n",
    )
    .unwrap();
    assert_eq!(ok.endpoints, ["http://10.0.0.1:2379", "http://etcd-2:2379"]);
    assert_eq!(ok.prefix, "/ferry/dc1");
    assert!(ok.auth.is_none() && ok.tls.is_none());
    let ok = check(dir.path(), "endpoints = [\"http://[::1]:2379\"]\n").unwrap();
    assert_eq!(ok.prefix, "/ferry");

    for (extra, at, want) in [
        ("", "\"etcd\"", "store: backend = \"etcd\" needs endpoints"),
        ("endpoints = []\n", "[]", "store: endpoints is empty"),
        (
            "endpoints = [\"etcd-2:2379\"]\n",
            "\"etcd-2:2379\"",
            "store: endpoint \"etcd-2:2379\" is not http://HOST:PORT or https://HOST:PORT",
        ),
        (
            "endpoints = [\"http://h:0\"]\n",
            "\"http://h:0\"",
            "store: endpoint \"http://h:0\" has no valid port",
        ),
        (
            "endpoints = [\"http://u@h:1\"]\n",
            "\"http://u@h:1\"",
            "has no valid host",
        ),
        (
            "endpoints = [\"https://h:1\"]\n",
            "\"https://h:1\"",
            "store: endpoint \"https://h:1\" is https: set ca_file (the members' CA)",
        ),
        (
            "endpoints = [\"http://h:1\"]\nprefix = \"/\"\n",
            "\"/\"",
            "store: prefix \"/\" must start with '/'",
        ),
        (
            "endpoints = [\"http://h:1\"]\nprefix = \"/a b\"\n",
            "\"/a b\"",
            "no spaces",
        ),
    ] {
        let (text, message) = check(dir.path(), extra).expect_err(extra);
        assert_eq!(text, at, "{extra}: {message}");
        assert!(message.contains(want), "{extra}: {message}");
    }
    let many = (1..=65)
        .map(|i| format!("\"http://h:{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let (_, message) = check(dir.path(), &format!("endpoints = [{many}]\n")).unwrap_err();
    assert_eq!(message, "store: more than 64 endpoints");
}

#[test]
fn the_password_is_a_secret_file_and_comes_with_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let eps = "endpoints = [\"http://h:1\"]\n";
    write(dir.path(), "pw", "hunter2\n", 0o644);
    let (at, message) = check(
        dir.path(),
        &format!("{eps}user = \"ferry\"\npassword_file = \"pw\"\n"),
    )
    .unwrap_err();
    // Fail closed: a password others can read is refused, naming key and file.
    assert_eq!(at, "\"pw\"");
    assert!(message.contains("store password_file"), "{message}");
    assert!(message.contains("pw"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
    write(dir.path(), "pw", "hunter2\n", 0o600);
    let ok = check(
        dir.path(),
        &format!("{eps}user = \"ferry\"\npassword_file = \"pw\"\n"),
    )
    .unwrap();
    let auth = ok.auth.unwrap();
    assert_eq!(auth.user, "ferry");
    assert!(auth.password.matches(b"hunter2"));
    // Debug never shows the password.
    assert!(!format!("{auth:?}").contains("hunter2"));

    for (extra, at, want) in [
        (
            "user = \"ferry\"\n",
            "\"ferry\"",
            "store: user without password_file (a file readable by its owner only)",
        ),
        (
            "password_file = \"pw\"\n",
            "\"pw\"",
            "store: password_file without user",
        ),
        (
            "user = \"\"\npassword_file = \"pw\"\n",
            "\"\"",
            "store: user is empty",
        ),
        (
            "user = \"u\"\npassword_file = \"missing\"\n",
            "\"missing\"",
            "store password_file",
        ),
        (
            "user = \"u\"\npassword_file = \"\"\n",
            "\"\"",
            "store password_file is an empty path",
        ),
    ] {
        let (text, message) = check(dir.path(), &format!("{eps}{extra}")).expect_err(extra);
        assert_eq!(text, at, "{extra}: {message}");
        assert!(message.contains(want), "{extra}: {message}");
    }
}

#[test]
fn tls_files_pairs_and_one_scheme() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", "CA", 0o644);
    write(dir.path(), "c.pem", "CERT", 0o644);
    write(dir.path(), "c.key", "KEY", 0o644);
    let tls = "endpoints = [\"https://h:1\", \"https://h:2\"]\nca_file = \"ca.pem\"\n";
    let t = check(dir.path(), tls).unwrap().tls.unwrap();
    assert_eq!((t.ca.as_str(), t.identity.is_none()), ("CA", true));
    let pair = format!("{tls}cert_file = \"c.pem\"\nkey_file = \"c.key\"\n");
    let (at, message) = check(dir.path(), &pair).unwrap_err();
    assert_eq!(at, "\"c.key\"");
    assert!(
        message.contains("store key_file") && message.contains("chmod 600"),
        "{message}"
    );
    write(dir.path(), "c.key", "KEY", 0o600);
    let (cert, key) = check(dir.path(), &pair)
        .unwrap()
        .tls
        .unwrap()
        .identity
        .unwrap();
    assert_eq!(cert, "CERT");
    assert!(key.matches(b"KEY"));

    for (extra, at, want) in [
        (
            "endpoints = [\"https://h:1\", \"http://h:2\"]\nca_file = \"ca.pem\"\n",
            "\"http://h:2\"",
            "store: endpoint \"http://h:2\" is plain http while ca_file is set: use https://",
        ),
        (
            "endpoints = [\"https://h:1\"]\nca_file = \"nope.pem\"\n",
            "\"nope.pem\"",
            "store: ca_file \"nope.pem\": cannot read",
        ),
        (
            "endpoints = [\"http://h:1\"]\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n",
            "\"c.pem\"",
            "store: cert_file and key_file need ca_file (the members' CA)",
        ),
        (
            "endpoints = [\"https://h:1\"]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n",
            "\"c.pem\"",
            "store: cert_file without key_file",
        ),
        (
            "endpoints = [\"https://h:1\"]\nca_file = \"ca.pem\"\nkey_file = \"c.key\"\n",
            "\"c.key\"",
            "store: key_file without cert_file",
        ),
    ] {
        let (text, message) = check(dir.path(), extra).expect_err(extra);
        assert_eq!(text, at, "{extra}: {message}");
        assert!(message.contains(want), "{extra}: {message}");
    }
}

/// The same rules on the command line, naming the flags.
#[test]
fn flags_are_named_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let flag = |v: &str| Spanned::new(0..0, v.to_string());
    let eps = Spanned::new(0..0, vec![flag("https://h:1")]);
    let user = flag("ferry");
    let mut k = EtcdKeys {
        naming: Naming::Flags,
        endpoints: Some(&eps),
        prefix: None,
        missing_at: 0..0,
        user: None,
        password_file: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let e = k.check(dir.path()).unwrap_err();
    assert_eq!(
        e.message,
        "endpoint \"https://h:1\" is https: set --etcd-ca-file (the members' CA)"
    );
    let plain = Spanned::new(0..0, vec![flag("http://h:1")]);
    k.endpoints = Some(&plain);
    k.user = Some(&user);
    let e = k.check(dir.path()).unwrap_err();
    assert_eq!(
        e.message,
        "--etcd-user without --etcd-password-file (a file readable by its owner only)"
    );
    write(dir.path(), "pw", "hunter2\n", 0o604);
    let pw = flag("pw");
    k.password_file = Some(&pw);
    let e = k.check(dir.path()).unwrap_err();
    assert!(e.message.contains("--etcd-password-file"), "{e}");
    assert!(e.message.contains("chmod 600"), "{e}");
    k.endpoints = None;
    let e = k.check(dir.path()).unwrap_err();
    assert_eq!(e.message, "--control etcd needs --etcd-endpoints");
}
