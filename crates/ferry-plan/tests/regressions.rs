//! Regression tests named after the planner bugs they pin, on the example
//! inventory (`examples/inventory`).

use ferry_inventory::{Inventory, InventoryBuilder, Quiet};
use ferry_plan::{
    parse_byte_rate, parse_change_rate, parse_short_duration, CopyMode, Params, Plan, Slot,
    MAX_BATCH_DATABASES,
};

fn example() -> Inventory {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inventory");
    ferry_inventory::load_dir(&dir, &Quiet).unwrap()
}

fn night_of(plan: &Plan<'_>, unit: &str) -> u32 {
    let u = plan.find_unit(unit).unwrap();
    match plan.schedule.slots[u as usize] {
        Slot::Night { night, .. } => night + 1,
        other => panic!("{unit} is not scheduled: {other:?}"),
    }
}

/// Issue 18: `--bandwidth 1098500000B/s --lead 100s --change-rate 100%/d` put U1
/// in night 2: its own final copy was counted against night 1's pre-copy
/// budget, though it runs during night 1, after the opening.
#[test]
fn own_final_copy_counted_against_the_night_it_goes_in() {
    let inv = example();
    let params = Params {
        bandwidth: parse_byte_rate("1098500000B/s").unwrap(),
        lead: 100.0,
        change_rate: parse_change_rate("100%/d").unwrap(),
        ..Params::default()
    };
    let plan = Plan::build(&inv, &params, &Quiet).unwrap();
    let u1 = &plan.partition.stats()[0];
    let budget = params.bandwidth * params.lead;
    // The documented rule lets U1 in night 1, and only its own final copy
    // would not fit: the reproducer still reproduces.
    assert!((u1.precopy_bytes() as f64) <= budget);
    assert!(u1.precopy_bytes() as f64 + u1.final_bytes > budget);
    assert_eq!(night_of(&plan, "U1"), 1);
    let n1 = &plan.schedule.nights[0];
    assert!(n1.link_bytes_needed <= n1.link_bytes_available);
}

/// An inventory of one hosting (with its database) and `unused` databases no
/// hosting uses, `(server, bytes)` each, on `servers` database servers.
fn with_unused_databases(servers: usize, unused: &[(usize, u64)]) -> Inventory {
    let mut b = InventoryBuilder::new();
    b.add_datacenter("dc", 0).unwrap();
    b.add_cluster("c", "dc", 0).unwrap();
    b.add_ip("192.0.2.1", "c", 0).unwrap();
    b.add_filer("fs1", "c", 0).unwrap();
    for s in 0..servers {
        b.add_db_server(&format!("sql{s}"), "c", 0).unwrap();
    }
    b.add_hosting("h", "fs1", "/h", 1_000, 1_000_000, 0)
        .unwrap();
    b.add_site("h.example", "h", "192.0.2.1", 0).unwrap();
    b.add_database("used", "sql0", 1_000_000, 0).unwrap();
    b.add_declared_use("h", "used@sql0", 0).unwrap();
    for (i, (s, bytes)) in unused.iter().enumerate() {
        b.add_database(&format!("old{i}"), &format!("sql{s}"), *bytes, 0)
            .unwrap();
    }
    b.finish().unwrap()
}

/// The units that hold no hosting: (databases, freeze) each.
fn database_only_units(plan: &Plan<'_>) -> Vec<(u32, f64)> {
    plan.partition
        .stats()
        .iter()
        .filter(|s| s.hostings == 0)
        .map(|s| (s.databases, s.freeze_s))
        .collect()
}

