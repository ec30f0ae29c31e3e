//! The shared test suite for [`Store`] implementations.
//!
//! Every backend's tests call [`run_all`] with a function that makes a fresh, empty
//! store. Each check is also public so a backend can run one alone while debugging.
//! It is compiled into the library (not `cfg(test)`) so other crates' tests can use
//! it; checks panic with a message naming what broke.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};
use serde_json::json;

use crate::Store;

/// One check of the suite; it expects a fresh, empty store.
type Check = fn(&dyn Store);

/// Every check, by name, each given a fresh store from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    let checks: [(&str, Check); 10] = [
        ("empty_store", empty_store),
        ("sites_roundtrip", sites_roundtrip),
        ("put_overwrites", put_overwrites),
        ("put_is_atomic", put_is_atomic),
        ("readers_see_whole_batches", readers_see_whole_batches),
        ("remove", remove),
        ("server_states", server_states),
        ("journal_order", journal_order),
        ("journal_bodies_roundtrip", journal_bodies_roundtrip),
        ("journal_concurrent_appends", journal_concurrent_appends),
    ];
    for (name, check) in checks {
        // Printed (and captured by the test harness) so a failure names its check.
        eprintln!("store conformance: {name}");
        check(make().as_ref());
    }
}

fn host(name: &str) -> Hostname {
    Hostname::parse(name).unwrap_or_else(|e| panic!("test host {name:?}: {e}"))
}

fn record(name: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
    SiteRecord {
        host: host(name),
        placement: Placement::parse(placement)
            .unwrap_or_else(|| panic!("test placement {placement:?}")),
        state,
        epoch: Epoch(epoch),
    }
}

fn sorted(mut records: Vec<SiteRecord>) -> Vec<SiteRecord> {
    records.sort_by(|a, b| a.host.cmp(&b.host));
    records
}

fn ok<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new store holds nothing.
pub fn empty_store(store: &dyn Store) {
    assert_eq!(ok("sites", store.sites()), vec![], "new store has sites");
    assert_eq!(ok("site", store.site(&host("a.example.com"))), None);
    assert!(ok("server_states", store.server_states()).is_empty());
    assert!(ok("journal_since", store.journal_since(0, 10)).is_empty());
    ok("put_sites(empty)", store.put_sites(&[]));
    ok("remove_sites(empty)", store.remove_sites(&[]));
    assert_eq!(ok("sites", store.sites()), vec![]);
}

/// Records read back exactly as written, in host order, whatever their placement,
/// state and epoch (up to `2^63 - 1`).
pub fn sites_roundtrip(store: &dyn Store) {
    let records = vec![
        record("b.example.com", "pool:web", SiteState::Active, 1),
        record("*.example.com", "remote:dc2", SiteState::Maintenance, 7),
        record("a.example.com", "pool:api:v2", SiteState::Frozen, 0),
        record(
            "z.example.org",
            "remote:dc-3",
            SiteState::Active,
            i64::MAX as u64,
        ),
        record("xn--bcher-kva.example", "pool:w_1", SiteState::Frozen, 42),
    ];
    ok("put_sites", store.put_sites(&records));
    assert_eq!(
        ok("sites", store.sites()),
        sorted(records.clone()),
        "sites() must return every record, in host order"
    );
    for r in &records {
        assert_eq!(
            ok("site", store.site(&r.host)).as_ref(),
            Some(r),
            "site({})",
            r.host
        );
    }
    assert_eq!(ok("site", store.site(&host("c.example.com"))), None);
}

