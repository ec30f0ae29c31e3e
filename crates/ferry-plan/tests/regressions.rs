//! Regression tests named after the planner bugs they pin, on the example
//! inventory (`examples/inventory`).

use ferry_inventory::{Inventory, Quiet};
use ferry_plan::{parse_byte_rate, parse_change_rate, Params, Plan, Slot};

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
