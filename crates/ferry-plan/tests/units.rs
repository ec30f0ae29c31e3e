//! Units and waves checked against independent computations: a brute-force
//! transitive closure for units on small random inventories (databases shared
//! across clusters, undeclared and client uses included), and the scheduling
//! rules recomputed from the slots.

use ferry_inventory::{DatabaseId, FilerId, HostingId, Inventory, InventoryBuilder, UserRef};
use ferry_plan::{
    explain, schedule, Constraint, Constraints, Impossible, Job, Params, Partition, Plan, Prepared,
    Slot, Window, MAX_BATCH_DATABASES, NO_UNIT,
};
use proptest::prelude::*;

/// A small inventory described by indices, turned into a real one.
#[derive(Debug, Clone)]
struct Spec {
    clusters: usize,
    filers: Vec<usize>,                        // cluster of each filer
    servers: Vec<usize>,                       // cluster of each database server
    databases: Vec<(usize, u64)>,              // server, bytes
    hostings: Vec<(usize, u64, u64)>,          // filer, files, bytes
    ips: Vec<usize>,                           // cluster of each IP
    sites: Vec<(usize, usize)>,                // hosting, ip
    declared: Vec<(usize, usize)>,             // hosting, database
    observed: Vec<(usize, Result<usize, u8>)>, // database, hosting or client
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        1usize..=3,
        1usize..=5,
        1usize..=3,
        0usize..=8,
        1usize..=10,
        1usize..=3,
    )
        .prop_flat_map(|(clusters, nf, ns, nd, nh, ni)| {
            (
                Just(clusters),
                proptest::collection::vec(0..clusters, nf),
                proptest::collection::vec(0..clusters, ns),
                proptest::collection::vec((0..ns, 0u64..5_000_000), nd),
                proptest::collection::vec((0..nf, 0u64..10_000, 0u64..50_000_000), nh),
                proptest::collection::vec(0..clusters, ni),
                proptest::collection::vec((0..nh, 0..ni), 0..15),
                proptest::collection::vec((0..nh, 0..nd.max(1)), 0..12),
                proptest::collection::vec(
                    (
                        0..nd.max(1),
                        prop_oneof![(0..nh).prop_map(Ok), (0u8..3).prop_map(Err)],
                    ),
                    0..8,
                ),
            )
                .prop_map(
                    |(
                        clusters,
                        filers,
                        servers,
                        databases,
                        hostings,
                        ips,
                        sites,
                        declared,
                        observed,
                    )| {
                        Spec {
                            clusters,
                            filers,
                            servers,
                            databases,
                            hostings,
                            ips,
                            sites,
                            declared,
                            observed,
                        }
                    },
                )
        })
}

