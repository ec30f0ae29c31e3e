//! Bad input is refused clearly: migrate.toml errors name file:line:col,
//! plan errors name the plan and what is wrong, nothing is written.

use std::path::Path;

use ferry_orch::{MigrateConfig, OrchError, Plan, RunInputs};

const GOOD: &str = r#"source = "par"
destination = "gra"

[datacenters.par]
pool = "par-web"
[datacenters.gra]
pool = "gra-web"

[[routers]]
name = "par-1"
datacenter = "par"
admin = "http://127.0.0.1:9101"
token = "secret"

[[routers]]
name = "gra-1"
datacenter = "gra"
admin = "http://127.0.0.1:9201"
traffic = "http://127.0.0.1:9280"
token = "secret"

[filers.fs-1]
source = "/srv/par/fs-1"
destination = "/srv/gra/fs-1"

[db_servers.sql002-1]
source = "mysql://ferry:pw@10.1.0.12:3306"
destination = "mysql://ferry:pw@10.2.0.12:3306"

[db]
max_lag = 10

[freeze]
max_freeze = "30s"
drain_timeout = "10s"

[window]
start = "01:00"
end = "05:00"
"#;

fn parse(text: &str) -> Result<MigrateConfig, OrchError> {
    MigrateConfig::parse(text, Path::new("/etc/ferry/migrate.toml"))
}

/// Asserts `text` is refused at the line holding `needle`, with `words` in the message.
fn refused_at(text: &str, needle: &str, words: &str) {
    let want = text
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1;
    match parse(text) {
        Err(OrchError::Config(ferry_conf::Invalid {
            path,
            line,
            message,
            ..
        })) => {
            assert_eq!(path, Path::new("/etc/ferry/migrate.toml"));
            assert_eq!(line, want, "wrong line for {message:?}");
            assert!(message.contains(words), "{message:?} lacks {words:?}");
        }
        other => panic!("expected a config error for {needle:?}, got {other:?}"),
    }
}

#[test]
fn the_documented_example_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.source, "par");
    assert_eq!(c.routers.len(), 2);
    assert_eq!(c.check.via, "gra-1");
    assert_eq!(c.freeze.drain_timeout, std::time::Duration::from_secs(10));
    let w = c.window.unwrap();
    assert!(w.contains(90) && !w.contains(300) && !w.contains(30));
    assert_eq!(c.db.max_lag, 10);
    assert!(c.db.verify);
    assert!(c.db.dest_binlog, "on unless said otherwise");
    let off = parse(&GOOD.replace("max_lag = 10", "max_lag = 10\ndest_binlog = false")).unwrap();
    assert!(!off.db.dest_binlog);
    let db = format!("{:?}", c.db_servers["sql002-1"]);
    assert!(
        db.contains("ferry@10.1.0.12:3306") && !db.contains("pw"),
        "{db}"
    );
}

#[test]
fn db_server_errors_name_the_line() {
    refused_at(
        &GOOD.replace("mysql://ferry:pw@10.1.0.12:3306", "postgres://x@h:1"),
        "postgres://",
        "mysql://",
    );
    refused_at(
        &GOOD.replace(
            "mysql://ferry:pw@10.2.0.12:3306",
            "mysql://ferry:pw@10.2.0.12:3306/shop",
        ),
        "/shop",
        "not in the URL",
    );
    refused_at(
        &GOOD.replace("destination = \"mysql://ferry:pw@10.2.0.12:3306\"\n", ""),
        "[db_servers.sql002-1]",
        "no destination",
    );
    refused_at(
        &GOOD.replace("max_lag = 10", "max_lag = -1"),
        "max_lag",
        "max_lag",
    );
}

