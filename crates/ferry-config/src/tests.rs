//! Tests of the whole pipeline: TOML text in, `Config` or a located error out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteState};

use crate::*;

const ORIGIN: &str = "conf/proxy.toml";

/// The smallest config that passes: every other setting takes its default.
const MINIMAL: &str = r#"
[router]
name = "dc1"

[[listener]]
listen = "127.0.0.1:8080"

[[pool]]
name = "web"

[[pool.server]]
name = "a"
address = "127.0.0.1:8081"
"#;

fn ok(text: &str) -> Config {
    match parse(text, Path::new(ORIGIN)) {
        Ok(c) => c,
        Err(e) => panic!("config refused: {e}\n{text}"),
    }
}

/// Parses a config that must be refused; returns (line, column, message).
fn bad(text: &str) -> (usize, usize, String) {
    match parse(text, Path::new(ORIGIN)) {
        Ok(_) => panic!("config accepted but should not be:\n{text}"),
        Err(ConfigError::Invalid {
            path,
            line,
            column,
            message,
        }) => {
            assert_eq!(path, Path::new(ORIGIN));
            (line, column, message)
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

/// 1-based number of the only line of `text` containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "{needle:?} must be on exactly one line");
    hits[0]
}

/// Asserts that `text` is refused at the line holding `needle`, with a message
/// containing each of `words`.
fn refused_at(text: &str, needle: &str, words: &[&str]) -> (usize, String) {
    let (line, column, message) = bad(text);
    assert_eq!(
        line,
        line_with(text, needle),
        "wrong line for {message:?} (col {column})"
    );
    for w in words {
        assert!(message.contains(w), "{message:?} lacks {w:?}");
    }
    (column, message)
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/proxy.toml")
}

#[test]
fn example_config_loads() {
    let path = example_path();
    let cfg = load(&path).unwrap();
    let dir = path.parent().unwrap();

    assert_eq!(cfg.router.name, "dc1");
    assert_eq!(cfg.router.store, Some(dir.join("dc1-state.db")));
    assert_eq!(cfg.router.access_log, AccessLog::Stdout);
    assert_eq!(cfg.router.operator_networks.len(), 3);
    assert_eq!(
        cfg.router.operator_networks[0],
        "127.0.0.1/32".parse::<ipnet::IpNet>().unwrap()
    );
    assert_eq!(
        cfg.router.operator_networks[2],
        "::1/128".parse::<ipnet::IpNet>().unwrap()
    );
    let page = cfg.router.maintenance_page.as_deref().unwrap();
    assert!(page.contains("<html"), "maintenance page content is loaded");
    assert_eq!(
        cfg.router.default_site,
        Some(Hostname::parse("www.example.com").unwrap())
    );

    let admin = cfg.admin.as_ref().unwrap();
    assert_eq!(
        admin.listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert!(admin.token.is_some());

    assert_eq!(cfg.listeners.len(), 1);
    assert!(!cfg.listeners[0].trusted);

    let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web", "backoffice", "static"]);
    let web = &cfg.pools[0];
    assert_eq!(web.servers.len(), 2);
    assert_eq!(
        (web.servers[0].tier, web.servers[1].tier),
        (0, 1),
        "web has a fallback tier"
    );
    assert_eq!(web.health.as_ref().unwrap().path, "/healthz");
    assert_eq!(cfg.pools[1].servers.len(), 1);

    assert_eq!(cfg.remotes.len(), 1);
    assert_eq!(cfg.remotes[0].name, "dc2");
    assert!(cfg.remotes[0].proxy_protocol);
    assert_eq!(
        cfg.remotes[0].passthrough,
        Some("127.0.0.1:18443".parse().unwrap())
    );
    assert_eq!(cfg.passthroughs.len(), 2);
    assert!(cfg.passthroughs[1].proxy_protocol);

    assert_eq!(cfg.sites.len(), 3);
    let www = &cfg.sites[0];
    assert_eq!(www.placement, Placement::Pool("web".into()));
    let rules: Vec<(&str, &str)> = www
        .rules
        .iter()
        .map(|r| (r.prefix.as_str(), r.pool.as_str()))
        .collect();
    assert_eq!(rules, [("/admin", "backoffice"), ("/static", "static")]);
    assert!(cfg.sites[1].host.is_wildcard());
    assert_eq!(cfg.sites[1].state, SiteState::Maintenance);
    assert!(cfg.sites[1].maintenance_page.is_some());
    assert_eq!(cfg.sites[2].placement, Placement::Remote("dc2".into()));
}

#[test]
fn defaults_are_applied() {
    let cfg = ok(MINIMAL);
    let r = &cfg.router;
    assert_eq!(r.hold_max, Duration::from_secs(10));
    assert_eq!(r.retry_after, 30);
    assert_eq!(r.store, None);
    assert_eq!(r.access_log, AccessLog::Off);
    assert_eq!(r.access_log_format, AccessLogFormat::Combined);
    assert!(r.operator_networks.is_empty());
    assert_eq!(r.maintenance_page, None);
    assert_eq!(r.default_site, None);
    assert_eq!(r.connect_timeout, Duration::from_secs(3));
    assert_eq!(r.request_timeout, Duration::from_secs(60));
    assert_eq!(cfg.admin, None);
    assert_eq!(
        cfg.listeners,
        [ListenerSpec {
            listen: "127.0.0.1:8080".parse().unwrap(),
            trusted: false,
            proxy_protocol: false,
            tls: false,
            max_connections: None,
        }]
    );
    assert_eq!(
        r.max_connections, None,
        "derived from the open-file limit at start"
    );
    assert_eq!(r.first_byte_timeout, Duration::from_secs(10));
    assert_eq!(r.header_timeout, Duration::from_secs(10));
    assert_eq!(r.keepalive_timeout, Duration::from_secs(10));
    assert_eq!(r.body_timeout, Duration::from_secs(30));
    let pool = &cfg.pools[0];
    assert_eq!(pool.balance, Balance::RoundRobin);
    assert_eq!(pool.health, None);
    assert_eq!(pool.passive_fall, 3);
    assert!(pool.rules.is_empty());
    assert_eq!(
        pool.servers,
        [ServerSpec {
            name: "a".into(),
            address: "127.0.0.1:8081".parse().unwrap(),
            tier: 0,
            weight: 1,
            state: ServerState::Ready,
        }]
    );
    assert!(cfg.remotes.is_empty());
    assert!(cfg.sites.is_empty());
}

#[test]
fn health_and_site_defaults_are_applied() {
    let text = format!(
        "{MINIMAL}
[pool.health]

[[site]]
host = \"WWW.A.com\"
placement = \"pool:web\"
"
    );
    let cfg = ok(&text);
    assert_eq!(
        cfg.pools[0].health,
        Some(HealthSpec {
            path: "/".into(),
            expect_status: 200,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        })
    );
    let site = &cfg.sites[0];
    assert_eq!(site.host.as_str(), "www.a.com", "hosts are normalised");
    assert_eq!(site.state, SiteState::Active);
    assert_eq!(site.epoch, Epoch(0));
    assert_eq!(site.maintenance_page, None);
}

#[test]
fn explicit_values_are_kept() {
    let text = r#"
[router]
name = "dc-2_b"
hold_max = "1m30s"
retry_after = 5
access_log = "stderr"
access_log_format = "json"
connect_timeout = "250ms"
request_timeout = "2m"

[[listener]]
listen = "[::1]:8443"
trusted = true
proxy_protocol = true

[[pool]]
name = "web"
balance = "least_conn"
passive_fall = 0

[[pool.server]]
name = "a"
address = "[::1]:81"
tier = 15
weight = 256
state = "drain"

[[site]]
host = "a.com"
placement = "pool:web"
state = "frozen"
epoch = 42
"#;
    let cfg = ok(text);
    assert_eq!(cfg.router.hold_max, Duration::from_secs(90));
    assert_eq!(cfg.router.retry_after, 5);
    assert_eq!(cfg.router.access_log, AccessLog::Stderr);
    assert_eq!(cfg.router.access_log_format, AccessLogFormat::Json);
    assert_eq!(cfg.router.connect_timeout, Duration::from_millis(250));
    assert_eq!(cfg.router.request_timeout, Duration::from_secs(120));
    assert!(cfg.listeners[0].trusted && cfg.listeners[0].proxy_protocol);
    assert_eq!(cfg.pools[0].balance, Balance::LeastConn);
    assert_eq!(cfg.pools[0].passive_fall, 0);
    let s = &cfg.pools[0].servers[0];
    assert_eq!((s.tier, s.weight, s.state), (15, 256, ServerState::Drain));
    assert_eq!(cfg.sites[0].state, SiteState::Frozen);
    assert_eq!(cfg.sites[0].epoch, Epoch(42));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pages")).unwrap();
    std::fs::write(dir.path().join("pages/down.html"), "<p>down</p>").unwrap();
    std::fs::write(dir.path().join("site.html"), "<p>site</p>").unwrap();
    std::fs::write(dir.path().join("admin.token"), "  s3cret\n").unwrap();
    set_mode(&dir.path().join("admin.token"), 0o600);
    let abs_log = dir.path().join("abs.log");
    let text = format!(
        r#"
[router]
name = "dc1"
store = "state/dc1.db"
access_log = "logs/access.log"
maintenance_page = "pages/down.html"

[admin]
listen = "127.0.0.1:9090"
token_file = "admin.token"

[[listener]]
listen = "127.0.0.1:8080"

[[pool]]
name = "web"

[[pool.server]]
name = "a"
address = "127.0.0.1:8081"

[[site]]
host = "a.com"
placement = "pool:web"
maintenance_page = "site.html"

[[site]]
host = "b.com"
placement = "pool:web"
maintenance_page = {abs:?}
"#,
        abs = dir.path().join("site.html").display().to_string()
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = load(&path).unwrap();
    assert_eq!(cfg.router.store, Some(dir.path().join("state/dc1.db")));
    assert_eq!(
        cfg.router.access_log,
        AccessLog::File(dir.path().join("logs/access.log"))
    );
    assert_eq!(cfg.router.maintenance_page.as_deref(), Some("<p>down</p>"));
    assert_eq!(
        cfg.admin
            .unwrap()
            .token
            .as_ref()
            .map(|t| t.expose().to_string()),
        Some("s3cret".to_string()),
        "token_file content is trimmed"
    );
    assert_eq!(
        cfg.sites[0].maintenance_page.as_deref(),
        Some("<p>site</p>")
    );
    assert_eq!(
        cfg.sites[1].maintenance_page.as_deref(),
        Some("<p>site</p>")
    );

    // An absolute access log path stays as written.
    let text = MINIMAL.replace(
        "name = \"dc1\"",
        &format!(
            "name = \"dc1\"\naccess_log = {:?}",
            abs_log.display().to_string()
        ),
    );
    let cfg = parse(&text, &path).unwrap();
    assert_eq!(cfg.router.access_log, AccessLog::File(abs_log));

    // A bare file name as origin resolves against the working directory.
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\nstore = \"x.db\"");
    let cfg = parse(&text, Path::new("proxy.toml")).unwrap();
    assert_eq!(cfg.router.store, Some(PathBuf::from("x.db")));
}

#[test]
fn error_display_is_path_line_column_message() {
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\nhold_max = \"5x\"");
    let err = parse(&text, Path::new(ORIGIN)).unwrap_err().to_string();
    assert_eq!(
        err,
        "conf/proxy.toml:4:12: hold_max: invalid duration \"5x\": unknown unit \"x\" (expected ms, s, m or h)"
    );
}

#[test]
fn syntax_error_names_its_line() {
    let text = MINIMAL.replace("[[pool]]", "[[pool]]\nname = \"oops");
    let (line, _, message) = bad(&text);
    assert_eq!(line, line_with(&text, "\"oops"));
    assert!(!message.is_empty());

    let text = MINIMAL.replace("[[pool]]", "[[pool]]\nbalance round_robin");
    refused_at(&text, "balance round_robin", &[]);
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\nhold_mx = \"5s\"");
    refused_at(&text, "hold_mx", &["hold_mx"]);

    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8081\"",
        "address = \"127.0.0.1:8081\"\nwieght = 3",
    );
    refused_at(&text, "wieght", &["wieght"]);

    let text = format!("{MINIMAL}\n[[sites]]\nhost = \"a.com\"\n");
    refused_at(&text, "[[sites]]", &["sites"]);
}