fn build(s: &Spec) -> Inventory {
    let mut b = InventoryBuilder::new();
    b.add_datacenter("dc", 0).unwrap();
    for c in 0..s.clusters {
        b.add_cluster(&format!("c{c}"), "dc", 0).unwrap();
    }
    for (i, c) in s.ips.iter().enumerate() {
        b.add_ip(&format!("192.0.2.{i}"), &format!("c{c}"), 0)
            .unwrap();
    }
    for (i, c) in s.filers.iter().enumerate() {
        b.add_filer(&format!("fs{i}"), &format!("c{c}"), 0).unwrap();
    }
    for (i, c) in s.servers.iter().enumerate() {
        b.add_db_server(&format!("sql{i}"), &format!("c{c}"), 0)
            .unwrap();
    }
    for (i, (srv, bytes)) in s.databases.iter().enumerate() {
        b.add_database(&format!("db{i}"), &format!("sql{srv}"), *bytes, 0)
            .unwrap();
    }
    for (i, (f, files, bytes)) in s.hostings.iter().enumerate() {
        b.add_hosting(&format!("h{i}"), &format!("fs{f}"), "/", *files, *bytes, 0)
            .unwrap();
    }
    // Sites: one per (hosting, ip) pair index, unique names.
    for (i, (h, ip)) in s.sites.iter().enumerate() {
        b.add_site(
            &format!("s{i}.example"),
            &format!("h{h}"),
            &format!("192.0.2.{ip}"),
            0,
        )
        .unwrap();
    }
    let db = |d: usize| format!("db{d}@sql{}", s.databases[d].0);
    if !s.databases.is_empty() {
        let mut seen = std::collections::HashSet::new();
        for (h, d) in &s.declared {
            if seen.insert((*h, *d)) {
                b.add_declared_use(&format!("h{h}"), &db(*d), 0).unwrap();
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (d, user) in &s.observed {
            if !seen.insert((*d, *user)) {
                continue;
            }
            match user {
                Ok(h) => b.add_observed_use(&db(*d), UserRef::Hosting(&format!("h{h}")), 0),
                Err(c) => {
                    b.add_observed_use(&db(*d), UserRef::Client(&format!("198.51.100.{c}")), 0)
                }
            }
            .unwrap();
        }
    }
    b.finish().unwrap()
}

/// Units by brute force: a boolean reachability matrix closed transitively
/// (Warshall), over hostings, databases, filers and IPs. Returns, for every pair
/// of members (hostings, databases, and filers under `filer`), whether they are
/// in one unit.
fn closure(inv: &Inventory, c: Constraints) -> Vec<Vec<bool>> {
    let counts = inv.counts();
    let (nh, nd, nf, ni) = (counts.hostings, counts.databases, counts.filers, counts.ips);
    let n = nh + nd + nf + ni;
    let mut m = vec![vec![false; n]; n];
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = true;
    }
    let mut link = |a: usize, b: usize| {
        m[a][b] = true;
        m[b][a] = true;
    };
    for h in 0..nh {
        if c.contains(Constraint::Filer) {
            link(h, nh + nd + inv.hosting_filers()[h].index());
        }
    }
    if c.contains(Constraint::DeclaredDb) {
        for (h, d) in inv.declared_uses() {
            link(h.index(), nh + d.index());
        }
    }
    if c.contains(Constraint::ObservedDb) {
        for u in inv.observed_uses() {
            if let ferry_inventory::User::Hosting(h) = u.user {
                link(h.index(), nh + u.database.index());
            }
        }
    }
    if c.contains(Constraint::Ip) {
        for (h, ip) in inv.site_hostings().iter().zip(inv.site_ips()) {
            link(h.index(), nh + nd + nf + ip.index());
        }
    }
    // Databases no hosting uses (declared or observed, whatever the
    // constraints) share one freeze: these inventories are far too small for
    // a batch to reach the freeze budget or the batch size.
    let mut used = vec![false; nd];
    for (_, d) in inv.declared_uses() {
        used[d.index()] = true;
    }
    for u in inv.observed_uses() {
        if let ferry_inventory::User::Hosting(_) = u.user {
            used[u.database.index()] = true;
        }
    }
    let unused: Vec<usize> = (0..nd).filter(|&d| !used[d]).collect();
    for pair in unused.windows(2) {
        link(nh + pair[0], nh + pair[1]);
    }
    // Warshall: after step k, i reaches j through nodes 0..=k.
    for k in 0..n {
        let row_k = m[k].clone();
        for row in m.iter_mut() {
            if row[k] {
                for (cell, &via) in row.iter_mut().zip(&row_k) {
                    *cell |= via;
                }
            }
        }
    }
    let members = nh + nd + if c.contains(Constraint::Filer) { nf } else { 0 };
    (0..members)
        .map(|i| (0..members).map(|j| m[i][j]).collect())
        .collect()
}

fn unit_of_member(p: &Partition, inv: &Inventory, i: usize) -> u32 {
    let c = inv.counts();
    if i < c.hostings {
        p.hosting_unit(HostingId(i as u32))
    } else if i < c.hostings + c.databases {
        p.database_unit(DatabaseId((i - c.hostings) as u32))
    } else {
        p.filer_unit(FilerId((i - c.hostings - c.databases) as u32))
    }
}

fn constraints() -> impl Strategy<Value = Constraints> {
    (0u8..16).prop_map(|bits| {
        Constraint::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .fold(Constraints::NONE, |set, (_, c)| set.with(c))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn units_match_brute_force(s in spec(), c in constraints()) {
        let inv = build(&s);
        let prep = Prepared::new(&inv);
        let params = Params::default();
        let p = Partition::compute(&prep, &params, c);
        let same = closure(&inv, c);
        let counts = inv.counts();
        for (i, row) in same.iter().enumerate() {
            let ui = unit_of_member(&p, &inv, i);
            prop_assert!(ui != NO_UNIT && (ui as usize) < p.len());
            for (j, &joined) in row.iter().enumerate() {
                prop_assert_eq!(ui == unit_of_member(&p, &inv, j), joined, "members {} and {}", i, j);
            }
        }
        // Every entity is counted in exactly one unit.
        let st = p.stats();
        prop_assert_eq!(st.iter().map(|u| u.sites).sum::<u64>(), counts.sites as u64);
        prop_assert_eq!(st.iter().map(|u| u.hostings as usize).sum::<usize>(), counts.hostings);
        prop_assert_eq!(st.iter().map(|u| u.databases as usize).sum::<usize>(), counts.databases);
        if c.contains(Constraint::Filer) {
            prop_assert_eq!(st.iter().map(|u| u.filers as usize).sum::<usize>(), counts.filers);
        } else {
            prop_assert!(p.filer_units().iter().all(|&u| u == NO_UNIT));
        }
        // No empty unit, and units are numbered largest first.
        prop_assert!(st.iter().all(|u| u.hostings + u.databases + u.filers > 0));
        prop_assert!(st.windows(2).all(|w| w[0].sites >= w[1].sites));
        // The unordered computation is the same partition.
        let q = Partition::compute_unordered(&prep, &params, c);
        prop_assert_eq!(q.len(), p.len());
        for (i, row) in same.iter().enumerate() {
            for (j, &joined) in row.iter().enumerate() {
                prop_assert_eq!(
                    unit_of_member(&q, &inv, i) == unit_of_member(&q, &inv, j),
                    joined
                );
            }
        }
    }

    #[test]
    fn dropping_a_constraint_only_splits(s in spec(), c in constraints()) {
        let inv = build(&s);
        let prep = Prepared::new(&inv);
        let params = Params::default();
        let p = Partition::compute(&prep, &params, c);
        for dropped in c.iter() {
            let child = Partition::compute(&prep, &params, c.without(dropped));
            let split = p.split_by(&child);
            for h in 0..inv.counts().hostings {
                let h = HostingId(h as u32);
                // Units of the finer partition never straddle two coarse units.
                let coarse = p.hosting_unit(h);
                for h2 in 0..inv.counts().hostings {
                    let h2 = HostingId(h2 as u32);
                    if child.hosting_unit(h) == child.hosting_unit(h2) {
                        prop_assert_eq!(coarse, p.hosting_unit(h2));
                    }
                }
            }
            let parts: u32 = split.iter().map(|(n, _)| n).sum();
            let nonempty_children = child.len() as u32;
            // Filer-only units vanish without `filer`; all others are counted.
            prop_assert!(parts <= nonempty_children);
        }
    }

    #[test]
    fn unused_databases_batch_greedily_within_the_freeze(
        s in spec(),
        max_freeze in 100.0f64..2_000.0,
    ) {
        // Slow checks (5 MB take up to 500 s) so batches hit the budget.
        let inv = build(&s);
        let prep = Prepared::new(&inv);
        let params = Params { max_freeze, db_check_rate: 10_000.0, ..Params::default() };
        let limit = max_freeze.min(params.window.seconds());
        let freeze = |batch: &[DatabaseId]| {
            let mut per_server = std::collections::HashMap::new();
            for d in batch {
                *per_server.entry(inv.database_servers()[d.index()]).or_insert(0u64) +=
                    inv.database_bytes()[d.index()];
            }
            let busiest = per_server.values().copied().max().unwrap_or(0);
            params.freeze_overhead + busiest as f64 / params.db_check_rate
        };
        let batches = prep.unused_database_batches(&params);
        let p = Partition::compute(&prep, &params, Constraints::default());
        let mut seen = Vec::new();
        for (k, batch) in batches.iter().enumerate() {
            prop_assert!(!batch.is_empty() && batch.len() <= MAX_BATCH_DATABASES);
            prop_assert!(batch.len() == 1 || freeze(batch) <= limit + 1e-9);
            // Greedy: the next batch's first database did not fit this one.
            if let Some(next) = batches.get(k + 1) {
                let mut more = batch.clone();
                more.push(next[0]);
                prop_assert!(
                    batch.len() == MAX_BATCH_DATABASES || freeze(&more) > limit
                );
            }
            // One batch, one unit, with the batch's freeze and nothing else.
            let u = p.database_unit(batch[0]);
            prop_assert!(batch.iter().all(|d| p.database_unit(*d) == u));
            let st = &p.stats()[u as usize];
            prop_assert_eq!(st.databases as usize, batch.len());
            prop_assert_eq!(st.hostings, 0);
            prop_assert!((st.freeze_s - freeze(batch)).abs() < 1e-9);
            seen.extend(batch.iter().copied());
        }
        // Every database no hosting uses, once, in inventory order.
        let used: std::collections::HashSet<DatabaseId> = inv
            .declared_uses()
            .iter()
            .map(|(_, d)| *d)
            .chain(inv.observed_uses().iter().filter_map(|u| match u.user {
                ferry_inventory::User::Hosting(_) => Some(u.database),
                ferry_inventory::User::Client(_) => None,
            }))
            .collect();
        let unused: Vec<DatabaseId> = (0..inv.counts().databases as u32)
            .map(DatabaseId)
            .filter(|d| !used.contains(d))
            .collect();
        prop_assert_eq!(seen, unused);
    }

    #[test]
    fn schedules_keep_every_rule(
        jobs in proptest::collection::vec((1.0f64..8_000.0, 0.0f64..5e8, 0.0f64..5e7), 0..60),
        parallel in 1u32..4,
        nights in proptest::option::of(1u32..6),
        max_freeze in 1_000.0f64..20_000.0,
    ) {
        let params = Params {
            window: Window::parse("01:00-03:00").unwrap(),
            bandwidth: 10_000.0,
            lead: 3_600.0,
            parallel,
            nights,
            max_freeze,
            ..Params::default()
        };
        let jobs: Vec<Job> = jobs
            .into_iter()
            .map(|(freeze_s, precopy_bytes, final_bytes)| Job { freeze_s, precopy_bytes, final_bytes })
            .collect();
        let s = schedule(&jobs, &params);
        check_schedule(&jobs, &params, &s.slots, &s.nights)?;
    }
}

fn check_schedule(
    jobs: &[Job],
    params: &Params,
    slots: &[Slot],
    nights: &[ferry_plan::Night],
) -> Result<(), TestCaseError> {
    let window = params.window.seconds();
    let eps = 1e-6;
    prop_assert_eq!(slots.len(), jobs.len());
    // (night, lane) -> (order, start, freeze) of its units.
    type Lanes = std::collections::BTreeMap<(u32, u32), Vec<(u32, f64, f64)>>;
    let mut lanes: Lanes = Default::default();
    for (i, (slot, job)) in slots.iter().zip(jobs).enumerate() {
        let fits = job.freeze_s <= params.max_freeze && job.freeze_s <= window;
        match slot {
            Slot::Night {
                night,
                lane,
                order,
                start_s,
            } => {
                prop_assert!(fits, "unit {} scheduled but does not fit", i);
                prop_assert!((*night as usize) < nights.len());
                prop_assert!(*lane < params.parallel);
                if let Some(n) = params.nights {
                    prop_assert!(*night < n);
                }
                lanes
                    .entry((*night, *lane))
                    .or_default()
                    .push((*order, *start_s, job.freeze_s));
            }
            Slot::Impossible(why) => {
                prop_assert!(!fits);
                match why {
                    Impossible::FreezeOverBudget => prop_assert!(job.freeze_s > params.max_freeze),
                    Impossible::FreezeOverWindow => prop_assert!(job.freeze_s > window),
                }
            }
            Slot::Unscheduled => prop_assert!(params.nights.is_some() && fits),
        }
    }
    // Each lane: freezes back to back from the window's opening, within it.
    // Per night: (sum of freezes, longest freeze, when the last one ends).
    let mut per_night: std::collections::BTreeMap<u32, (f64, f64, f64)> = Default::default();
    for ((night, _), v) in lanes.iter_mut() {
        v.sort_by_key(|a| a.0);
        let mut t = 0.0;
        let n = per_night.entry(*night).or_default();
        for (_, start, freeze) in v.iter() {
            prop_assert!((start - t).abs() < eps);
            t += freeze;
            n.0 += freeze;
            n.1 = n.1.max(*freeze);
        }
        n.2 = n.2.max(t);
        prop_assert!(t <= window + eps, "lane busy {} > window {}", t, window);
    }
    // Freezes spread over the lanes: each went to the lane free first, so the
    // night ends within Graham's bound (sum / lanes + (1 - 1 / lanes) x longest)
    // rather than when one lane is full.
    let m = f64::from(params.parallel);
    for (night, (sum, longest, end)) in &per_night {
        let bound = sum / m + (1.0 - 1.0 / m) * longest;
        prop_assert!(
            *end <= bound + eps,
            "night {} ends at {} past the spread bound {}",
            night,
            end,
            bound
        );
        prop_assert!((nights[*night as usize].busy_s - end).abs() < eps);
    }
    // Each night: unit count, link for final copies, pre-copy done in time.
    let (mut pre, mut fin_before) = (0.0, 0.0);
    for (k, n) in nights.iter().enumerate() {
        let here: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Slot::Night { night, .. } if *night as usize == k))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(here.len(), n.units as usize);
        let fin: f64 = here.iter().map(|&i| jobs[i].final_bytes).sum();
        prop_assert!(fin <= params.bandwidth * window * (1.0 + 1e-9));
        pre += here.iter().map(|&i| jobs[i].precopy_bytes).sum::<f64>();
        let opens = params.lead + k as f64 * 86_400.0;
        prop_assert!(pre + fin_before <= params.bandwidth * opens * (1.0 + 1e-9) + eps);
        prop_assert!((n.link_bytes_needed - (pre + fin_before)).abs() < 1.0);
        fin_before += fin;
    }
    // No trailing empty night, and without a cap nothing is left over.
    if let Some(last) = nights.last() {
        prop_assert!(last.units > 0);
    }
    Ok(())
}

fn glued_example() -> Inventory {
    // Two filers in two clusters glued by a database hosting h2 uses without
    // declaring it; a third filer alone.
    let mut b = InventoryBuilder::new();
    b.add_datacenter("dc", 1).unwrap();
    b.add_cluster("c1", "dc", 1).unwrap();
    b.add_cluster("c2", "dc", 1).unwrap();
    b.add_ip("192.0.2.1", "c1", 1).unwrap();
    b.add_ip("192.0.2.2", "c2", 1).unwrap();
    for (f, c) in [("fs1", "c1"), ("fs2", "c2"), ("fs3", "c2")] {
        b.add_filer(f, c, 1).unwrap();
    }
    b.add_db_server("sql1", "c1", 1).unwrap();
    b.add_database("crm", "sql1", 1, 1).unwrap();
    b.add_database("blog", "sql1", 1, 1).unwrap();
    b.add_hosting("h1", "fs1", "/h1", 10, 100, 1).unwrap();
    b.add_hosting("h2", "fs2", "/h2", 10, 100, 1).unwrap();
    b.add_hosting("h3", "fs3", "/h3", 10, 100, 1).unwrap();
    b.add_site("www.h1.example", "h1", "192.0.2.1", 1).unwrap();
    b.add_site("www.h2.example", "h2", "192.0.2.2", 1).unwrap();
    b.add_site("www.h3.example", "h3", "192.0.2.2", 1).unwrap();
    b.add_declared_use("h1", "crm@sql1", 1).unwrap();
    b.add_declared_use("h3", "blog@sql1", 1).unwrap();
    b.add_observed_use("crm@sql1", UserRef::Hosting("h2"), 1)
        .unwrap();
    b.add_observed_use("blog@sql1", UserRef::Client("198.51.100.9"), 1)
        .unwrap();
    b.finish().unwrap()
}

/// Parameters where the final copy is the whole freeze: 1 byte per second,
/// filers scanned at 1 B/s, 0.1% of the data written per second.
fn slow_params(max_freeze: f64) -> Params {
    Params {
        bandwidth: 1.0,
        scan_rate: 1.0,
        change_rate: 0.001,
        freeze_overhead: 0.0,
        db_check_rate: 1e12,
        max_freeze,
        lead: 86_400.0,
        ..Params::default()
    }
}

#[test]
fn glue_is_named_with_its_filers_and_kinds() {
    let inv = glued_example();
    let plan = Plan::build(&inv, &Params::default(), &ferry_inventory::Quiet).unwrap();
    assert_eq!(plan.partition.len(), 2);
    let u = plan.find_unit("fs1").unwrap();
    assert_eq!(u, plan.find_unit("www.h2.example").unwrap());
    assert_ne!(u, plan.find_unit("h3").unwrap());
    let glue: Vec<_> = plan.unit_glue(u).collect();
    assert_eq!(glue.len(), 1);
    assert_eq!(inv.database_name(glue[0].database), "crm@sql1");
    assert!(glue[0].cross_cluster);
    let kinds: Vec<&str> = glue[0].volumes.iter().map(|(_, k)| k.name()).collect();
    assert_eq!(kinds, ["declared", "observed"]);
    // Lifting the observed-db constraint (the tunnel) splits it.
    let costs = &plan.scenarios;
    let without = costs
        .iter()
        .find(|s| s.constraints == Constraints::default().without(Constraint::ObservedDb))
        .unwrap();
    assert_eq!(without.units, 3);
    // A client address ties nothing: blog@sql1 stays with h3 only.
    assert_eq!(
        plan.find_unit("blog@sql1").unwrap(),
        plan.find_unit("h3").unwrap()
    );
    // With the IP constraint, h2 and h3 share 192.0.2.2: everything is one unit.
    let with_ip = costs
        .iter()
        .find(|s| s.constraints == Constraints::default().with(Constraint::Ip))
        .unwrap();
    assert_eq!(with_ip.units, 1);
    assert_eq!(with_ip.largest.sites, 3);
}

#[test]
fn an_impossible_unit_is_reported_with_the_constraint_that_made_it_big() {
    let inv = glued_example();
    // Alone, fs1 or fs2 freezes 0.001 * 100 B * 100 s / 1 B/s = 10 s; glued, the
    // final copy doubles (200 B written during the 100 s pass) to 20 s.
    let plan = Plan::build(&inv, &slow_params(15.0), &ferry_inventory::Quiet).unwrap();
    let u = plan.find_unit("fs1").unwrap() as usize;
    let st = plan.partition.stats()[u];
    assert!((st.freeze_s - 20.0).abs() < 1e-9, "{st:?}");
    assert_eq!(
        plan.schedule.slots[u],
        Slot::Impossible(Impossible::FreezeOverBudget)
    );
    let blame = plan.blame[u].clone().unwrap();
    assert_eq!(blame.constraint, Constraint::ObservedDb);
    assert_eq!(blame.parts, 2);
    assert!((blame.largest_part_freeze_s - 10.0).abs() < 1e-9);
    // The other unit is scheduled, never the impossible one.
    let other = plan.find_unit("fs3").unwrap() as usize;
    assert!(matches!(plan.schedule.slots[other], Slot::Night { .. }));
    assert!(plan.schedule.nights.iter().all(|n| n.units == 1));
}

#[test]
fn plan_json_lists_every_entity_once_and_every_unit_in_one_night() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inventory");
    let inv = ferry_inventory::load_dir(&dir, &ferry_inventory::Quiet).unwrap();
    let plan = Plan::build(&inv, &Params::default(), &ferry_inventory::Quiet).unwrap();
    let mut out = Vec::new();
    plan.write_json(&mut out).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["format"], "ferry-plan");
    assert_eq!(doc["version"], 1);
    let units = doc["units"].as_array().unwrap();
    let mut hostings = Vec::new();
    let mut sites = Vec::new();
    let mut databases = Vec::new();
    let mut filers = Vec::new();
    for u in units {
        for h in u["hostings"].as_array().unwrap() {
            hostings.push(h["name"].as_str().unwrap().to_string());
            for s in h["sites"].as_array().unwrap() {
                sites.push(s.as_str().unwrap().to_string());
            }
        }
        for d in u["databases"].as_array().unwrap() {
            databases.push(d.as_str().unwrap().to_string());
        }
        for f in u["filers"].as_array().unwrap() {
            filers.push(f.as_str().unwrap().to_string());
        }
        // Scheduled units appear in their night's list, exactly once.
        assert_eq!(u["status"], "scheduled");
        let night = u["night"].as_u64().unwrap() as usize;
        let list = doc["nights"][night - 1]["units"].as_array().unwrap();
        assert_eq!(list.iter().filter(|x| **x == u["id"]).count(), 1);
    }
    for v in [&mut hostings, &mut sites, &mut databases, &mut filers] {
        let n = v.len();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), n, "an entity is listed twice");
    }
    let c = inv.counts();
    assert_eq!(
        (hostings.len(), sites.len(), databases.len(), filers.len()),
        (c.hostings, c.sites, c.databases, c.filers)
    );
    let listed: usize = doc["nights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["units"].as_array().unwrap().len())
        .sum();
    assert_eq!(listed, units.len());
    assert_eq!(doc["unattributed_uses"][0]["client"], "198.51.100.7");
}