/// A put replaces the record of a host, whatever the epochs (the store does not
/// judge), and the last record for a host within one batch wins.
pub fn put_overwrites(store: &dyn Store) {
    ok(
        "put_sites",
        store.put_sites(&[record("a.example.com", "pool:web", SiteState::Active, 5)]),
    );
    let a_lower = record("a.example.com", "remote:dc2", SiteState::Frozen, 3);
    let b = record("b.example.com", "pool:web", SiteState::Active, 1);
    ok("put_sites", store.put_sites(&[a_lower.clone(), b.clone()]));
    assert_eq!(
        ok("sites", store.sites()),
        vec![a_lower.clone(), b.clone()],
        "a put must replace the stored record even with a lower epoch"
    );
    let c_last = record("c.example.com", "pool:two", SiteState::Maintenance, 2);
    ok(
        "put_sites",
        store.put_sites(&[
            record("c.example.com", "pool:one", SiteState::Active, 1),
            c_last.clone(),
        ]),
    );
    assert_eq!(
        ok("site", store.site(&c_last.host)),
        Some(c_last.clone()),
        "the later record for a host within one batch must win"
    );
    assert_eq!(ok("sites", store.sites()).len(), 3);
}

/// A batch with a record the store refuses writes nothing, not even the records
/// before it.
pub fn put_is_atomic(store: &dyn Store) {
    let a = record("a.example.com", "pool:web", SiteState::Active, 1);
    ok("put_sites", store.put_sites(std::slice::from_ref(&a)));
    let batch = [
        record("a.example.com", "pool:web", SiteState::Frozen, 2),
        record("b.example.com", "pool:web", SiteState::Active, 1),
        SiteRecord {
            host: host("c.example.com"),
            // Prints as "pool:", which no store can read back as this placement.
            placement: Placement::Pool(String::new()),
            state: SiteState::Active,
            epoch: Epoch(1),
        },
    ];
    let err = store.put_sites(&batch);
    assert!(
        matches!(&err, Err(crate::StoreError::Unstorable { host, .. }) if host.as_str() == "c.example.com"),
        "a record with an empty pool name must be refused as Unstorable naming its host, got {err:?}"
    );
    assert_eq!(
        ok("sites", store.sites()),
        vec![a],
        "a refused batch must leave the store as it was"
    );
}

/// Readers running while batches are written see each batch whole or not at all.
pub fn readers_see_whole_batches(store: &dyn Store) {
    const HOSTS: usize = 200;
    const ROUNDS: u64 = 20;
    let batch = |epoch: u64| -> Vec<SiteRecord> {
        (0..HOSTS)
            .map(|i| {
                record(
                    &format!("s{i:03}.example.com"),
                    "pool:web",
                    SiteState::Active,
                    epoch,
                )
            })
            .collect()
    };
    let batches: Vec<Vec<SiteRecord>> = (1..=ROUNDS).map(batch).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                // Read `done` before the sites, so the last read sees the last batch.
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                let seen = ok("sites", store.sites());
                assert!(
                    seen.is_empty() || seen.len() == HOSTS,
                    "a reader saw {} of a {HOSTS}-record batch",
                    seen.len()
                );
                if let Some(first) = seen.first() {
                    assert!(
                        seen.iter().all(|r| r.epoch == first.epoch),
                        "a reader saw records of two batches at once"
                    );
                }
                if finished {
                    assert_eq!(seen.first().map(|r| r.epoch), Some(Epoch(ROUNDS)));
                    break;
                }
            });
        }
        for b in &batches {
            ok("put_sites", store.put_sites(b));
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
}