/// Issue 18: the 8,442 databases no hosting uses in the 3M plan were 8,442
/// units paying a 60 s freeze each and filled nights 9-17 of 17. They share
/// freezes now, at most `MAX_BATCH_DATABASES` to a batch.
#[test]
fn databases_used_by_no_hosting_paid_a_freeze_each() {
    let unused: Vec<(usize, u64)> = (0..2_500).map(|i| (i % 3, 10_000_000)).collect();
    let inv = with_unused_databases(3, &unused);
    let params = Params::default();
    let plan = Plan::build(&inv, &params, &Quiet).unwrap();
    let batches = database_only_units(&plan);
    assert_eq!(
        batches.iter().map(|b| b.0).collect::<Vec<_>>(),
        [MAX_BATCH_DATABASES as u32, MAX_BATCH_DATABASES as u32, 500]
    );
    // One freeze per batch: overhead + the busiest server's check.
    for (databases, freeze) in &batches {
        let busiest = (u64::from(*databases)).div_ceil(3) as f64 * 10e6;
        let expected = params.freeze_overhead + busiest / params.db_check_rate;
        assert!((freeze - expected).abs() < 1e-6, "{freeze} != {expected}");
    }
    // The hosting's unit keeps its own database only.
    let u = plan.find_unit("h").unwrap();
    assert_eq!(plan.partition.stats()[u as usize].databases, 1);
    assert_eq!(plan.schedule.nights.len(), 1);
    assert_eq!(plan.schedule.nights[0].units, 4);
}

/// Batches stay within `--max-freeze`: servers check in parallel, so big
/// databases share a freeze only when they are on different servers.
#[test]
fn batches_of_unused_databases_keep_the_freeze_budget() {
    // 300 GB checks in 600 s at 500 MB/s: a 660 s freeze; two on one server
    // would need 1,260 s, over the 900 s budget.
    let big = 300_000_000_000;
    let params = Params::default();
    let same_server = with_unused_databases(2, &[(1, big); 3]);
    let plan = Plan::build(&same_server, &params, &Quiet).unwrap();
    assert_eq!(database_only_units(&plan), [(1, 660.0); 3]);
    let spread = with_unused_databases(4, &[(1, big), (2, big), (3, big)]);
    let plan = Plan::build(&spread, &params, &Quiet).unwrap();
    assert_eq!(database_only_units(&plan), [(3, 660.0)]);
    // One too big to move even alone stays a unit of its own, impossible.
    let huge = with_unused_databases(2, &[(1, 1_000), (1, 1_000_000_000_000), (1, 1_000)]);
    let plan = Plan::build(&huge, &params, &Quiet).unwrap();
    let units = database_only_units(&plan);
    assert_eq!(units.len(), 3);
    assert_eq!(plan.schedule.impossible(), 1);
}

/// Issue 18: the rehearsal plans with `--constraints filer` and copies file
/// by file, but `filer` meant block mode (a freeze that counts no file): units
/// of 55,000 files froze for 9.6-10.9 s against 1.0 s predicted. The copy
/// mode is now its own choice and a file-mode freeze costs each file.
#[test]
fn filer_units_copied_by_files_count_their_files_in_the_freeze() {
    let inv = example();
    let blocks = Params::default();
    let files = Params {
        copy_mode: Some(CopyMode::Files),
        freeze_per_file: Some(parse_short_duration("50us").unwrap()),
        ..Params::default()
    };
    let a = Plan::build(&inv, &blocks, &Quiet).unwrap();
    let b = Plan::build(&inv, &files, &Quiet).unwrap();
    // The same units (the constraint decides them, not the copy mode)...
    assert_eq!(a.partition.stats().len(), b.partition.stats().len());
    for (x, y) in a.partition.stats().iter().zip(b.partition.stats()) {
        assert_eq!((x.sites, x.files, x.filers), (y.sites, y.files, y.filers));
        // ...block mode finds the changes for free, file mode pays each file.
        assert_eq!(x.find_s, 0.0);
        assert!((y.find_s - y.files as f64 * 50e-6).abs() < 1e-9, "{y:?}");
        assert!((y.pass_s - y.files as f64 / files.walk_rate).abs() < 1e-9);
    }
    // Asking for what the constraint implies changes nothing.
    let explicit = Params {
        copy_mode: Some(CopyMode::Blocks),
        ..Params::default()
    };
    let c = Plan::build(&inv, &explicit, &Quiet).unwrap();
    assert_eq!(a.partition.stats(), c.partition.stats());
}

#[test]
fn blocks_need_the_filer_constraint() {
    let p = Params {
        constraints: ferry_plan::Constraints::parse("declared-db").unwrap(),
        copy_mode: Some(CopyMode::Blocks),
        ..Params::default()
    };
    assert!(matches!(
        p.validate(),
        Err(ferry_plan::ParamError::BlocksWithoutFiler)
    ));
}

