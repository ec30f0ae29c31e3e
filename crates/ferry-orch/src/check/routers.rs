//! Routers: each one's status with its token, then the units' sites there
//! (known, not moved yet, not frozen, epochs with room), read only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_admin_api::sites::QueriedSite;
use ferry_admin_api::{AdminClient, AdminError, Http};

use super::resume::Expect;
use super::{CheckReport, Verdict};
use crate::config::{MigrateConfig, RouterSpec};
use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// The largest epoch a router's site table holds (46 bits of the slot word).
const MAX_EPOCH: u64 = (1 << 46) - 1;

/// Each router (all at once, the lines in config order): reachable, the
/// token accepted (`GET /v1/status`); then the units' sites: known to the
/// source routers (prepare refuses a unit otherwise), not moved yet, not
/// frozen, with epochs the run can go past (it sends 1 + the highest epoch
/// any router reports, the rule of runbook/fencing.rs).
pub(super) async fn routers(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    timeout: Duration,
    started: &BTreeMap<String, Expect>,
) {
    let http = Http::new();
    let cfg = Arc::new(inputs.cfg.clone());
    let units: Arc<Vec<Unit>> = Arc::new(
        units
            .iter()
            .map(|u| Unit {
                id: u.id.clone(),
                sites: u.sites(),
                expect: started.get(&u.id).map(|x| (x.epoch, x.owing.clone())),
            })
            .collect(),
    );
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in cfg.routers.iter().enumerate() {
        let (spec, cfg, units, http) = (spec.clone(), cfg.clone(), units.clone(), http.clone());
        set.spawn(async move { (i, router(&spec, &cfg, &units, &http, timeout).await) });
    }
    let mut done = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(x) => done.push(x),
            Err(e) => r.push(
                "router",
                "?",
                Verdict::Failed,
                format!("a check stopped: {e}"),
                "run the check again",
            ),
        }
    }
    done.sort_by_key(|x| x.0);
    for (_, lines) in done {
        r.lines.extend(lines.lines);
    }
}

/// A unit as the router checks see it.
struct Unit {
    id: String,
    sites: Vec<String>,
    /// Under way (`--resume`): the epoch every router took, and the
    /// routers that owe a change.
    expect: Option<(u64, BTreeSet<String>)>,
}

/// One router's lines.
async fn router(
    spec: &RouterSpec,
    cfg: &MigrateConfig,
    units: &[Unit],
    http: &Http,
    timeout: Duration,
) -> CheckReport {
    let mut r = CheckReport::default();
    let api = client(spec, http, timeout);
    match api.status().await {
        Ok(_) => r.push(
            "router",
            spec.name.as_str(),
            Verdict::Ok,
            format!("{} answered GET /v1/status with the token", spec.admin),
            "",
        ),
        Err(e) => {
            let fix = router_fix(&e);
            r.push(
                "router",
                spec.name.as_str(),
                Verdict::Failed,
                e.to_string(),
                fix,
            );
            return r;
        }
    }
    pool_line(&mut r, &api, spec, cfg).await;
    for Unit { id, sites, expect } in units {
        if sites.is_empty() {
            continue;
        }
        let mut found = Vec::with_capacity(sites.len());
        let mut failed = None;
        for chunk in sites.chunks(crate::router::QUERY_CHUNK) {
            match api.query(chunk).await {
                Ok(list) => found.extend(list),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let at = format!("{} {id}", spec.name);
        if let Some(e) = failed {
            let fix = router_fix(&e);
            r.push("sites", at, Verdict::Failed, e.to_string(), fix);
            continue;
        }
        match expect {
            Some((epoch, owing)) => resumed_line(&mut r, at, spec, *epoch, owing, &found),
            None => sites_line(&mut r, at, spec, cfg, &found),
        }
    }
    r
}

/// A unit under way (`--resume`): its sites may be frozen or flipped
/// already; what matters is that the router holds at least the epoch the
/// journal says every router took. A router behind it lost what it was
/// sent (restarted without its sites file?): resume would go on from a
/// state that router does not have. A router that owes a change is behind
/// on purpose (resume sends it first).
fn resumed_line(
    r: &mut CheckReport,
    at: String,
    spec: &RouterSpec,
    epoch: u64,
    owing: &BTreeSet<String>,
    found: &[QueriedSite],
) {
    let mut behind = Vec::new();
    let mut absent = Vec::new();
    let mut max = 0u64;
    for q in found {
        match q {
            QueriedSite::Present(s) => {
                max = max.max(s.epoch);
                if s.epoch < epoch {
                    behind.push(format!("{} at epoch {}", s.host, s.epoch));
                }
            }
            QueriedSite::Absent(a) if epoch > 0 => absent.push(a.host.as_str()),
            QueriedSite::Absent(_) => {}
        }
    }
    let shown = |v: &[&str]| v.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if (!behind.is_empty() || !absent.is_empty()) && owing.contains(&spec.name) {
        r.push(
            "sites",
            at,
            Verdict::Ok,
            format!(
                "behind the journal's epoch {epoch} ({} site(s)), and the journal says the router owes a change: resume sends it first",
                behind.len() + absent.len()
            ),
            "",
        );
        return;
    }
    if !behind.is_empty() || !absent.is_empty() {
        let behind_refs: Vec<&str> = behind.iter().map(String::as_str).collect();
        let mut why = format!(
            "router {} is behind the journal, which says every router took epoch {epoch}:",
            spec.name
        );
        if !behind.is_empty() {
            why += &format!(" {} site(s) {}", behind.len(), shown(&behind_refs));
        }
        if !absent.is_empty() {
            why += &format!(" {} site(s) unknown: {}", absent.len(), shown(&absent));
        }
        r.push(
            "sites",
            at,
            Verdict::Failed,
            why,
            "the router lost its sites (restarted without its sites file?): restore them, or send the unit's last state to it (`ferry migrate status` shows it) before resuming",
        );
        return;
    }
    if max >= MAX_EPOCH {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!("epoch {max}: the run's next epoch would not fit a router's 46 bits"),
            "nothing a run can do: these sites' epochs are exhausted",
        );
        return;
    }
    r.push(
        "sites",
        at,
        Verdict::Ok,
        format!(
            "{} site(s) at or past the journal's epoch {epoch} (highest {max})",
            found.len()
        ),
        "",
    );
}

/// A router of the source or the destination serves the sites from that
/// datacenter's pool: it must know the pool (the flip's placement would be
/// refused otherwise) and, at the destination, have a server that can serve
/// (the flip would send the sites' traffic nowhere).
async fn pool_line(r: &mut CheckReport, api: &AdminClient, spec: &RouterSpec, cfg: &MigrateConfig) {
    let dest = spec.datacenter == cfg.destination;
    if !dest && spec.datacenter != cfg.source {
        return;
    }
    let want = cfg.pool_of(&spec.datacenter);
    let at = format!("{} {want}", spec.name);
    let pools = match api.pools().await {
        Ok(p) => p,
        Err(e) => {
            let fix = router_fix(&e);
            r.push("pool", at, Verdict::Failed, e.to_string(), fix);
            return;
        }
    };
    match pools.iter().find(|p| p.name == want) {
        None => r.push(
            "pool",
            at,
            Verdict::Failed,
            format!("the router has no pool {want:?}: the sites' placement pool:{want} would be refused"),
            "add the pool to the router's config (or correct [datacenters] pool)",
        ),
        Some(p) if dest && p.serving_tier.is_none() => r.push(
            "pool",
            at,
            Verdict::Failed,
            format!("no server of pool {want:?} can serve: the flip would send the sites to none"),
            "bring the destination's servers up (health checks passing, state ready)",
        ),
        Some(p) => r.push(
            "pool",
            at,
            Verdict::Ok,
            format!("{} server(s), serving tier {}", p.servers.len(), p.serving_tier.map_or("none".into(), |t| t.to_string())),
            "",
        ),
    }
}

fn client(spec: &RouterSpec, http: &Http, timeout: Duration) -> AdminClient {
    AdminClient::new(spec.name.clone(), &spec.admin, Some(&spec.token))
        .with_http(http.clone())
        .with_timeout(timeout)
}

fn router_fix(e: &AdminError) -> &'static str {
    match e.status() {
        Some(401) | Some(403) => {
            "the router refused the token: set [[routers]] token to the router's [admin] token"
        }
        Some(_) => "see the router's answer; is `admin` the router's admin listener?",
        None => "start the router, or correct [[routers]] admin (http://HOST:PORT of its admin listener)",
    }
}