#[test]
fn bad_duration_names_line_and_key() {
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\nconnect_timeout = \"10\"");
    refused_at(&text, "connect_timeout", &["connect_timeout", "no unit"]);

    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\nrequest_timeout = \"0s\"");
    refused_at(&text, "request_timeout", &["request_timeout", "above 0"]);

    let text = format!("{MINIMAL}\n[pool.health]\ninterval = \"2 s\"\n");
    refused_at(&text, "interval", &["pool \"web\"", "interval"]);
}

#[test]
fn bad_cidr_names_line_and_value() {
    let text = MINIMAL.replace(
        "name = \"dc1\"",
        "name = \"dc1\"\noperator_networks = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]",
    );
    refused_at(&text, "/33", &["operator_networks", "10.0.0.0/33"]);
}

#[test]
fn bad_host_names_line() {
    let text = format!("{MINIMAL}\n[[site]]\nhost = \"a.*.com\"\nplacement = \"pool:web\"\n");
    refused_at(&text, "a.*.com", &["a.*.com", "wildcard"]);

    let text = format!("{MINIMAL}\n[[site]]\nhost = \"a b.com\"\nplacement = \"pool:web\"\n");
    refused_at(&text, "a b.com", &["a b.com"]);
}

#[test]
fn placement_must_name_an_existing_pool_or_remote() {
    let text = format!("{MINIMAL}\n[[site]]\nhost = \"www.a.com\"\nplacement = \"pool:nope\"\n");
    let (column, message) = refused_at(&text, "pool:nope", &[]);
    assert_eq!(
        message,
        "site \"www.a.com\": placement \"pool:nope\" names no pool or remote"
    );
    assert_eq!(column, 13, "points at the value");

    let text = format!("{MINIMAL}\n[[site]]\nhost = \"www.a.com\"\nplacement = \"remote:dc9\"\n");
    refused_at(&text, "remote:dc9", &["www.a.com", "remote:dc9"]);

    let text = format!("{MINIMAL}\n[[site]]\nhost = \"www.a.com\"\nplacement = \"web\"\n");
    refused_at(&text, "placement", &["www.a.com", "pool:NAME"]);
}

