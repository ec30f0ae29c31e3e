//! Block mode: images copied as blocks, locally and through an agent.

use std::fs;
use std::os::unix::fs::FileExt;

use ferry_sync::{run_block_pass, verify_blocks, LocalTree, SyncOptions};

use crate::support::*;

const MIB: usize = 1024 * 1024;

fn change_blocks(path: &std::path::Path, blocks: &[u64]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    for &b in blocks {
        f.write_all_at(&bytes(1000 + b, 100), b * 65536 + 7)
            .unwrap();
    }
}

#[test]
fn block_mode_sends_only_changed_blocks_and_uses_the_digest() {
    let t = tmp();
    let src = t.path().join("src.img");
    let dst = t.path().join("dst.img");
    fs::write(&src, bytes(5, 16 * MIB + 1000)).unwrap();
    let (s, d) = (LocalTree::new(&src), LocalTree::new(&dst));
    let o = SyncOptions::default();
    let p1 = run_block_pass(&s, &d, &o, 1, &no_events()).unwrap();
    assert_eq!(p1.changed_entries, 257);
    assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
    assert!(t.path().join("dst.img.ferry-digest").exists());
    change_blocks(&src, &[0, 17, 100, 256]);
    let p2 = run_block_pass(&s, &d, &o, 2, &no_events()).unwrap();
    assert_eq!(p2.changed_entries, 4);
    assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
    let p3 = run_block_pass(&s, &d, &o, 3, &no_events()).unwrap();
    assert_eq!(p3.changed_entries, 0);
    let v = verify_blocks(&s, &d, 65536, 10).unwrap();
    assert!(v.equal());
    // A change made behind our back invalidates the digest (mtime moves).
    std::thread::sleep(std::time::Duration::from_millis(30));
    change_blocks(&dst, &[3]);
    let v = verify_blocks(&s, &d, 65536, 10).unwrap();
    assert_eq!(v.differing, vec![3]);
    let p4 = run_block_pass(&s, &d, &o, 4, &no_events()).unwrap();
    assert_eq!(p4.changed_entries, 1);
    assert!(verify_blocks(&s, &d, 65536, 10).unwrap().equal());
}

#[test]
fn block_mode_through_an_agent_counts_wire_bytes() {
    let t = tmp();
    let src = t.path().join("src.img");
    let dst = t.path().join("dst.img");
    fs::write(&src, bytes(6, 8 * MIB)).unwrap();
    let agent = Agent::start(&[("img", &dst, false)]);
    let remote = agent.connect("img", true);
    let s = LocalTree::new(&src);
    let o = SyncOptions::default();
    run_block_pass(&s, &remote, &o, 1, &no_events()).unwrap();
    change_blocks(&src, &[1, 2, 50]);
    let p = run_block_pass(&s, &remote, &o, 2, &no_events()).unwrap();
    assert_eq!(p.changed_entries, 3);
    // Three 64 KiB blocks plus 128 hashes of 32 bytes and framing.
    assert!(
        p.wire_sent + p.wire_received < 3 * 65536 + 128 * 32 + 4096,
        "{p:?}"
    );
    assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
    let v = verify_blocks(&s, &remote, 65536, 10).unwrap();
    assert!(v.equal());
}