/// Every key path of `old`, with arrays reduced to their first element.
fn key_paths(v: &serde_json::Value, prefix: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}/{k}");
                out.push(p.clone());
                key_paths(v, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            if let Some(first) = a.first() {
                key_paths(first, format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn plan_format_only_grows_v1_fixture() {
    // A plan written by format v1 (tests/fixtures/plan-v1-example.json, from
    // examples/inventory): every field it has must still be written.
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/plan-v1-example.json")).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inventory");
    let inv = ferry_inventory::load_dir(&dir, &ferry_inventory::Quiet).unwrap();
    let plan = Plan::build(&inv, &Params::default(), &ferry_inventory::Quiet).unwrap();
    let mut out = Vec::new();
    plan.write_json(&mut out).unwrap();
    let now: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(now["format"], fixture["format"]);
    assert_eq!(now["version"], fixture["version"]);
    let (mut old_paths, mut new_paths) = (Vec::new(), Vec::new());
    key_paths(&fixture, String::new(), &mut old_paths);
    key_paths(&now, String::new(), &mut new_paths);
    for p in old_paths {
        assert!(new_paths.contains(&p), "field {p} of format v1 is gone");
    }
}

#[test]
fn explain_alternatives_toggle_each_constraint_once() {
    let alts = explain::alternatives(Constraints::default());
    assert_eq!(alts.len(), 4);
    assert!(alts.contains(&Constraints::default().with(Constraint::Ip)));
    assert!(alts.contains(&Constraints::default().without(Constraint::Filer)));
}