#[test]
fn rule_must_name_an_existing_pool() {
    let text = format!(
        "{MINIMAL}\n[[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n\n[[site.rule]]\nprefix = \"/admin\"\npool = \"backoffice\"\n"
    );
    refused_at(&text, "backoffice", &["site \"a.com\"", "backoffice"]);

    let text = format!("{MINIMAL}\n[[pool.rule]]\nprefix = \"/img\"\npool = \"images\"\n");
    refused_at(&text, "images", &["pool \"web\"", "images"]);

    let text = format!("{MINIMAL}\n[[pool.rule]]\nprefix = \"img\"\npool = \"web\"\n");
    refused_at(&text, "prefix", &["\"img\"", "'/'"]);

    let text = format!(
        "{MINIMAL}\n[[pool.rule]]\nprefix = \"/img\"\npool = \"web\"\n[[pool.rule]]\nprefix = \"/img\" # again\npool = \"web\"\n"
    );
    refused_at(&text, "again", &["/img", "twice"]);
}

#[test]
fn rules_may_name_pools_defined_later_and_keep_their_order() {
    let text = format!(
        "{MINIMAL}\n[[pool.rule]]\nprefix = \"/\"\npool = \"web\"\n[[pool.rule]]\nprefix = \"/static/img\"\npool = \"static\"\n[[pool.rule]]\nprefix = \"/static\"\npool = \"static\"\n\n[[pool]]\nname = \"static\"\n[[pool.server]]\nname = \"s\"\naddress = \"127.0.0.1:8090\"\n"
    );
    let cfg = ok(&text);
    let prefixes: Vec<&str> = cfg.pools[0]
        .rules
        .iter()
        .map(|r| r.prefix.as_str())
        .collect();
    assert_eq!(prefixes, ["/", "/static/img", "/static"]);
}

#[test]
fn duplicate_site_names_both_lines() {
    let text = format!(
        "{MINIMAL}\n[[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n\n[[site]]\nhost = \"A.com.\"\nplacement = \"pool:web\"\n"
    );
    let first = line_with(&text, "\"a.com\"");
    let (_, message) = refused_at(&text, "A.com.", &["site \"a.com\"", "twice"]);
    assert!(
        message.contains(&format!("line {first}")),
        "{message:?} names the first definition"
    );
}

#[test]
fn duplicate_pool_is_refused() {
    let text = format!(
        "{MINIMAL}\n[[pool]]\nname = \"web\" # again\n[[pool.server]]\nname = \"b\"\naddress = \"127.0.0.1:8082\"\n"
    );
    let first = text.lines().position(|l| l == "name = \"web\"").unwrap() + 1;
    let (_, message) = refused_at(&text, "again", &["pool \"web\"", "twice"]);
    assert!(message.contains(&format!("line {first}")), "{message:?}");
}

#[test]
fn pool_without_servers_is_refused() {
    let text = format!("{MINIMAL}\n[[pool]]\nname = \"empty\"\n");
    refused_at(&text, "empty", &["pool \"empty\"", "no servers"]);
}

#[test]
fn proxy_protocol_needs_trusted() {
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nproxy_protocol = true",
    );
    refused_at(&text, "proxy_protocol", &["127.0.0.1:8080", "trusted"]);
}

#[test]
fn default_site_must_exist() {
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\ndefault_site = \"b.com\"");
    let text = format!("{text}\n[[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n");
    refused_at(&text, "default_site", &["default_site", "b.com"]);
}

#[test]
fn missing_maintenance_file_names_line_and_path() {
    let text = MINIMAL.replace(
        "name = \"dc1\"",
        "name = \"dc1\"\nmaintenance_page = \"no-such-page.html\"",
    );
    refused_at(
        &text,
        "maintenance_page",
        &["no-such-page.html", "cannot read"],
    );

    let text = format!(
        "{MINIMAL}\n[[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\nmaintenance_page = \"gone.html\"\n"
    );
    refused_at(&text, "gone.html", &["site \"a.com\"", "gone.html"]);
}

#[test]
fn listener_set_is_checked() {
    let text = "[router]\nname = \"dc1\"\n";
    let (line, column, message) = bad(text);
    assert_eq!((line, column), (1, 1));
    assert!(message.contains("[[listener]]"), "{message:?}");

    let text = MINIMAL.replace(
        "[[pool]]",
        "[[listener]]\nlisten = \"127.0.0.1:8080\" # again\n\n[[pool]]",
    );
    refused_at(&text, "again", &["127.0.0.1:8080", "twice"]);

    let text = format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:8080\" # admin\n");
    refused_at(&text, "# admin", &["admin", "127.0.0.1:8080"]);
}

