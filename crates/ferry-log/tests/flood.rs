//! A flood from one log statement through the real subscriber: at most the
//! burst per second reaches the file, the rest is counted and summarised.

use std::time::{Duration, Instant};

#[test]
fn a_flooding_statement_is_limited_counted_and_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.log");
    let guard = ferry_log::init(&ferry_log::Options {
        filter: "info".into(),
        format: ferry_log::Format::Text,
        rate: 5,
        file: Some(path.clone()),
        max_size: 1 << 20,
        keep: 1,
    })
    .unwrap();
    let start = Instant::now();
    for i in 0..10_000 {
        tracing::warn!(peer = i, "connection from a hostile peer failed");
    }
    let elapsed = start.elapsed();
    // Every second of the flood may write its burst of 5.
    let allowed = 5 * (elapsed.as_secs() as usize + 2);
    let end = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("suppressed") {
            break text;
        }
        assert!(Instant::now() < end, "no summary line in 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let flood = text.matches("hostile peer failed").count();
    assert!(
        flood >= 5 && flood <= allowed,
        "{flood} flood lines written:\n{text}"
    );
    let (suppressed, _) = ferry_log::counters();
    assert!(
        suppressed as usize >= 10_000 - allowed,
        "suppressed {suppressed}"
    );
    assert!(text.contains("suppressed="), "{text}");
    drop(guard);
}