/// Issue 18: a pre-copy was predicted as bytes over the link only, while a
/// file-mode pre-copy took about 1 s + 1 ms a file in the rehearsal. Its
/// model is now `--precopy-overhead` + files x `--precopy-per-file` + bytes
/// / bandwidth, and the nights budget that much of the link.
#[test]
fn precopy_counts_a_fixed_cost_and_each_file() {
    let inv = example();
    let bytes_only = Params {
        copy_mode: Some(CopyMode::Files),
        ..Params::default()
    };
    let (overhead, per_file) = (2.0, parse_short_duration("1ms").unwrap());
    let with = Params {
        precopy_overhead: overhead,
        precopy_per_file: per_file,
        ..bytes_only
    };
    let a = Plan::build(&inv, &bytes_only, &Quiet).unwrap();
    let b = Plan::build(&inv, &with, &Quiet).unwrap();
    let bw = with.bandwidth;
    for (x, y) in a.partition.stats().iter().zip(b.partition.stats()) {
        // Without the flags: the bytes over the link, as before.
        assert_eq!(x.precopy_s(&bytes_only), x.precopy_bytes() as f64 / bw);
        assert_eq!(x.precopy_link_bytes(&bytes_only), x.precopy_bytes() as f64);
        let expected = overhead + y.files as f64 * per_file + y.precopy_bytes() as f64 / bw;
        assert!((y.precopy_s(&with) - expected).abs() < 1e-9, "{y:?}");
        assert!((y.precopy_link_bytes(&with) - bw * expected).abs() < 1e-3);
        // The freeze does not change.
        assert_eq!(x.freeze_s, y.freeze_s);
    }
    // Night 1 needs every unit's pre-copy on the link: bandwidth x precopy_s.
    let needed: f64 = b
        .partition
        .stats()
        .iter()
        .map(|s| bw * s.precopy_s(&with))
        .sum();
    assert_eq!(b.schedule.nights.len(), 1);
    assert!((b.schedule.nights[0].link_bytes_needed - needed).abs() < 1.0);
}

/// Block mode copies volumes, not files: only the fixed cost is added.
#[test]
fn block_mode_precopy_pays_no_per_file_cost() {
    let inv = example();
    let p = Params {
        precopy_overhead: 3.0,
        precopy_per_file: 0.01,
        ..Params::default()
    };
    let plan = Plan::build(&inv, &p, &Quiet).unwrap();
    for s in plan.partition.stats() {
        assert_eq!(s.precopy_files_s, 0.0);
        let expected = 3.0 + s.precopy_bytes() as f64 / p.bandwidth;
        assert!((s.precopy_s(&p) - expected).abs() < 1e-9);
    }
}

/// A night opens when the link has carried the pre-copy: with the lead just
/// long enough for the bytes alone, the pre-copy's fixed and per-file costs
/// push units to a later night.
#[test]
fn a_longer_precopy_moves_units_to_a_later_night() {
    let inv = example();
    let files = Params {
        copy_mode: Some(CopyMode::Files),
        ..Params::default()
    };
    let plan = Plan::build(&inv, &files, &Quiet).unwrap();
    let bytes: f64 = plan
        .partition
        .stats()
        .iter()
        .map(|s| s.precopy_bytes() as f64)
        .sum();
    // Night 1 opens when the bytes are across, and not a second later.
    let lead = bytes / files.bandwidth + 1.0;
    let bytes_only = Params { lead, ..files };
    let a = Plan::build(&inv, &bytes_only, &Quiet).unwrap();
    assert_eq!(a.schedule.nights.len(), 1);
    let with = Params {
        precopy_overhead: 60.0,
        precopy_per_file: 0.001,
        ..bytes_only
    };
    let b = Plan::build(&inv, &with, &Quiet).unwrap();
    // 3 units x 60 s alone exceed the second left: not all in night 1.
    assert!(b.schedule.nights.len() > 1, "{:?}", b.schedule.nights);
    for n in &b.schedule.nights {
        assert!(n.link_bytes_needed <= n.link_bytes_available, "{n:?}");
    }
    assert_eq!(b.schedule.unscheduled(), 0);
}

#[test]
fn negative_precopy_terms_are_refused() {
    for p in [
        Params {
            precopy_overhead: -1.0,
            ..Params::default()
        },
        Params {
            precopy_per_file: f64::NAN,
            ..Params::default()
        },
    ] {
        assert!(p.validate().is_err(), "{p:?}");
    }
}