#[test]
fn addresses_must_be_ip_and_port() {
    let text = MINIMAL.replace("127.0.0.1:8081", "app1.internal:8081");
    let (_, message) = refused_at(
        &text,
        "app1.internal",
        &["server \"a\"", "app1.internal:8081"],
    );
    assert!(
        message.contains("host names are not accepted"),
        "{message:?}"
    );

    let text = MINIMAL.replace("127.0.0.1:8081", "127.0.0.1");
    refused_at(&text, "address", &["IP:PORT"]);
}

#[test]
fn numeric_ranges_are_checked() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8081\"",
        "address = \"127.0.0.1:8081\"\ntier = 16",
    );
    refused_at(&text, "tier", &["tier 16", "0..=15"]);

    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8081\"",
        "address = \"127.0.0.1:8081\"\nweight = 0",
    );
    refused_at(&text, "weight", &["weight 0", "1..=256"]);

    let text = format!("{MINIMAL}\n[pool.health]\nexpect_status = 600\n");
    refused_at(&text, "expect_status", &["pool \"web\"", "600"]);

    let text = format!("{MINIMAL}\n[pool.health]\nfall = 0\n");
    refused_at(&text, "fall", &["fall 0"]);

    let text = format!("{MINIMAL}\n[pool.health]\npath = \"healthz\"\n");
    refused_at(&text, "healthz", &["'/'"]);
}

#[test]
fn enumerations_refuse_unknown_values_at_their_line() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:8081\"",
        "address = \"127.0.0.1:8081\"\nstate = \"sleeping\"",
    );
    refused_at(&text, "sleeping", &["sleeping"]);

    let text = MINIMAL.replace("name = \"web\"", "name = \"web\"\nbalance = \"random\"");
    refused_at(&text, "random", &["random"]);

    let text = MINIMAL.replace(
        "name = \"dc1\"",
        "name = \"dc1\"\naccess_log_format = \"xml\"",
    );
    refused_at(&text, "xml", &["xml"]);
}

#[test]
fn names_are_checked() {
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"DC 1\"");
    refused_at(&text, "DC 1", &["router name", "DC 1"]);

    let text =
        format!("{MINIMAL}\n[[pool.server]]\nname = \"a\" # again\naddress = \"127.0.0.1:8082\"\n");
    refused_at(&text, "again", &["server \"a\"", "twice"]);

    let text =
        format!("{MINIMAL}\n[[pool.server]]\nname = \"b\"\naddress = \"127.0.0.1:8081\" # same\n");
    refused_at(&text, "# same", &["\"b\"", "same address"]);
}

#[test]
fn remotes_are_checked() {
    let remote =
        |name: &str, addr: &str| format!("\n[[remote]]\nname = \"{name}\"\naddress = \"{addr}\"\n");
    let text = format!("{MINIMAL}{}", remote("dc1", "127.0.0.1:18080"));
    let (line, _, message) = bad(&text);
    assert_eq!(line, line_with(&text, "18080") - 1, "points at the name");
    assert!(message.contains("remote \"dc1\""), "{message:?}");

    let text = format!(
        "{MINIMAL}{}{}",
        remote("dc2", "127.0.0.1:18080"),
        remote("dc2", "127.0.0.1:18081")
    );
    let (line, _, message) = bad(&text);
    assert_eq!(line, line_with(&text, "18081") - 1);
    assert!(
        message.contains("remote \"dc2\" is defined twice"),
        "{message:?}"
    );

    let text = format!("{MINIMAL}{}", remote("dc2", "127.0.0.1:8080"));
    let (line, _, message) = bad(&text);
    assert_eq!(line, text.lines().count());
    assert!(message.contains("remote \"dc2\""), "{message:?}");
    assert!(message.contains("listeners"), "{message:?}");

    // A remote and a pool may share a name: placements say which one they mean.
    let text = format!(
        "{MINIMAL}{}\n[[site]]\nhost = \"a.com\"\nplacement = \"remote:web\"\n",
        remote("web", "127.0.0.1:18080")
    );
    assert_eq!(
        ok(&text).sites[0].placement,
        Placement::Remote("web".into())
    );
}

#[test]
fn pools_of_a_remote_are_placements_of_their_own() {
    let remote = |name: &str, addr: &str, pools: &str| {
        format!("\n[[remote]]\nname = \"{name}\"\naddress = \"{addr}\"\npools = [{pools}]\n")
    };
    let site = "\n[[site]]\nhost = \"a.com\"\nplacement = \"pool:gra-web\"\n";
    let text = format!(
        "{MINIMAL}{}{site}",
        remote("gra", "127.0.0.1:18080", "\"gra-web\"")
    );
    let cfg = ok(&text);
    assert_eq!(cfg.remotes[0].pools, vec!["gra-web".to_string()]);
    assert_eq!(cfg.sites[0].placement, Placement::Pool("gra-web".into()));

    // Without the remote's list, the pool is unknown here.
    let text = format!("{MINIMAL}{}{site}", remote("gra", "127.0.0.1:18080", ""));
    refused_at(&text, "pool:gra-web", &["names no pool or remote"]);

    // A pool lives in one place: not here and there, not in two remotes.
    let text = format!("{MINIMAL}{}", remote("gra", "127.0.0.1:18080", "\"web\""));
    refused_at(&text, "pools = [\"web\"]", &["\"web\"", "own pools"]);
    let text = format!(
        "{MINIMAL}{}{}",
        remote("gra", "127.0.0.1:18080", "\"x\""),
        remote("sbg", "127.0.0.1:18081", "\"y\", \"x\"")
    );
    refused_at(&text, "\"y\", \"x\"", &["also listed by remote \"gra\""]);
    let text = format!(
        "{MINIMAL}{}",
        remote("gra", "127.0.0.1:18080", "\"Bad Name\"")
    );
    refused_at(&text, "Bad Name", &["pool name"]);
}

#[test]
fn admin_token_sources_are_exclusive_and_not_empty() {
    let text = format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"x\"\ntoken_file = \"t.txt\"\n"
    );
    refused_at(&text, "token_file", &["mutually exclusive"]);

    let text = format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"\"\n");
    refused_at(&text, "token = ", &["empty"]);

    let text =
        format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = \"none.txt\"\n");
    refused_at(&text, "none.txt", &["token_file", "none.txt"]);
}

#[test]
fn missing_sections_and_fields_are_reported() {
    let (_, _, message) = bad("[[listener]]\nlisten = \"127.0.0.1:8080\"\n");
    assert!(message.contains("router"), "{message:?}");

    let text = MINIMAL.replace("address = \"127.0.0.1:8081\"", "");
    let (line, _, message) = bad(&text);
    assert!(message.contains("address"), "{message:?}");
    assert!(line >= line_with(&text, "[[pool.server]]"), "line {line}");
}

