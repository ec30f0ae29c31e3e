//! Deterministic, realistic-looking site names for the host table's benchmark
//! (`benches/host_table.rs`) and load test (`examples/host_table_load.rs`).
//!
//! Site `i` always gets the same name, so a caller can rebuild any name from its
//! index instead of keeping millions of strings around. Names are 15 to 35
//! characters; one site in 50 is a `*.` wildcard.

use ferry_model::{Epoch, Hostname, Placement, SiteRecord, SiteState};
use ferry_router::SiteChange;

const WORDS: [&str; 32] = [
    "atelier", "bakery", "blog", "boutique", "cabinet", "camping", "conseil", "cuisine", "design",
    "ecole", "garage", "garden", "hotel", "immo", "jardin", "library", "maison", "media", "music",
    "news", "optique", "pharma", "photo", "pizza", "sante", "shop", "sport", "studio", "tech",
    "travel", "vins", "voyage",
];
const TLDS: [&str; 8] = ["com", "fr", "net", "org", "de", "eu", "io", "co.uk"];

/// A cheap integer mix (splitmix64), so neighbouring sites get unrelated words.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The configured name of site `i`.
pub fn site_name(i: u64) -> String {
    let h = mix(i);
    let word = WORDS[(h % 32) as usize];
    let other = WORDS[((h >> 8) % 32) as usize];
    let tld = TLDS[((h >> 16) % 8) as usize];
    let name = match h % 50 {
        0 => format!("*.{word}-{other}{i}.{tld}"),
        1..=22 => format!("www.site{i}-{word}.{tld}"),
        23..=37 => format!("{word}-{other}{i}.{tld}"),
        _ => format!("shop.{word}-{i}.{tld}"),
    };
    if name.len() < 15 {
        // Only small indexes of exact sites fall short: "blog-news7.fr".
        return format!("www.{name}");
    }
    name
}

/// A host that a request to site `i` could carry (one below a wildcard's domain).
pub fn request_host(i: u64) -> String {
    let name = site_name(i);
    match name.strip_prefix("*.") {
        Some(domain) => format!("app.{domain}"),
        None => name,
    }
}

/// Whether site `i` is a wildcard.
pub fn is_wildcard(i: u64) -> bool {
    matches!(mix(i) % 50, 0)
}

/// One of 16 pools; sites mostly share few placements.
pub fn placement(i: u64) -> Placement {
    Placement::Pool(format!("web{}", i % 16))
}

/// The change that adds or moves site `i` to `placement` at `epoch`.
pub fn site_change(i: u64, placement: Placement, epoch: u64) -> SiteChange {
    SiteChange {
        record: SiteRecord {
            // The generator only produces valid names (checked by its test run).
            host: Hostname::parse(&site_name(i)).expect("generated name is valid"),
            placement,
            state: SiteState::Active,
            epoch: Epoch(epoch),
        },
        extras: None,
    }
}
