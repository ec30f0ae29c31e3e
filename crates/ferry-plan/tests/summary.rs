//! `summary::text` and `summary::json` on the example inventory: every
//! section is there, and the two forms agree on the numbers they share.

use std::path::Path;

use ferry_inventory::Quiet;
use ferry_plan::{summary, Params, Plan};

#[test]
fn text_and_json_summaries_of_the_example_agree() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inventory");
    let inv = ferry_inventory::load_dir(&dir, &Quiet).unwrap();
    let plan = Plan::build(&inv, &Params::default(), &Quiet).unwrap();
    let written = Some((Path::new("out/plan.json"), 2048));

    let text = summary::text(&plan, Path::new("inv"), 3, written);
    let counts = format!(
        "Inventory   inv: {}\n",
        summary::inventory_counts(&inv.counts())
    );
    for section in [
        counts.as_str(),
        "Parameters  constraints ",
        "\nUnits       ",
        "Glue        ",
        "\nLargest units\n",
        "\nWhat each constraint costs\n",
        "\nNights      ",
        "\nPlan written to out/plan.json (",
    ] {
        assert!(text.contains(section), "{section:?} missing from:\n{text}");
    }
    let detailed = text.lines().filter(|l| l.starts_with("  U")).count();
    assert_eq!(detailed, 3.min(plan.partition.len()), "{text}");
    let stdout = summary::text(&plan, Path::new("inv"), 3, None);
    assert!(stdout.ends_with("\nPlan written to stdout\n"), "{stdout}");

    let json = summary::json(&plan, 3, written);
    assert_eq!(json["units"], plan.partition.len());
    assert_eq!(json["nights"], plan.schedule.nights.len());
    assert_eq!(json["plan_file"], "out/plan.json");
    assert_eq!(
        json["largest_units"].as_array().unwrap().len(),
        3.min(plan.partition.len())
    );
    assert_eq!(
        json["constraint_costs"].as_array().unwrap().len(),
        plan.scenarios.len()
    );
}