#[test]
fn load_reports_unreadable_file() {
    let err = load(Path::new("/nonexistent/ferry/proxy.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err
        .to_string()
        .starts_with("/nonexistent/ferry/proxy.toml: "));
}

#[test]
fn non_ascii_columns_in_errors() {
    let text = MINIMAL.replace("name = \"dc1\"", "name = \"dc1\"\n# café\nhold_max = \"é\"");
    let (column, _) = refused_at(&text, "hold_max", &["hold_max"]);
    assert_eq!(column, 12);
}

mod tunnels {
    use super::*;

    fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}")
    }

    #[test]
    fn defaults_and_settings() {
        let c = ok(&with(
            r#"
[[tunnels]]
name = "sql002"
listen = "127.0.0.1:13306"
upstream = "10.0.0.5:3306"

[[tunnels]]
name = "sql003"
listen = "127.0.0.1:13307"
upstream = "db-3.example:3306"
server = "sql003-1"
observe = false
connect_timeout = "500ms"
idle_timeout = "10m"
"#,
        ));
        let [a, b] = c.tunnels.as_slice() else {
            panic!("two tunnels expected")
        };
        assert_eq!(a.server, "sql002");
        assert!(a.observe);
        assert_eq!(a.connect_timeout, Duration::from_secs(3));
        assert_eq!(a.idle_timeout, Duration::from_secs(8 * 3600));
        assert_eq!(b.upstream, "db-3.example:3306");
        assert_eq!(b.server, "sql003-1");
        assert!(!b.observe);
        assert_eq!(b.connect_timeout, Duration::from_millis(500));
        assert_eq!(b.idle_timeout, Duration::from_secs(600));
        assert!(ok(MINIMAL).tunnels.is_empty());
    }

    #[test]
    fn refusals_name_the_line() {
        let cases = [
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:13306\"\nupstream = \"10.0.0.5\"\n",
                "upstream = \"10.0.0.5\"",
                "is not HOST:PORT",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:13306\"\nupstream = \"10.0.0.5:0\"\n",
                "upstream = \"10.0.0.5:0\"",
                "no valid port",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:13306\"\nupstream = \"a b:3306\"\n",
                "upstream = \"a b:3306\"",
                "no valid host",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:13306\"\nupstream = \"h:1\"\n\n[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:13307\"\nupstream = \"h:1\"\n",
                "listen = \"127.0.0.1:13307\"",
                "defined twice",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:13306\"\nupstream = \"h:1\"\n\n[[tunnels]]\nname = \"u\"\nlisten = \"127.0.0.1:13306\" # again\nupstream = \"h:1\"\n",
                "# again",
                "already used by the tunnel at line",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:8080\" # taken\nupstream = \"h:1\"\n",
                "# taken",
                "also a [[listener]]",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\nidle_timeout = \"0s\"\n",
                "idle_timeout",
                "must be above 0",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\nobserv = true\n",
                "observ =",
                "unknown field",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[tunnels.galera]\nnodes = [\"h:2\", \"h\"] # bad\nuser = \"m\"\n",
                "# bad",
                "galera node \"h\" is not HOST:PORT",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[tunnels.galera]\nuser = \"\" # empty\n",
                "# empty",
                "galera user is empty",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[tunnels.galera]\nuser = \"m\"\npassword = \"x\"\npassword_file = \"f\"\n",
                "password_file",
                "mutually exclusive",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[tunnels.galera]\nuser = \"m\"\npassword_file = \"no-such-file\"\n",
                "password_file",
                "cannot read",
            ),
            (
                "[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[tunnels.galera]\nuser = \"m\"\ninterval = \"0s\"\n",
                "interval",
                "must be above 0",
            ),
        ];
        for (extra, needle, want) in cases {
            let text = with(extra);
            let (line, _, msg) = bad(&text);
            // The duplicate name is reported at the second `name = "t"`.
            let expected = if want == "defined twice" {
                line_with(&text, needle) - 1
            } else {
                line_with(&text, needle)
            };
            assert_eq!(line, expected, "{msg}\n{text}");
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        }
    }

    #[test]
    fn observed_uses_file_is_resolved_against_the_config() {
        let text = MINIMAL.replace(
            "name = \"dc1\"",
            "name = \"dc1\"\nobserved_uses_file = \"uses/observed_uses.jsonl\"",
        );
        let c = ok(&text);
        assert_eq!(
            c.router.observed_uses_file,
            Some(PathBuf::from("conf/uses/observed_uses.jsonl"))
        );
    }
}

#[test]
fn example_config_documents_a_tunnel() {
    let path = example_path();
    let cfg = load(&path).unwrap();
    let dir = path.parent().unwrap();
    assert_eq!(
        cfg.router.observed_uses_file,
        Some(dir.join("observed_uses.jsonl"))
    );
    let [t, g] = cfg.tunnels.as_slice() else {
        panic!("two tunnels expected")
    };
    assert_eq!(t.name, "sql002");
    assert_eq!(t.server, "sql002-1");
    assert_eq!(t.upstream, "10.0.0.5:3306");
    assert!(t.galera.is_none());
    let check = g.galera.as_ref().expect("a galera check");
    assert_eq!(check.nodes, ["10.0.1.12:3306", "10.0.1.13:3306"]);
    assert_eq!(check.password, "example-monitor-password");
    assert_eq!(check.interval, Duration::from_secs(2));
    assert!(!format!("{check:?}").contains("example-monitor-password"));
}

#[test]
fn tls_section_and_tls_listeners() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.pem"), "x").unwrap();
    let d = dir.path().display();
    let with_tls = format!(
        "{MINIMAL}\n[[listener]]\nlisten = \"127.0.0.1:8443\"\ntls = true\n\n[tls]\ncert_dir = \"{d}\"\ndefault_cert = \"main\"\nkey_cache = 50\nhandshake_timeout = \"3s\"\n"
    );
    let cfg = ok(&with_tls);
    assert!(!cfg.listeners[0].tls);
    assert!(cfg.listeners[1].tls);
    let tls = cfg.tls.unwrap();
    assert_eq!(tls.cert_dir, dir.path());
    assert_eq!(tls.default_cert.as_deref(), Some("main"));
    assert_eq!(tls.key_cache, 50);
    assert_eq!(tls.session_cache, 100_000);
    assert!(tls.tickets);
    assert_eq!(tls.handshake_timeout, Duration::from_secs(3));

    let no_section = format!("{MINIMAL}\n[[listener]]\nlisten = \"127.0.0.1:8443\"\ntls = true\n");
    refused_at(&no_section, "tls = true", &["no [tls] section"]);
    let missing_default = with_tls.replace("\"main\"", "\"other\"");
    refused_at(&missing_default, "default_cert", &["other", "no "]);
    let missing_dir = with_tls.replace(&d.to_string(), "/nonexistent/certs");
    refused_at(&missing_dir, "cert_dir", &["not a directory"]);
    let zero_cache = with_tls.replace("key_cache = 50", "key_cache = 0");
    refused_at(&zero_cache, "key_cache", &["out of range"]);
}

