//! The freeze step with the run in etcd waits for every router seen there
//! (cargo feature `etcd`; real 3-member etcd, real routers and filers of
//! tests/common): a router recorded as seen whose registration is gone
//! (`P/fleet/seen/ghost`, no `P/routers/ghost`: a router killed, its lease
//! expired) makes the freeze's attempt abandon, naming it, at
//! `drain_timeout`; once an operator retired it (`P/fleet/retired/ghost`),
//! the next attempt completes and the unit moves.

mod common;
#[path = "../../ferry-journal/tests/etcd_cluster/mod.rs"]
mod etcd_cluster;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::world;
use etcd_cluster::Cluster;
use ferry_orch::config::EtcdSettings;
use ferry_orch::lease::EtcdRun;
use ferry_orch::{Options, Orchestrator, Step, UnitState};
use ferry_store::{EtcdConfig, EtcdStore};

const PREFIX: &str = "/fleet-freeze";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seen_router_that_is_gone_blocks_the_freeze_until_retired() {
    let c = Cluster::start(3);
    let w = world("[freeze]\ndrain_timeout = \"1s\"\nretry_after = \"100ms\"\nmax_attempts = 3\n")
        .await;
    let s = EtcdSettings {
        endpoints: c.endpoints(),
        prefix: PREFIX.to_string(),
        auth: None,
        tls: None,
        run: "night-1".to_string(),
        lease_ttl: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        shared_records: false,
    };
    let etcd = Arc::new(EtcdStore::connect(EtcdConfig::new(c.endpoints(), PREFIX)).unwrap());
    etcd.note_seen("ghost", r#"{"first_ms": 1}"#).unwrap();

    // The operator retires the ghost once the first attempt was abandoned
    // because of it (the observer sees every journaled event).
    let abandoned: Arc<Mutex<Vec<String>>> = Arc::default();
    let (seen, e) = (abandoned.clone(), etcd.clone());
    let observer: ferry_orch::Observer = Arc::new(move |rec| {
        let text = format!("{:?}", rec.event);
        if rec.event.step == Some(Step::Freeze) && text.contains("ghost") {
            let mut list = seen.lock().unwrap();
            if list.is_empty() {
                e.retire_router("ghost", r#"{"by": "test"}"#).unwrap();
            }
            list.push(text);
        }
    });
    let o = Orchestrator::start(
        w.inputs(),
        EtcdRun::take(&s, Some("runner")).unwrap(),
        Options {
            now: true,
            observer: Some(observer),
            ..Options::default()
        },
    )
    .unwrap();
    let summary = o.run().await.unwrap();
    assert_eq!(summary.units, vec![("U1".to_string(), UnitState::Done)]);
    w.assert_moved().await;

    let texts = abandoned.lock().unwrap().clone();
    assert!(!texts.is_empty(), "no attempt was abandoned for the ghost");
    assert!(
        texts[0].contains("router ghost did not acknowledge")
            && texts[0].contains("not registered"),
        "{texts:?}"
    );
    // The freeze that completed waited for no one in etcd (the ghost retired,
    // the test's routers are not on etcd).
    let events = o.journal().events().unwrap();
    let freeze_end = events
        .iter()
        .rev()
        .find(|r| {
            r.event.step == Some(Step::Freeze)
                && format!("{:?}", r.event).contains("every router acknowledged")
        })
        .expect("a freeze that ended ok");
    let text = format!("{:?}", freeze_end.event);
    assert!(text.contains("in etcd: no router to wait for"), "{text}");
}
