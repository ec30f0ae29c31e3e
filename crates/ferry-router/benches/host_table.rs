//! The host table's hot paths on a table of 1,000,000 generated sites: lookups of an
//! exact host, a host under a wildcard and an unknown host, and `apply` of one
//! site's flip between two placements.
//!
//! `cargo bench -p ferry-router --bench host_table`

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ferry_model::Placement;
use ferry_router::HostTable;

#[allow(dead_code)] // Shared with examples/host_table_load.rs, which uses other parts.
#[path = "../examples/support/sites.rs"]
mod sites;

const SITES: u64 = 1_000_000;

fn loaded_table() -> HostTable {
    let table = HostTable::new();
    let mut start = 0;
    while start < SITES {
        let end = (start + 100_000).min(SITES);
        let batch = (start..end)
            .map(|i| sites::site_change(i, sites::placement(i), 1))
            .collect();
        // A generated name is never refused: each index gives a distinct valid name.
        table
            .apply(batch, |_| Ok::<(), Infallible>(()))
            .expect("generated sites load");
        start = end;
    }
    table
}

/// The first site from the middle of the table whose wildcard-ness is `wildcard`.
fn site_from_middle(wildcard: bool) -> u64 {
    (SITES / 2..SITES)
        .find(|&i| sites::is_wildcard(i) == wildcard)
        .expect("a million generated sites include both kinds")
}

fn host_table(c: &mut Criterion) {
    let table = loaded_table();
    let exact = sites::request_host(site_from_middle(false));
    let below_wildcard = sites::request_host(site_from_middle(true));
    let unknown = "www.no-such-site.example.com";
    assert!(table.lookup(&exact).is_some() && table.lookup(&below_wildcard).is_some());
    assert!(table.lookup(unknown).is_none());

    let mut group = c.benchmark_group("host_table_1m");
    group.bench_function("lookup_exact", |b| {
        b.iter(|| table.lookup(black_box(&exact)))
    });
    group.bench_function("lookup_wildcard", |b| {
        b.iter(|| table.lookup(black_box(&below_wildcard)))
    });
    group.bench_function("lookup_miss", |b| {
        b.iter(|| table.lookup(black_box(unknown)))
    });

    let site = site_from_middle(false);
    let placements = [
        Placement::Pool("blue".into()),
        Placement::Pool("green".into()),
    ];
    let mut epoch = 1;
    group.bench_function("apply_one_flip", |b| {
        b.iter(|| {
            epoch += 1;
            let placement = placements[(epoch % 2) as usize].clone();
            let change = sites::site_change(site, placement, epoch);
            table
                .apply(vec![change], |_| Ok::<(), Infallible>(()))
                .expect("a greater epoch always applies")
        })
    });
    group.finish();
}

criterion_group!(benches, host_table);
criterion_main!(benches);
