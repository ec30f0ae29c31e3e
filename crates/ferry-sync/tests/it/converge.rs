//! Converging passes while a writer keeps changing the source.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_sync::{converge, ConvergeOptions, Event, LocalTree, Mode, SyncOptions};

use crate::support::*;

/// Rewrites `files` files of `size` bytes in a loop (atomically: temp + rename,
/// as an editor would), sleeping `pause` between files, until stopped.
fn writer(
    dir: PathBuf,
    files: usize,
    size: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let i = (n as usize) % files;
            let tmp = dir.join(format!(".w{i}"));
            fs::write(&tmp, bytes(n, size)).unwrap();
            fs::rename(&tmp, dir.join(format!("hot{i}"))).unwrap();
            n += 1;
            std::thread::sleep(pause);
        }
        n
    })
}

fn seed(src: &Path) {
    fs::create_dir_all(src.join("static")).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("static/s{i}")), bytes(i, 4096)).unwrap();
    }
}

#[test]
fn slow_writer_below_link_rate_converges_ready() {
    let _heavy = exclusive();
    let t = tmp();
    let (src, dst) = dirs(&t);
    seed(&src);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        src.clone(),
        3,
        4096,
        Duration::from_millis(50),
        stop.clone(),
    );
    let o = SyncOptions {
        delete: true,
        bwlimit: Some(4 * 1024 * 1024),
        ..Default::default()
    };
    let events = std::sync::Mutex::new(Vec::new());
    let on = |e: &Event| events.lock().unwrap().push(e.clone());
    let c = converge(
        &LocalTree::new(&src),
        &LocalTree::new(&dst),
        &o,
        Mode::File,
        &ConvergeOptions {
            max_freeze: Duration::from_millis(500),
            max_passes: 10,
        },
        &on,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(c.ready, "{}", c.reason);
    assert!(c.reason.starts_with("ready"), "{}", c.reason);
    let last = c.passes.last().unwrap();
    assert!(last.predicted_final_secs <= 0.5);
    let ev = events.lock().unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::PassFinished { .. })));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Converged { ready: true, .. })));
}

#[test]
fn fast_writer_above_link_rate_is_reported_not_converging() {
    let _heavy = exclusive();
    let t = tmp();
    let (src, dst) = dirs(&t);
    seed(&src);
    let stop = Arc::new(AtomicBool::new(false));
    // 20 files of 64 KiB rewritten every few milliseconds: every pass finds
    // all of them changed again, and the link (1 MiB/s) needs ~1.3 s for them.
    let w = writer(
        src.clone(),
        20,
        64 * 1024,
        Duration::from_millis(2),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(100));
    let o = SyncOptions {
        delete: true,
        bwlimit: Some(2 * 1024 * 1024),
        ..Default::default()
    };
    let c = converge(
        &LocalTree::new(&src),
        &LocalTree::new(&dst),
        &o,
        Mode::File,
        &ConvergeOptions {
            max_freeze: Duration::from_millis(100),
            max_passes: 8,
        },
        &no_events(),
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(!c.ready, "{}", c.reason);
    assert!(c.reason.starts_with("not converging"), "{}", c.reason);
    assert!(c.reason.contains("R="), "{}", c.reason);
    assert!(c.passes.len() <= 8);
}
