//! The JSON shapes on the wire: what routers of every version send and take.

use ferry_admin_api::sites::{QueriedSite, SiteBatch, SiteChange};
use ferry_admin_api::tunnels::Tunnel;
use ferry_model::SiteState;
use serde_json::json;

#[test]
fn a_site_change_is_the_shape_routers_take() {
    let c = SiteChange {
        host: Some("www.a.com".into()),
        placement: "pool:web".into(),
        state: SiteState::Frozen,
        epoch: 7,
    };
    let batch = SiteBatch {
        sites: vec![c.clone()],
    };
    assert_eq!(
        serde_json::to_value(&batch).unwrap(),
        json!({"sites": [{"host": "www.a.com", "placement": "pool:web", "state": "frozen", "epoch": 7}]})
    );
    let one = SiteChange { host: None, ..c };
    assert_eq!(
        serde_json::to_value(&one).unwrap(),
        json!({"placement": "pool:web", "state": "frozen", "epoch": 7}),
        "PUT /v1/sites/{{host}} sends no host"
    );
    let defaulted: SiteChange =
        serde_json::from_value(json!({"placement": "remote:dc2", "epoch": 1})).unwrap();
    assert_eq!(defaulted.state, SiteState::Active);
    assert!(serde_json::from_value::<SiteChange>(
        json!({"placement": "pool:web", "epoch": 1, "extra": 1})
    )
    .is_err());
}

#[test]
fn a_query_answer_holds_present_and_absent_sites() {
    let sites: Vec<QueriedSite> = serde_json::from_value(json!([
        {"host": "a.com", "placement": "pool:web", "state": "active", "epoch": 3, "held": 1, "in_flight": 2},
        {"host": "b.com", "absent": true},
    ]))
    .unwrap();
    assert!(matches!(&sites[0], QueriedSite::Present(s) if s.held == 1 && s.in_flight == 2));
    assert!(matches!(&sites[1], QueriedSite::Absent(a) if a.absent && a.host == "b.com"));
    assert_eq!(
        serde_json::to_value(&sites[1]).unwrap(),
        json!({"host": "b.com", "absent": true})
    );
}

#[test]
fn a_tunnel_without_galera_reads_and_writes_null() {
    let v = json!({
        "name": "db", "listen": null, "upstream": "127.0.0.1:3306",
        "configured_upstream": "127.0.0.1:3306", "server": "db1", "observe": true,
        "connections_total": 0, "open_connections": 0, "connect_failures": 0,
        "bytes_to_upstream": 0, "bytes_to_client": 0, "idle_closed": 0,
        "no_usable_node": 0, "logins": {"accepted": 0, "off": 0}, "galera": null,
    });
    let t: Tunnel = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&t).unwrap(), v);
}

#[test]
fn a_site_answer_grows_its_stragglers_compatibly() {
    use ferry_admin_api::sites::{Site, Stragglers};
    // From a router before stragglers: no field, read as None.
    let old: Site = serde_json::from_value(json!({
        "host": "a.com", "placement": "pool:web", "state": "frozen",
        "epoch": 2, "held": 0, "in_flight": 0
    }))
    .unwrap();
    assert_eq!(old.stragglers, None);
    // Not frozen: the field is left out, so older readers see the old shape.
    let active = Site {
        state: SiteState::Active,
        ..old.clone()
    };
    assert!(serde_json::to_value(&active)
        .unwrap()
        .get("stragglers")
        .is_none());
    let cut = Site {
        stragglers: Some(Stragglers {
            deadline_passed: true,
            upload: 1,
            long_poll: 2,
            stream: 3,
            upgrade: 4,
            kept: 0,
        }),
        ..old
    };
    let v = serde_json::to_value(&cut).unwrap();
    assert_eq!(
        v["stragglers"],
        json!({"deadline_passed": true, "upload": 1, "long_poll": 2, "stream": 3, "upgrade": 4, "kept": 0})
    );
    let back: Site = serde_json::from_value(v).unwrap();
    assert_eq!(back.stragglers.map(|s| s.cut()), Some(10));
    // A newer router may add reasons: unknown ones are ignored, missing ones are 0.
    let newer: Stragglers = serde_json::from_value(json!({"upload": 1, "websocket": 4})).unwrap();
    assert_eq!(
        (newer.upload, newer.stream, newer.deadline_passed),
        (1, 0, false)
    );
}
