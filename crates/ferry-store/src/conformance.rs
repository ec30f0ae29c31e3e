//! The shared test suite for [`Store`] implementations.
//!
//! Every backend's tests call [`run_all`] with a function that makes a fresh, empty
//! store. Each check is also public so a backend can run one alone while debugging.
//! It is compiled into the library (not `cfg(test)`) so other crates' tests can use
//! it; checks panic with a message naming what broke.

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};

use crate::Store;

/// One check of the suite; it expects a fresh, empty store.
type Check = fn(&dyn Store);

/// Every check, by name, each given a fresh store from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    let checks: [(&str, Check); 8] = [
        ("empty_store", empty_store),
        ("sites_roundtrip", sites_roundtrip),
        ("put_overwrites", put_overwrites),
        ("put_is_atomic", put_is_atomic),
        ("readers_see_whole_batches", readers_see_whole_batches),
        ("remove", remove),
        ("server_states", server_states),
        ("joined_servers", joined_servers),
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

/// A new store holds nothing.
pub fn empty_store(store: &dyn Store) {
    assert_eq!(ok("sites", store.sites()), vec![], "new store has sites");
    assert_eq!(ok("site", store.site(&host("a.example.com"))), None);
    assert!(ok("server_states", store.server_states()).is_empty());
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

/// Joined servers upsert by `(pool, name)`, list in that order, and go.
pub fn joined_servers(store: &dyn Store) {
    let joined = |pool: &str, name: &str, port: u16, tier: u8| crate::JoinedServer {
        pool: pool.to_string(),
        name: name.to_string(),
        address: std::net::SocketAddr::from(([10, 0, 0, 7], port)),
        tier,
        weight: 3,
    };
    assert!(ok("joined_servers", store.joined_servers()).is_empty());
    for s in [
        joined("web", "x2", 80, 0),
        joined("web", "x1", 81, 1),
        joined("api", "a/1", 82, 0),
        joined("web", "x1", 83, 2),
    ] {
        ok("put_joined_server", store.put_joined_server(&s));
    }
    assert_eq!(
        ok("joined_servers", store.joined_servers()),
        vec![
            joined("api", "a/1", 82, 0),
            joined("web", "x1", 83, 2),
            joined("web", "x2", 80, 0),
        ]
    );
    ok(
        "remove_joined_server",
        store.remove_joined_server("web", "x1"),
    );
    ok(
        "remove_joined_server",
        store.remove_joined_server("web", "absent"),
    );
    assert_eq!(
        ok("joined_servers", store.joined_servers()),
        vec![joined("api", "a/1", 82, 0), joined("web", "x2", 80, 0)]
    );
}
