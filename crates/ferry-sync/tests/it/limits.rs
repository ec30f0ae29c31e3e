//! The agent's bounds (issue 15) at the library level: the handshake's frame
//! limit and deadline, the idle timeout, the watch cap, and the settings
//! that configure them. Attacks on the real binary are in the abuse suite
//! (crates/ferry/tests/abuse/sync.rs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ferry_sync::agent::Limits;
use ferry_sync::proto::{self, Msg};
use ferry_sync::{AgentConfig, Source};

use crate::support::{tmp, Agent, KEY};

/// Only there to catch hangs.
const LIMIT: Duration = Duration::from_secs(30);

/// Connects and reads the Hello; returns the stream and the agent's nonce.
fn hello(port: u16) -> (TcpStream, [u8; 32]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    match proto::read_msg(&mut s).unwrap().unwrap().unwrap() {
        Msg::Hello { nonce } => (s, nonce),
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// Reads until the agent closes `s`; returns what it sent and when.
fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (got, Instant::now())
}

/// A session opened by hand (the client library would keep it busy).
fn opened(port: u16, volume: &str) -> TcpStream {
    let (mut s, server) = hello(port);
    let key = proto::derive_key(KEY);
    let nonce = [7u8; 32];
    let mac = proto::auth_mac(&key, "client", &server, &nonce);
    proto::write_msg(&mut s, &Msg::Auth { nonce, mac }).unwrap();
    assert!(matches!(
        proto::read_msg(&mut s).unwrap().unwrap().unwrap(),
        Msg::AuthOk { .. }
    ));
    let open = Msg::Open {
        volume: volume.into(),
        write: false,
    };
    proto::write_msg(&mut s, &open).unwrap();
    assert_eq!(proto::read_msg(&mut s).unwrap().unwrap().unwrap(), Msg::Ok);
    s
}

#[test]
fn a_handshake_frame_over_the_limit_is_refused_before_it_is_read() {
    let t = tmp();
    let agent = Agent::start(&[("v", t.path(), false)]);
    let (mut s, _) = hello(agent.port);
    let start = Instant::now();
    // A length just over the limit, and not one byte of the frame.
    let len = proto::MAX_HANDSHAKE_FRAME as u32 + 1;
    s.write_all(&len.to_be_bytes()).unwrap();
    let (got, at) = until_closed(&mut s);
    let said = String::from_utf8_lossy(&got);
    assert!(said.contains("authentication required"), "{said:?}");
    // At once, not at the handshake deadline.
    assert!(at - start < Duration::from_secs(5), "{:?}", at - start);
}

#[test]
fn one_deadline_covers_the_whole_handshake() {
    let t = tmp();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let agent = Agent::start_with(&[("v", t.path(), false)], limits);
    let (mut s, _) = hello(agent.port);
    let start = Instant::now();
    // Half an Auth frame, a byte at a time: every byte arrives well within
    // a per-read timeout, the whole never within the deadline.
    let frame = proto::encode(&Msg::Auth {
        nonce: [1; 32],
        mac: [2; 32],
    });
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut cut = None;
    for b in &frame[..frame.len() / 2] {
        if s.write_all(&[*b]).is_err() {
            cut = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(_) => {
                cut = Some(start.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = Some(start.elapsed());
                break;
            }
        }
        assert!(start.elapsed() < LIMIT, "never cut");
    }
    let cut = cut.expect("the agent waited for all 33 bytes");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(10),
        "{cut:?}"
    );
}

#[test]
fn a_quiet_session_is_closed_after_the_idle_timeout() {
    let t = tmp();
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let agent = Agent::start_with(&[("v", t.path(), false)], limits);
    let mut s = opened(agent.port, "v");
    let start = Instant::now();
    let (_, at) = until_closed(&mut s);
    let quiet = at - start;
    assert!(
        quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(10),
        "{quiet:?}"
    );
}

#[test]
fn watches_are_capped_per_agent() {
    let t = tmp();
    let limits = Limits {
        max_watches: 1,
        ..Limits::default()
    };
    let agent = Agent::start_with(&[("v", t.path(), false)], limits);
    let first = agent.connect("v", false);
    first.changes().expect("the first watch");
    let second = agent.connect("v", false);
    let e = second
        .changes()
        .expect_err("a second watch past max_watches");
    assert!(e.to_string().contains("max_watches"), "{e}");
    // The first goes on.
    first.changes().expect("the first watch, again");
}

#[test]
fn agent_config_reads_limits_and_names_bad_values() {
    let p = std::path::Path::new("/etc/ferry/agent.toml");
    let head = "listen = \"127.0.0.1:7700\"\nkey = \"0123456789abcdef\"\n";
    let c = AgentConfig::parse(
        &format!(
            "{head}max_connections = 5\nhandshake_timeout_secs = 3\nidle_timeout_secs = 60\n\
             max_watches = 2\n[volumes.a]\npath = \"/srv/a\"\n[volumes.b]\npath = \"/srv/b\"\n\
             read_only = true\n[volumes.c]\npath = \"/srv/c\"\nread_only = true\nwatch = true\n"
        ),
        p,
    )
    .unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 5,
            handshake_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            max_watches: 2,
        }
    );
    // Watches: on for writable volumes, off for read-only ones unless said.
    assert!(c.volumes["a"].watch && !c.volumes["b"].watch && c.volumes["c"].watch);
    let e = AgentConfig::parse(
        &format!("{head}max_connections = 0\n[volumes.a]\npath = \"/srv/a\"\n"),
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("/etc/ferry/agent.toml:3:") && e.contains("max_connections"),
        "{e}"
    );
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let t = tmp();
    let key = t.path().join("agent.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = t.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:7700\"\nkey_file = \"agent.key\"\n[volumes.v]\npath = \"v\"\n",
    )
    .unwrap();
    let e = AgentConfig::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("agent.toml:2:") && e.contains("agent.key") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = AgentConfig::load(&cfg).unwrap();
    // The trailing newline is not part of the key.
    assert_eq!(c.key, proto::derive_key(KEY));
}