/// Removing deletes exactly the named hosts and ignores absent ones.
pub fn remove(store: &dyn Store) {
    let a = record("a.example.com", "pool:web", SiteState::Active, 1);
    let b = record("b.example.com", "pool:web", SiteState::Active, 1);
    let c = record("*.c.example.com", "remote:dc2", SiteState::Active, 1);
    ok(
        "put_sites",
        store.put_sites(&[a.clone(), b.clone(), c.clone()]),
    );
    ok(
        "remove_sites",
        store.remove_sites(&[b.host.clone(), host("absent.example.com")]),
    );
    assert_eq!(
        ok("sites", store.sites()),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(ok("site", store.site(&b.host)), None);
    ok("remove_sites", store.remove_sites(&[]));
    ok(
        "remove_sites",
        store.remove_sites(&[a.host.clone(), c.host.clone()]),
    );
    assert_eq!(ok("sites", store.sites()), vec![]);
    // A removed host can be put again.
    ok("put_sites", store.put_sites(std::slice::from_ref(&b)));
    assert_eq!(ok("sites", store.sites()), vec![b]);
}

/// Server states upsert by `(pool, server)` and list in that order.
pub fn server_states(store: &dyn Store) {
    ok(
        "put_server_state",
        store.put_server_state("web", "w2", ServerState::Maint),
    );
    ok(
        "put_server_state",
        store.put_server_state("web", "w1", ServerState::Drain),
    );
    ok(
        "put_server_state",
        store.put_server_state("api", "a1", ServerState::Ready),
    );
    ok(
        "put_server_state",
        store.put_server_state("web", "w1", ServerState::Ready),
    );
    let expected = vec![
        ("api".to_string(), "a1".to_string(), ServerState::Ready),
        ("web".to_string(), "w1".to_string(), ServerState::Ready),
        ("web".to_string(), "w2".to_string(), ServerState::Maint),
    ];
    assert_eq!(ok("server_states", store.server_states()), expected);
}

/// Sequence numbers start at 1 and grow; reading resumes after any of them.
pub fn journal_order(store: &dyn Store) {
    let before = now_ms();
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(ok(
            "journal_append",
            store.journal_append(&format!("step.{i}"), &json!({ "i": i })),
        ));
    }
    let after = now_ms();
    assert_eq!(seqs[0], 1, "the first journal entry must be number 1");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "journal sequence numbers must strictly increase: {seqs:?}"
    );
    let all = ok("journal_since", store.journal_since(0, 100));
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    for (i, entry) in all.iter().enumerate() {
        assert_eq!(entry.kind, format!("step.{i}"));
        assert_eq!(entry.body, json!({ "i": i }));
        // Generous slack: a networked store may stamp entries with its own clock.
        let slack = 10 * 60 * 1000;
        assert!(
            entry.at_unix_ms + slack >= before && entry.at_unix_ms <= after + slack,
            "entry {} time {} is far from the append ({before}..{after})",
            entry.seq,
            entry.at_unix_ms
        );
    }
    assert_eq!(
        ok("journal_since", store.journal_since(seqs[1], 2)),
        all[2..4]
    );
    assert_eq!(
        ok("journal_since", store.journal_since(seqs[3], 100)),
        all[4..]
    );
    assert!(ok("journal_since", store.journal_since(seqs[4], 100)).is_empty());
    assert!(ok("journal_since", store.journal_since(0, 0)).is_empty());
    assert!(ok("journal_since", store.journal_since(u64::MAX, 10)).is_empty());
    let next = ok(
        "journal_append",
        store.journal_append("step.5", &json!(null)),
    );
    assert!(
        next > seqs[4],
        "a later append got {next} after {}",
        seqs[4]
    );
}

/// Any JSON body reads back equal.
pub fn journal_bodies_roundtrip(store: &dyn Store) {
    let bodies = [
        json!(null),
        json!(true),
        json!(u64::MAX),
        json!(-12),
        json!(1.5),
        json!("quote \" backslash \\ newline \n unicode é 東京 🚢"),
        json!([1, "two", [3], {}]),
        json!({ "site": "a.example.com", "epoch": 7, "nested": { "list": [null, false] } }),
    ];
    for (i, body) in bodies.iter().enumerate() {
        ok(
            "journal_append",
            store.journal_append(&format!("kind {i} ✓"), body),
        );
    }
    let read = ok("journal_since", store.journal_since(0, bodies.len()));
    assert_eq!(read.len(), bodies.len());
    for (i, (entry, body)) in read.iter().zip(&bodies).enumerate() {
        assert_eq!(&entry.body, body, "journal body {i} changed in the store");
        assert_eq!(entry.kind, format!("kind {i} ✓"));
    }
}

/// Appends from several threads get distinct numbers, all readable in order.
pub fn journal_concurrent_appends(store: &dyn Store) {
    const THREADS: usize = 4;
    const EACH: usize = 50;
    let mut seqs: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            ok(
                                "journal_append",
                                store.journal_append("concurrent", &json!([t, i])),
                            )
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(seqs) => seqs,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        THREADS * EACH,
        "two appends got the same number"
    );
    let read = ok("journal_since", store.journal_since(0, THREADS * EACH + 1));
    assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
}