/// A unit whose database server has no [db_servers] table is refused when
/// the plan is loaded, like a filer without [filers].
#[test]
fn a_database_server_the_config_does_not_describe_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("migrate.toml");
    let plan = d.path().join("plan.json");
    std::fs::write(&cfg, GOOD).unwrap();
    let with_db = |dbs: &str| {
        PLAN.replacen(
            r#""filers":["fs-1"],"#,
            &format!(r#""filers":["fs-1"],"databases":{dbs},"#),
            1,
        )
    };
    std::fs::write(&plan, with_db(r#"["shop@sql002-1"]"#)).unwrap();
    assert!(RunInputs::load(&cfg, &plan, None).is_ok());
    std::fs::write(&plan, with_db(r#"["shop@sql002-1","crm@sql010-1"]"#)).unwrap();
    match RunInputs::load(&cfg, &plan, None) {
        Err(e @ OrchError::Plan { .. }) => {
            assert!(e.to_string().contains("[db_servers.sql010-1]"), "{e}")
        }
        other => panic!("{:?}", other.err()),
    }
    std::fs::write(&plan, with_db(r#"["shop"]"#)).unwrap();
    match RunInputs::load(&cfg, &plan, None) {
        Err(e @ OrchError::Plan { .. }) => assert!(e.to_string().contains("NAME@SERVER"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn config_errors_name_the_line() {
    refused_at(
        &GOOD.replace("destination = \"gra\"", "destination = \"par\""),
        "destination = \"par\"",
        "is the source",
    );
    refused_at(
        &GOOD.replace("destination = \"gra\"", "destination = \"lon\""),
        "destination = \"lon\"",
        "[datacenters.lon]",
    );
    refused_at(
        &GOOD.replace("datacenter = \"gra\"", "datacenter = \"gar\""),
        "datacenter = \"gar\"",
        "not defined",
    );
    refused_at(
        &GOOD.replace("http://127.0.0.1:9201", "https://127.0.0.1:9201"),
        "https://",
        "http://HOST:PORT",
    );
    refused_at(
        &GOOD.replace("http://127.0.0.1:9201", "http://127.0.0.1:9201/api"),
        "/api",
        "no path",
    );
    refused_at(
        &GOOD.replace("http://127.0.0.1:9201", "http://127.0.0.1"),
        "admin = \"http://127.0.0.1\"",
        "no port",
    );
    refused_at(
        &GOOD.replace("start = \"01:00\"", "start = \"1am\""),
        "1am",
        "HH:MM",
    );
    refused_at(
        &GOOD.replace("end = \"05:00\"", "end = \"25:00\""),
        "25:00",
        "HH:MM",
    );
    refused_at(
        &GOOD.replace("drain_timeout = \"10s\"", "drain_timeout = \"soon\""),
        "soon",
        "drain_timeout",
    );
    refused_at(
        &GOOD.replace("max_freeze = \"30s\"", "max_freze = \"30s\""),
        "max_freze",
        "unknown field",
    );
    refused_at(
        &GOOD.replace("token = \"secret\"\n\n[filers", "\n[filers"),
        "name = \"gra-1\"",
        "no token",
    );
}

#[test]
fn a_datacenter_without_routers_is_refused() {
    let text = GOOD.replace("datacenter = \"gra\"", "datacenter = \"par\"");
    refused_at(&text, "destination = \"gra\"", "no [[routers]]");
}

const PLAN: &str = r#"{"format":"ferry-plan","version":1,"parameters":{"constraints":["filer"]},
"units":[{"id":"U1","status":"scheduled","night":2,"order":0,"filers":["fs-1"],"hostings":[]},
         {"id":"U2","status":"scheduled","night":1,"order":0,"filers":["fs-1"],"hostings":[]},
         {"id":"U3","status":"impossible","filers":["fs-9"],"hostings":[]}]}"#;

#[test]
fn plan_units_are_selected_in_night_order() {
    let p = Plan::from_bytes(PLAN.as_bytes(), Path::new("plan.json")).unwrap();
    assert_eq!(p.select(None).unwrap(), vec!["U2", "U1"]);
    assert_eq!(p.select(Some(&["U3".to_string()])).unwrap(), vec!["U3"]);
    match p.select(Some(&["U1".to_string(), "U7".to_string()])) {
        Err(OrchError::UnknownUnit(u)) => assert_eq!(u, "U7"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_plan_format_or_version_is_refused() {
    for (text, words) in [
        (PLAN.replace("\"version\":1", "\"version\":2"), "version 2"),
        (
            PLAN.replace("ferry-plan", "other-plan"),
            "format \"other-plan\"",
        ),
        ("[1,2".to_string(), "not JSON"),
    ] {
        match Plan::from_bytes(text.as_bytes(), Path::new("plan.json")) {
            Err(e @ OrchError::Plan { .. }) => assert!(e.to_string().contains(words), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn inputs_are_checked_before_any_journal_is_written() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("migrate.toml");
    let plan = d.path().join("plan.json");
    std::fs::write(&cfg, GOOD).unwrap();
    std::fs::write(&plan, PLAN.replace("\"version\":1", "\"version\":3")).unwrap();
    assert!(RunInputs::load(&cfg, &plan, None).is_err());
    std::fs::write(&plan, PLAN).unwrap();
    // U3 uses fs-9, which the config does not describe.
    match RunInputs::load(&cfg, &plan, Some(&["U3".to_string()])) {
        Err(e @ OrchError::Plan { .. }) => assert!(e.to_string().contains("fs-9"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
    match RunInputs::load(&cfg, &plan, Some(&["nope".to_string()])) {
        Err(OrchError::UnknownUnit(u)) => assert_eq!(u, "nope"),
        other => panic!("{:?}", other.err()),
    }
    assert!(RunInputs::load(&cfg, &plan, None).is_ok());
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        2,
        "nothing else was written"
    );
}

#[test]
fn failpoint_and_fault_specs_are_checked() {
    use ferry_orch::{Failpoints, Faults, KillMode};
    assert_eq!(ferry_orch::failpoint::names().len(), 22);
    assert!(
        Failpoints::parse("freeze:inside=kill, flip:before=pause", KillMode::Interrupt).is_ok()
    );
    assert!(Failpoints::parse("", KillMode::Process).is_ok());
    let e = Failpoints::parse("freeze:during=kill", KillMode::Interrupt)
        .err()
        .unwrap();
    assert!(e.contains("unknown failpoint \"freeze:during\""), "{e}");
    let e = Failpoints::parse("freeze:inside=explode", KillMode::Interrupt)
        .err()
        .unwrap();
    assert!(e.contains("unknown action"), "{e}");
    assert_eq!(
        Faults::parse("skip-freeze:par-1").unwrap().skip_freeze,
        vec!["par-1"]
    );
    assert!(Faults::parse("skip-flip:par-1").is_err());
}

#[test]
fn secret_files_open_to_others_are_refused_at_their_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let token = write("par.token", "secret\n", 0o644);
    let key = write("agent.key", "a-long-enough-agent-key\n", 0o644);
    let url = write("src.url", "mysql://ferry:pw@10.1.0.12:3306\n", 0o644);
    let text = GOOD
        .replacen(
            "token = \"secret\"",
            &format!("token_file = \"{}\"", token.display()),
            1,
        )
        .replace(
            "destination = \"/srv/gra/fs-1\"",
            &format!(
                "destination = \"/srv/gra/fs-1\"\nkey_file = \"{}\"",
                key.display()
            ),
        )
        .replace(
            "source = \"mysql://ferry:pw@10.1.0.12:3306\"",
            &format!("source_file = \"{}\"", url.display()),
        );
    refused_at(&text, "token_file", "chmod 600");
    // Owner-only: accepted, and the next secret file is the one refused.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused_at(&text, "key_file", "chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused_at(&text, "source_file", "chmod 600");
    std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = parse(&text).expect("owner-only secret files are read");
    drop(config);
}

#[test]
fn each_router_is_sent_its_own_placement_unless_records_are_shared() {
    let c = parse(GOOD).unwrap();
    assert!(!c.shared_records());
    assert_eq!(c.placement("par", "gra"), "remote:gra");
    assert_eq!(c.placement("gra", "gra"), "pool:gra-web");
    assert_eq!(c.placement("gra", "par"), "remote:par");
    let sqlite = format!("{GOOD}\n[store]\nbackend = \"sqlite\"\nshared_records = true\n");
    refused_at(&sqlite, "shared_records", "only with backend = \"etcd\"");
}

#[cfg(feature = "etcd")]
#[test]
fn shared_records_name_the_pool_for_every_router() {
    let etcd =
        "\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nrun = \"n1\"\n";
    let own = parse(&format!("{GOOD}{etcd}")).unwrap();
    assert!(!own.shared_records(), "off unless said");
    assert_eq!(own.placement("par", "gra"), "remote:gra");
    let shared = parse(&format!("{GOOD}{etcd}shared_records = true\n")).unwrap();
    assert!(shared.shared_records());
    for router_dc in ["par", "gra"] {
        assert_eq!(shared.placement(router_dc, "gra"), "pool:gra-web");
        assert_eq!(shared.placement(router_dc, "par"), "pool:par-web");
    }
}
