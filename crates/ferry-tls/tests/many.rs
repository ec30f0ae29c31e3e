//! A directory of 10,000 certificates: opening it parses no key, the index
//! stays small per certificate, the key cache stays within its bound, and
//! every kind of name still finds its certificate. Prints the open time and
//! the index size (the 100,000 measurement is `bench/tls-vs-haproxy/many-certs.sh`).

mod support;

use std::time::Instant;

use ferry_tls::{CertStore, StoreOptions};

#[test]
fn ten_thousand_certificates_open_small_and_lazy() {
    let dir = tempfile::tempdir().unwrap();
    let count = 10_000;
    let t = Instant::now();
    support::bulk::write_certs(dir.path(), count).unwrap();
    let generated = t.elapsed();

    let t = Instant::now();
    let store = CertStore::open(&StoreOptions {
        dir: dir.path().to_path_buf(),
        default_cert: Some("default".into()),
        key_cache: 100,
    })
    .unwrap();
    let opened = t.elapsed();
    let stats = store.stats();
    println!(
        "{count} certificates: generated in {generated:?}, opened in {opened:?}, index {} bytes ({} per certificate)",
        stats.index_bytes,
        stats.index_bytes / count
    );
    assert_eq!(stats.certificates, count + 1);
    assert_eq!(stats.key_loads, 0, "opening parses no key");
    assert!(
        stats.index_bytes / count < 400,
        "index of {} bytes per certificate",
        stats.index_bytes / count
    );

    let name_of = |sni: &str| {
        let key = store.key_for(Some(sni)).expect("a certificate");
        let ee = webpki::EndEntityCert::try_from(&key.cert[0]).unwrap();
        let first = ee.valid_dns_names().next().unwrap().to_string();
        first
    };
    for n in (0..count).step_by(37) {
        assert_eq!(
            name_of(&format!("site-{n}.bench.test")),
            format!("site-{n}.bench.test")
        );
    }
    assert_eq!(name_of("www.site-9990.bench.test"), "site-9990.bench.test");
    assert_eq!(name_of("www.site-9991.bench.test"), "default.bench.test");
    let stats = store.stats();
    assert!(stats.cached_keys <= 100, "{stats:?}");
    assert_eq!(stats.key_load_failures, 0);
}
