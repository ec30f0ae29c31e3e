//! The agent's metrics count what sessions really did: a push through a
//! real agent, a refused writer, and the text Prometheus scrapes.

use ferry_sync::{run_pass, verify, LocalTree, SyncOptions};

use crate::support::{dirs, make_tree, no_events, tmp, Agent, KEY};

/// The value of the series `name` (with its labels, as rendered).
fn value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_push_through_an_agent_is_counted_in_its_metrics() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    make_tree(&src);
    let ro = t.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let agent = Agent::start(&[("dst", &dst, false), ("ro", &ro, true)]);
    {
        let remote = agent.connect("dst", true);
        let local = LocalTree::new(&src);
        let opts = SyncOptions {
            delete: true,
            ..SyncOptions::default()
        };
        run_pass(&local, &remote, &opts, 1, &no_events()).unwrap();
        assert!(verify(&local, &remote, 10).unwrap().equal());
        let text = agent.stats.render();
        assert_eq!(value(&text, "ferry_agent_sessions_active"), 1);
    }
    // A writer on a read-only volume is refused a session.
    let key = ferry_sync::proto::derive_key(KEY);
    assert!(ferry_sync::RemoteTree::connect("127.0.0.1", agent.port, "ro", &key, true).is_err());
    let text = {
        // The session ends on the agent's thread after the client hangs up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = agent.stats.render();
            if value(&text, "ferry_agent_sessions_active") == 0
                && value(
                    &text,
                    "ferry_agent_sessions_refused_total{reason=\"read_only\"}",
                ) == 1
            {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::yield_now();
        }
    };
    assert_eq!(value(&text, "ferry_agent_sessions_accepted_total"), 1);
    assert_eq!(
        value(&text, "ferry_agent_sessions_closed_total{how=\"client\"}"),
        1
    );
    assert!(
        value(&text, "ferry_agent_received_bytes_total") > 3 * 1024 * 1024,
        "{text}"
    );
    assert!(value(&text, "ferry_agent_sent_bytes_total") > 0);
    // 200 small files and more: every one a PutFile, the big one a commit.
    assert!(
        value(&text, "ferry_agent_files_written_total") > 200,
        "{text}"
    );
    assert!(value(&text, "ferry_agent_operations_total{op=\"put_file\"}") > 200);
    assert_eq!(
        value(&text, "ferry_agent_operations_total{op=\"commit\"}"),
        2,
        "{text}"
    );
    assert_eq!(
        value(&text, "ferry_agent_requests_total{request=\"scan\"}"),
        1
    );
    assert!(value(&text, "ferry_agent_requests_total{request=\"merkle_root\"}") >= 1);
    assert_eq!(value(&text, "ferry_agent_errors_total{kind=\"op\"}"), 0);
    assert!(value(&text, "ferry_agent_last_session_end_timestamp_seconds") > 1_700_000_000);
}