fn sites_line(
    r: &mut CheckReport,
    at: String,
    spec: &RouterSpec,
    cfg: &MigrateConfig,
    found: &[QueriedSite],
) {
    // The placements the runbook gives this router's sites before and
    // after the flip (as runbook/unit.rs decides them).
    let moved_to = cfg.placement(&spec.datacenter, &cfg.destination);
    let mut absent = Vec::new();
    let mut moved = Vec::new();
    let mut frozen = Vec::new();
    let mut max = 0u64;
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for q in found {
        match q {
            QueriedSite::Present(s) => {
                max = max.max(s.epoch);
                *states.entry(s.state.as_str()).or_default() += 1;
                if s.placement == moved_to {
                    moved.push(s.host.as_str());
                }
                if s.state == ferry_model::SiteState::Frozen {
                    frozen.push(s.host.as_str());
                }
            }
            QueriedSite::Absent(a) => absent.push(a.host.as_str()),
        }
    }
    let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let shown = |v: &[&str]| v.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if !moved.is_empty() {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!(
                "{} site(s) already served from the destination ({moved_to}): {}; prepare would send them back to the source first",
                moved.len(),
                shown(&moved)
            ),
            "leave the unit out (--only), or plan again from the current inventory",
        );
        return;
    }
    if !frozen.is_empty() {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!(
                "{} site(s) frozen: {}; another run is under way or stopped in its freeze",
                frozen.len(),
                shown(&frozen)
            ),
            "let that run end (`ferry migrate status`), or resume and roll it back",
        );
        return;
    }
    if spec.datacenter == cfg.source && !absent.is_empty() {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!(
                "the source router does not know {} site(s) of the unit: {}",
                absent.len(),
                shown(&absent)
            ),
            "add the sites to the source routers (their config or PUT /v1/sites), or run `ferry plan` on the current inventory",
        );
        return;
    }
    if max >= MAX_EPOCH {
        r.push(
            "sites",
            at,
            Verdict::Failed,
            format!("epoch {max}: the run's next epoch would not fit a router's 46 bits"),
            "nothing a run can do: these sites' epochs are exhausted",
        );
        return;
    }
    let learn = if absent.is_empty() {
        String::new()
    } else {
        format!(", {} to learn at prepare", absent.len())
    };
    r.push(
        "sites",
        at,
        Verdict::Ok,
        format!(
            "{} known ({}){learn}; highest epoch {max}, the run sends {} or more",
            found.len() - absent.len(),
            if states.is_empty() {
                "none".into()
            } else {
                states.join(", ")
            },
            max + 1
        ),
        "",
    );
}
