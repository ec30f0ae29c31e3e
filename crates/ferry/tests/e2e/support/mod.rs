//! What every end-to-end test needs: process guards, clients, the admin API,
//! bounded waiting and config snippets.

pub mod admin;
pub mod client;
pub mod procs;
pub mod traffic;

use std::net::SocketAddr;
use std::time::Duration;

pub use admin::{metric, Admin, TOKEN};
pub use procs::{free_port, Backend, Ferry, Nginx};
// The abuse suite shares this module and does not use every helper.
#[allow(unused_imports)]
pub use traffic::Traffic;

/// A bound on a polling loop: `tick` sleeps a little, and fails the test with
/// `what` once the limit has passed. Limits are generous: they catch hangs, they
/// do not measure anything.
pub struct Deadline {
    end: tokio::time::Instant,
    what: String,
}

impl Deadline {
    pub fn new(what: impl Into<String>, limit: Duration) -> Deadline {
        Deadline {
            end: tokio::time::Instant::now() + limit,
            what: what.into(),
        }
    }

    pub fn passed(&self) -> bool {
        tokio::time::Instant::now() >= self.end
    }

    pub async fn tick(&self) {
        assert!(!self.passed(), "timed out waiting for {}", self.what);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temporary directory for one router's config, store and logs.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ferry-e2e-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// A self-signed certificate for `host` made with openssl, written to
/// `dir/NAME.crt` and `dir/NAME.key`: (certificate file, key file).
pub fn self_signed(dir: &std::path::Path, name: &str, host: &str) -> (String, String) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args(["-days", "2", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        crt.to_str().expect("temporary paths are UTF-8").to_string(),
        key.to_str().expect("temporary paths are UTF-8").to_string(),
    )
}

/// `[router]` (with `extra` lines), `[admin]` with the test token and one
/// traffic listener, all on port 0.
pub fn router_config(name: &str, extra: &str) -> String {
    format!(
        r#"[router]
name = "{name}"
{extra}

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:0"
"#
    )
}

/// A `[[pool]]` whose servers are all in tier 0.
pub fn pool(name: &str, servers: &[(&str, SocketAddr)]) -> String {
    let mut s = format!("\n[[pool]]\nname = \"{name}\"\n");
    for (server, addr) in servers {
        s.push_str(&format!(
            "\n[[pool.server]]\nname = \"{server}\"\naddress = \"{addr}\"\n"
        ));
    }
    s
}

/// A `[[site]]` with a placement (active, epoch 0 unless `extra` says otherwise).
pub fn site(host: &str, placement: &str, extra: &str) -> String {
    format!("\n[[site]]\nhost = \"{host}\"\nplacement = \"{placement}\"\n{extra}\n")
}