#[test]
fn passthrough_listeners_and_remote_passthrough_addresses() {
    let text = format!(
        "{MINIMAL}
[[remote]]
name = \"dc2\"
address = \"10.0.0.2:80\"
passthrough = \"10.0.0.2:8443\"

[[passthrough]]
listen = \"127.0.0.1:8443\"
backend_port = 443
send_proxy = true
hold_max = \"2s\"
client_hello_timeout = \"1s\"
max_client_hello = 4096
maintenance_terminator = \"127.0.0.1:9443\"

[[passthrough]]
listen = \"127.0.0.1:8444\"
proxy_protocol = true
trusted_networks = [\"10.1.0.0/24\", \"127.0.0.1\"]
backend_port = 8443
"
    );
    let cfg = ok(&text);
    assert_eq!(
        cfg.remotes[0].passthrough,
        Some("10.0.0.2:8443".parse().unwrap())
    );
    let [a, b] = cfg.passthroughs.as_slice() else {
        panic!("two passthrough listeners expected")
    };
    assert_eq!(a.listen, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
    assert_eq!(
        (a.backend_port, a.send_proxy, a.proxy_protocol),
        (443, true, false)
    );
    assert_eq!(a.hold_max, Some(Duration::from_secs(2)));
    assert_eq!(a.client_hello_timeout, Duration::from_secs(1));
    assert_eq!(a.max_client_hello, 4096);
    assert_eq!(
        a.maintenance_terminator,
        Some("127.0.0.1:9443".parse().unwrap())
    );
    // Defaults.
    assert_eq!(
        (b.proxy_protocol, b.send_proxy, b.hold_max),
        (true, false, None)
    );
    assert_eq!(b.client_hello_timeout, Duration::from_secs(5));
    assert_eq!(b.max_client_hello, 16 * 1024);
    assert_eq!(b.trusted_networks.len(), 2);
    assert_eq!(b.idle_timeout, Duration::from_secs(600));
    assert_eq!(b.max_connections, None);
    assert_eq!(ok(MINIMAL).passthroughs, vec![]);

    refused_at(
        &text.replace("backend_port = 443", "backend_port = 0"),
        "backend_port = 0",
        &["backend_port", "out of range"],
    );
    refused_at(
        &text.replace("max_client_hello = 4096", "max_client_hello = 10"),
        "max_client_hello",
        &["out of range"],
    );
    refused_at(
        &text.replace("\"127.0.0.1:8444\"", "\"127.0.0.1:8080\" # taken"),
        "# taken",
        &["also a [[listener]]"],
    );
    refused_at(
        &text.replace("\"1s\"", "\"0s\""),
        "client_hello_timeout",
        &["must be above 0"],
    );
    refused_at(
        &text.replace("\"10.0.0.2:8443\"", "\"dc2-router:8443\""),
        "dc2-router",
        &["remote \"dc2\": passthrough", "host names are not accepted"],
    );
    refused_at(
        &text.replace("\"127.0.0.1:9443\"", "\"nowhere\""),
        "nowhere",
        &["maintenance_terminator", "not a socket address"],
    );
    // Issue 15 #11: a PROXY header believed from any peer let a client claim
    // an operator's address.
    refused_at(
        &text.replace("trusted_networks = [\"10.1.0.0/24\", \"127.0.0.1\"]\n", ""),
        "proxy_protocol = true",
        &["trusted_networks"],
    );
    refused_at(
        &text.replace("proxy_protocol = true\n", ""),
        "trusted_networks",
        &["without proxy_protocol"],
    );
    refused_at(
        &text.replace("\"10.1.0.0/24\"", "\"10.1.0.0/99\""),
        "10.1.0.0/99",
        &["trusted_networks", "neither a network"],
    );
    let missing = text.replace("backend_port = 8443\n", "");
    let (_, _, msg) = bad(&missing);
    assert!(msg.contains("backend_port"), "{msg}");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Issue 15 #3: `[admin]` without a token meant no authentication at all,
/// and `--check` called it valid.
#[test]
fn admin_without_a_token_is_refused_unless_insecure_on_loopback() {
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\n");
    refused_at(
        &text,
        "listen = \"127.0.0.1:9090\"",
        &["no token", "insecure_no_auth"],
    );

    let open =
        format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\ninsecure_no_auth = true\n");
    let admin = ok(&open).admin.unwrap();
    assert!(admin.insecure_no_auth && admin.token.is_none());
    assert_eq!(admin.max_connections, 64);

    let public = open.replace("127.0.0.1:9090", "0.0.0.0:9090");
    refused_at(&public, "insecure_no_auth", &["loopback", "0.0.0.0:9090"]);
    let both = format!("{open}token = \"t\"\n");
    refused_at(&both, "insecure_no_auth", &["keep one"]);
}

#[test]
fn secret_files_open_to_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    set_mode(&token, 0o644);
    let text = format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\ntoken_file = {:?}\n",
        token.display().to_string()
    );
    refused_at(&text, "token_file", &["chmod 600"]);
    set_mode(&token, 0o600);
    assert!(ok(&text).admin.unwrap().token.unwrap().matches(b"s3cret"));

    let pw = dir.path().join("galera.pw");
    std::fs::write(&pw, "pw\n").unwrap();
    set_mode(&pw, 0o640);
    let text = format!(
        "{MINIMAL}\n[[tunnels]]\nname = \"t\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:1\"\n[tunnels.galera]\nuser = \"m\"\npassword_file = {:?}\n",
        pw.display().to_string()
    );
    refused_at(
        &text,
        "password_file",
        &["galera password_file", "chmod 600"],
    );
    set_mode(&pw, 0o600);
    assert_eq!(ok(&text).tunnels[0].galera.as_ref().unwrap().password, "pw");
}

#[test]
fn connection_caps_and_client_deadlines() {
    let text = MINIMAL.replace(
        "name = \"dc1\"\n",
        "name = \"dc1\"\nmax_connections = 5000\nfirst_byte_timeout = \"1s\"\nheader_timeout = \"2s\"\nkeepalive_timeout = \"3s\"\nbody_timeout = \"4s\"\n",
    )
    .replace(
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"127.0.0.1:8080\"\nmax_connections = 100\n",
    );
    let cfg = ok(&text);
    assert_eq!(cfg.listeners[0].max_connections, Some(100));
    let r = &cfg.router;
    assert_eq!(r.max_connections, Some(5000));
    assert_eq!(
        (
            r.first_byte_timeout,
            r.header_timeout,
            r.keepalive_timeout,
            r.body_timeout
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
            Duration::from_secs(4)
        )
    );
    refused_at(
        &text.replace("max_connections = 5000", "max_connections = 0"),
        "max_connections = 0",
        &["max_connections", "out of range"],
    );
    refused_at(
        &text.replace("\"4s\"", "\"0s\""),
        "body_timeout",
        &["must be above 0"],
    );
}

#[test]
fn the_drain_deadline_is_below_hold_max() {
    let r = ok(MINIMAL).router;
    assert_eq!(r.drain_timeout, Duration::from_secs(5));
    assert!(r.drain_timeout < r.hold_max, "the defaults are coherent");
    let with = |extra: &str| MINIMAL.replace("name = \"dc1\"", &format!("name = \"dc1\"\n{extra}"));
    assert_eq!(
        ok(&with("drain_timeout = \"2s\"")).router.drain_timeout,
        Duration::from_secs(2)
    );
    refused_at(
        &with("drain_timeout = \"10s\""),
        "drain_timeout",
        &["drain_timeout (10s) must be below hold_max (10s)", "503"],
    );
    // hold_max lowered under the default drain: the drain follows it down.
    assert_eq!(
        ok(&with("hold_max = \"3s\"")).router.drain_timeout,
        Duration::from_millis(1500)
    );
    // Both set, the drain not below: the drain's line is named.
    refused_at(
        &with("hold_max = \"3s\"\ndrain_timeout = \"3s\""),
        "drain_timeout",
        &["drain_timeout (3s)", "hold_max (3s)"],
    );
    refused_at(
        &with("drain_timeout = \"0s\""),
        "drain_timeout",
        &["drain_timeout must be above 0"],
    );
}

#[test]
fn an_upgraded_connection_idles_an_hour_unless_told_otherwise() {
    assert_eq!(
        ok(MINIMAL).router.tunnel_idle_timeout,
        Duration::from_secs(3600)
    );
    let with = |extra: &str| MINIMAL.replace("name = \"dc1\"", &format!("name = \"dc1\"\n{extra}"));
    assert_eq!(
        ok(&with("tunnel_idle_timeout = \"90s\""))
            .router
            .tunnel_idle_timeout,
        Duration::from_secs(90)
    );
    refused_at(
        &with("tunnel_idle_timeout = \"0s\""),
        "tunnel_idle_timeout",
        &["tunnel_idle_timeout must be above 0"],
    );
    refused_at(
        &with("tunnel_idle_timeout = \"soon\""),
        "tunnel_idle_timeout",
        &["tunnel_idle_timeout"],
    );
}

const SCALED: &str = r#"
[router]
name = "dc1"

[[listener]]
listen = "127.0.0.1:8080"

[[pool]]
name = "web"

[[pool.server]]
name = "a"
address = "127.0.0.1:8081"

[[pool.server]]
name = "b"
address = "127.0.0.1:8082"

[pool.scale]
add_above = 8
remove_below = 2.5
hold = "20s"
cooldown = "1m"
max_servers = 6
add_command = ["/usr/local/bin/add-front", "web"]
remove_command = ["/usr/local/bin/remove-front"]
command_timeout = "3m"
"#;

#[test]
fn a_scale_policy_is_read_with_its_defaults() {
    let cfg = ok(SCALED);
    let s = cfg.pools[0].scale.as_ref().unwrap();
    assert_eq!(s.signal, ScaleSignal::InflightPerServer);
    assert_eq!(
        (s.add_above, s.remove_below),
        (SignalLevel(8000), SignalLevel(2500))
    );
    assert_eq!(
        (s.hold, s.cooldown),
        (Duration::from_secs(20), Duration::from_secs(60))
    );
    // min_servers defaults to the configured servers, which it never removes.
    assert_eq!((s.min_servers, s.max_servers), (2, 6));
    assert_eq!(s.add_command, ["/usr/local/bin/add-front", "web"]);
    assert_eq!(s.remove_command, ["/usr/local/bin/remove-front"]);
    assert_eq!(s.command_timeout, Duration::from_secs(180));
    assert_eq!(s.drain_timeout, Duration::from_secs(60));
    assert_eq!(ok(MINIMAL).pools[0].scale, None);
    let p95 = ok(&SCALED.replace(
        "max_servers = 6",
        "max_servers = 6\nsignal = \"p95_latency\"",
    ));
    let s = p95.pools[0].scale.as_ref().unwrap();
    assert_eq!(
        (s.signal, s.add_above.get()),
        (ScaleSignal::P95Latency, 8.0)
    );
}

#[test]
fn a_bad_scale_policy_is_refused_at_its_line() {
    refused_at(
        &SCALED.replace("remove_below = 2.5", "remove_below = 8"),
        "remove_below = 8",
        &[
            "pool \"web\": scale",
            "remove_below",
            "must be below add_above",
        ],
    );
    refused_at(
        &SCALED.replace("max_servers = 6", "max_servers = 6\nmin_servers = 7"),
        "max_servers = 6",
        &["max_servers (6) is below min_servers (7)"],
    );
    refused_at(
        &SCALED.replace(
            "add_command = [\"/usr/local/bin/add-front\", \"web\"]",
            "add_command = []",
        ),
        "add_command = []",
        &["add_command is empty"],
    );
    refused_at(
        &SCALED.replace("max_servers = 6", "max_servers = 6\nsignal = \"cpu\""),
        "signal = \"cpu\"",
        &["not built yet"],
    );
    refused_at(
        &SCALED.replace("max_servers = 6", "max_servers = 6\nsignal = \"load\""),
        "signal = \"load\"",
        &["unknown"],
    );
    refused_at(
        &SCALED.replace("add_above = 8", "add_above = -1"),
        "add_above = -1",
        &["add_above -1 is out of range"],
    );
    refused_at(
        &SCALED.replace("\"3m\"", "\"0s\""),
        "command_timeout",
        &["must be above 0"],
    );
    refused_at(
        &SCALED.replace("hold = \"20s\"", "hold = \"20s\"\nholdd = \"1s\""),
        "holdd",
        &["unknown field"],
    );
    refused_at(
        &SCALED.replace("max_servers = 6", "max_servers = 0"),
        "max_servers = 0",
        &["out of range"],
    );
}

/// `[store]`: SQLite as `[router] store` was, etcd only in a build with it,
/// every etcd key checked at its line.
#[test]
fn store_section_sqlite_and_etcd() {
    let sqlite = format!("{MINIMAL}\n[store]\nbackend = \"sqlite\"\npath = \"state.db\"\n");
    assert_eq!(
        ok(&sqlite).router.store,
        Some(Path::new("conf").join("state.db"))
    );
    assert!(ok(&sqlite).etcd.is_none());
    let both = sqlite.replace("name = \"dc1\"", "name = \"dc1\"\nstore = \"other.db\"");
    refused_at(
        &both,
        "path = \"state.db\"",
        &["[router] store", "keep one"],
    );
    refused_at(
        &format!("{MINIMAL}\n[store]\nbackend = \"sqlite\"\n"),
        "backend",
        &["needs path"],
    );
    refused_at(
        &format!("{sqlite}lease_ttl = \"5s\"\n"),
        "lease_ttl",
        &["etcd setting"],
    );
    refused_at(
        &format!("{MINIMAL}\n[store]\nbackend = \"redis\"\n"),
        "backend",
        &["\"redis\"", "sqlite", "etcd"],
    );

    let etcd = format!(
        "{MINIMAL}\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://etcd-2:2379\"]\n"
    );
    if !ETCD_SUPPORTED {
        refused_at(&etcd, "backend", &["built without etcd support"]);
        return;
    }
    let e = ok(&etcd).etcd.unwrap();
    assert_eq!(e.endpoints.len(), 2);
    assert_eq!(e.prefix, "/ferry");
    assert_eq!(e.lease_ttl, Duration::from_secs(10));
    assert!(e.auth.is_none() && e.tls.is_none() && e.local_copy.is_none());
    let full =
        format!("{etcd}prefix = \"/ferry/dc1/\"\nlease_ttl = \"30s\"\nlocal_copy = \"copy.db\"\n");
    let e = ok(&full).etcd.unwrap();
    assert_eq!(e.prefix, "/ferry/dc1");
    assert_eq!(e.lease_ttl, Duration::from_secs(30));
    assert_eq!(e.local_copy, Some(Path::new("conf").join("copy.db")));

    refused_at(
        &etcd.replace("\"http://etcd-2:2379\"", "\"etcd-2:2379\""),
        "endpoints",
        &["\"etcd-2:2379\"", "http://HOST:PORT"],
    );
    refused_at(
        &etcd.replace("http://etcd-2:2379", "https://etcd-2:2379"),
        "endpoints",
        &["https", "ca_file"],
    );
    refused_at(
        &format!("{MINIMAL}\n[store]\nbackend = \"etcd\"\n"),
        "backend",
        &["needs endpoints"],
    );
    refused_at(
        &format!("{MINIMAL}\n[store]\nbackend = \"etcd\"\nendpoints = []\n"),
        "endpoints",
        &["empty"],
    );
    refused_at(
        &format!("{etcd}prefix = \"ferry\"\n"),
        "prefix",
        &["start with '/'"],
    );
    refused_at(
        &format!("{etcd}prefix = \"/\"\n"),
        "prefix",
        &["start with '/'"],
    );
    refused_at(
        &format!("{etcd}lease_ttl = \"1s\"\n"),
        "lease_ttl",
        &["out of range"],
    );
    refused_at(
        &format!("{etcd}lease_ttl = \"2500ms\"\n"),
        "lease_ttl",
        &["whole number"],
    );
    refused_at(
        &format!("{etcd}request_timeout = \"0s\"\n"),
        "request_timeout",
        &["above 0"],
    );
    refused_at(&format!("{etcd}path = \"x.db\"\n"), "path", &["local_copy"]);
    refused_at(
        &etcd.replace("name = \"dc1\"", "name = \"dc1\"\nstore = \"old.db\""),
        "store = \"old.db\"",
        &["local_copy"],
    );
    refused_at(
        &format!("{etcd}user = \"ferry\"\n"),
        "user",
        &["password_file"],
    );
    refused_at(
        &format!("{etcd}cert_file = \"c.pem\"\n"),
        "cert_file",
        &["key_file"],
    );
    refused_at(
        &format!("{etcd}colour = \"blue\"\n"),
        "colour",
        &["unknown field"],
    );
}

/// The etcd password and client key follow the secret-file rule (fail closed
/// on a file others can read); certificates are read at load time.
#[test]
fn store_etcd_secrets_and_certificates() {
    if !ETCD_SUPPORTED {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("etcd.pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    set_mode(&pw, 0o644);
    let text = format!(
        "{MINIMAL}\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nuser = \"ferry\"\npassword_file = {:?}\n",
        pw.display().to_string()
    );
    refused_at(&text, "password_file", &["chmod 600"]);
    set_mode(&pw, 0o600);
    let (user, password) = ok(&text).etcd.unwrap().auth.unwrap();
    assert_eq!(user, "ferry");
    assert!(password.matches(b"hunter2"));
    refused_at(
        &text.replace("etcd.pw", "missing.pw"),
        "password_file",
        &["missing.pw"],
    );

    for (name, body, mode) in [
        ("ca.pem", "CA", 0o644),
        ("c.pem", "CERT", 0o644),
        ("c.key", "KEY", 0o644),
    ] {
        std::fs::write(dir.path().join(name), body).unwrap();
        set_mode(&dir.path().join(name), mode);
    }
    let d = dir.path().display().to_string();
    let tls = format!(
        "{MINIMAL}\n[store]\nbackend = \"etcd\"\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/c.pem\"\nkey_file = \"{d}/c.key\"\n"
    );
    refused_at(&tls, "key_file", &["chmod 600"]);
    set_mode(&dir.path().join("c.key"), 0o600);
    let t = ok(&tls).etcd.unwrap().tls.unwrap();
    assert_eq!(t.ca, "CA");
    let (cert, key) = t.identity.unwrap();
    assert_eq!(cert, "CERT");
    assert!(key.matches(b"KEY"));
    refused_at(
        &tls.replace("https://", "http://"),
        "endpoints",
        &["plain http", "ca_file"],
    );
}
