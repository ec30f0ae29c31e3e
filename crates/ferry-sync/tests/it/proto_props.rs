//! Property tests of the frame decoder: arbitrary bytes never panic it, and
//! every message it accepts re-encodes to the same bytes; the handshake's
//! frame limit holds for any stream; block sizes out of range never pass.
//! The same properties run unbounded in the cargo-fuzz target
//! `fuzz/fuzz_targets/sync_frame.rs`.

use ferry_sync::delta::{Chunk, Signature};
use ferry_sync::proto::{self, Msg};
use ferry_sync::{Basis, Entry, Kind, Meta, Mtime, Op, RelPath};
use proptest::prelude::*;

fn arb_path() -> impl Strategy<Value = RelPath> {
    proptest::collection::vec(
        proptest::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..12,
        ),
        1..4,
    )
    .prop_filter_map("valid path", |parts| RelPath::new(parts.join(&b'/')).ok())
}

fn arb_meta() -> impl Strategy<Value = Meta> {
    (
        0u32..0o7777,
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
    )
        .prop_map(|(mode, uid, gid, secs, nanos)| Meta {
            mode,
            uid,
            gid,
            mtime: Mtime { secs, nanos },
        })
}

fn arb_msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Msg::Hello { nonce }),
        (
            arb_path(),
            arb_meta(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(path, meta, data)| Msg::Op(Op::PutFile { path, meta, data })),
        (arb_path(), arb_meta()).prop_map(|(path, meta)| Msg::Op(Op::Begin {
            path,
            meta,
            basis: Basis::Partial
        })),
        (arb_path(), arb_path()).prop_map(|(path, to)| Msg::Op(Op::Hardlink { path, to })),
        proptest::collection::vec(arb_path(), 0..8).prop_map(Msg::ChangedPart),
        proptest::collection::vec(arb_path(), 0..8).prop_map(Msg::ScanPathsPart),
        proptest::option::of("[a-z ]{0,20}").prop_map(|full| Msg::ChangesEnd { full }),
        any::<bool>().prop_map(|checksum| Msg::ScanPathsReq { checksum }),
        Just(Msg::SpaceReq),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| {
            Msg::Space(proto::Space {
                bytes_free: a.min(b),
                bytes_total: a.max(b),
                inodes_free: c.min(d),
                inodes_total: c.max(d),
            })
        }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Msg::FileData),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|d| Msg::Chunk(Chunk::Data(d))),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(offset, data)| Msg::Op(Op::Block { offset, data })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(offset, len)| Msg::Chunk(Chunk::Copy { offset, len })),
        (arb_path(), arb_meta(), any::<u64>()).prop_map(|(path, meta, size)| Msg::Entry(Entry {
            path,
            kind: Kind::File,
            meta,
            size,
            target: None,
            hash: Some([3; 32]),
            dev: 1,
            ino: 2,
            nlink: 1,
        })),
        (arb_path(), proptest::collection::vec(any::<u32>(), 0..20)).prop_map(|(path, weak)| {
            let strong = weak.iter().map(|w| [*w as u8; 16]).collect();
            Msg::ReadReq {
                path,
                sig: Some(Signature {
                    block_size: 2048,
                    len: 99,
                    weak,
                    strong,
                }),
            }
        }),
    ]
}

/// `m`'s frame body (no length prefix) with bytes overwritten at `flips`.
fn mutated_body(m: &Msg, flips: &[(usize, u8)]) -> Vec<u8> {
    let mut body = proto::encode(m)[4..].to_vec();
    for &(i, b) in flips {
        let n = body.len();
        body[i % n] = b;
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = proto::decode(&body);
    }

    #[test]
    fn decoder_never_panics_on_mutated_valid_frames(m in arb_msg(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
        let body = mutated_body(&m, &flips);
        let _ = proto::decode(&body);
        let n = body.len();
        let _ = proto::decode(&body[..cut % (n + 1)]);
    }

    #[test]
    fn read_msg_never_panics_on_arbitrary_streams(stream in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut r = &stream[..];
        for _ in 0..8 {
            match proto::read_msg(&mut r) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn valid_messages_round_trip(m in arb_msg()) {
        let frame = proto::encode(&m);
        let back = proto::decode(&frame[4..]).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(proto::encode(&back), frame.clone());
        // The stream path: written in parts, read head and payload apart.
        let mut wire = Vec::new();
        proto::write_msg(&mut wire, &m).unwrap();
        prop_assert_eq!(&wire, &frame);
        let mut r = &wire[..];
        prop_assert_eq!(proto::read_msg(&mut r).unwrap().unwrap().unwrap(), m);
        prop_assert!(r.is_empty());
    }

    /// A frame read from a stream (payloads read apart from their head)
    /// decodes exactly as the whole frame does, valid or not, and the stream
    /// stays in step: the message after it is read whole.
    #[test]
    fn read_msg_agrees_with_decode(m in arb_msg(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>()) {
        let mut body = mutated_body(&m, &flips);
        let n = body.len();
        body.truncate(cut % (n + 1));
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        wire.extend(proto::encode(&Msg::Ok));
        let mut r = &wire[..];
        let read = proto::read_msg(&mut r).unwrap().unwrap();
        match (read, proto::decode(&body)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "read_msg {:?} but decode {:?}", a, b),
        }
        prop_assert_eq!(proto::read_msg(&mut r).unwrap().unwrap().unwrap(), Msg::Ok);
    }
}

/// Strings decoded lossily (a message for people): not re-encoded byte for
/// byte when the bytes were not UTF-8.
fn lossy(m: &Msg) -> bool {
    matches!(
        m,
        Msg::Error { .. } | Msg::ChangesEnd { full: Some(_) } | Msg::WatchFull { .. }
    )
}

/// The bounds a decoded message must respect whatever the bytes were.
fn within_bounds(m: &Msg) -> bool {
    let block = |bs: u32| {
        bs.is_power_of_two() && (proto::MIN_BLOCK_SIZE..=proto::MAX_BLOCK_SIZE).contains(&bs)
    };
    match m {
        Msg::BlockHashesReq { block_size }
        | Msg::ReadBlockReq { block_size, .. }
        | Msg::BlockPrepare { block_size, .. }
        | Msg::BlockFinish { block_size, .. } => block(*block_size),
        Msg::SigReq { block_size, .. } => *block_size <= proto::MAX_DELTA_BLOCK,
        Msg::ReadReq { sig: Some(s), .. } | Msg::Sig(Some(s)) => {
            s.block_size <= proto::MAX_DELTA_BLOCK
        }
        Msg::Space(s) => s.bytes_free <= s.bytes_total && s.inodes_free <= s.inodes_total,
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Bodies with the right version and any type byte reach every branch
    /// of the decoder: what it accepts is within bounds and canonical.
    #[test]
    fn decoded_frames_are_within_bounds_and_canonical(ty in any::<u8>(), rest in prop_oneof![proptest::collection::vec(any::<u8>(), 0..24), proptest::collection::vec(any::<u8>(), 0..300)]) {
        // Short tails are what most fixed-size messages need exactly.
        let body = [&[proto::VERSION, ty][..], &rest].concat();
        if let Ok(m) = proto::decode(&body) {
            prop_assert!(within_bounds(&m), "{:?}", m);
            if !lossy(&m) {
                prop_assert_eq!(&proto::encode(&m)[4..], &body[..]);
            }
        }
    }

    /// Before authentication a frame is read only if its declared length is
    /// within the handshake limit: otherwise only the 4 length bytes are
    /// taken (nothing reserved for the rest), and within it the answer is
    /// the ordinary reader's.
    #[test]
    fn the_handshake_limit_holds_for_any_stream(len in 0u32..2048, rest in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let wire = [&len.to_be_bytes()[..], &rest].concat();
        let mut limited = &wire[..];
        let got = proto::read_msg_max(&mut limited, proto::MAX_HANDSHAKE_FRAME);
        let taken = wire.len() - limited.len();
        if len as usize > proto::MAX_HANDSHAKE_FRAME {
            prop_assert!(matches!(got, Ok(Some(Err(_)))), "{:?}", got);
            prop_assert_eq!(taken, 4);
        } else {
            prop_assert!(taken <= 4 + proto::MAX_HANDSHAKE_FRAME);
            let mut plain = &wire[..];
            let want = proto::read_msg(&mut plain);
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }
}

#[test]
fn block_sizes_out_of_range_are_refused_by_the_decoder() {
    for bs in [0, 2048, 4097, 16 << 20, u32::MAX] {
        let m = Msg::BlockHashesReq { block_size: bs };
        let e = proto::decode(&proto::encode(&m)[4..]).unwrap_err();
        assert!(e.to_string().contains("block size"), "{bs}: {e}");
    }
    for bs in [proto::MIN_BLOCK_SIZE, 65536, proto::MAX_BLOCK_SIZE] {
        let m = Msg::BlockHashesReq { block_size: bs };
        assert_eq!(proto::decode(&proto::encode(&m)[4..]).unwrap(), m);
    }
    let sig = Msg::SigReq {
        path: RelPath::new(&b"f"[..]).unwrap(),
        basis: Basis::Target,
        block_size: proto::MAX_DELTA_BLOCK + 1,
    };
    assert!(proto::decode(&proto::encode(&sig)[4..]).is_err());
}

proptest! {
    /// A `Space` answer with more free than total (bytes or inodes) is
    /// refused, whatever the numbers.
    #[test]
    fn space_with_more_free_than_total_is_refused(total in any::<u64>(), over in 1u64.., inodes in any::<bool>()) {
        let free = total.saturating_add(over);
        prop_assume!(free > total);
        let s = if inodes {
            proto::Space { bytes_free: 0, bytes_total: 0, inodes_free: free, inodes_total: total }
        } else {
            proto::Space { bytes_free: free, bytes_total: total, inodes_free: 0, inodes_total: 0 }
        };
        let e = proto::decode(&proto::encode(&Msg::Space(s))[4..]).unwrap_err();
        prop_assert!(e.to_string().contains("exceeds the total"), "{}", e);
    }
}

#[test]
fn unknown_version_and_type_are_refused() {
    let e = proto::decode(&[9, 5]).unwrap_err();
    assert!(e.to_string().contains("version 9"), "{e}");
    let e = proto::decode(&[proto::VERSION, 250]).unwrap_err();
    assert!(e.to_string().contains("unknown message type"), "{e}");
    let e = proto::decode(&[proto::VERSION, 5, 0]).unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");
}

#[test]
fn huge_declared_counts_do_not_allocate() {
    // A signature claiming 4 billion blocks in a 20-byte frame.
    let mut b = vec![proto::VERSION, 31, 1];
    b.extend_from_slice(&2048u32.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(proto::decode(&b).is_err());
}

/// Version 1 frames as first shipped: decoding them must keep working.
#[test]
fn version_1_fixture_frames_still_decode() {
    let hello = [&[0u8, 0, 0, 34, 1, 1][..], &[0xab; 32]].concat();
    let mut r = &hello[..];
    assert_eq!(
        proto::read_msg(&mut r).unwrap().unwrap().unwrap(),
        Msg::Hello { nonce: [0xab; 32] }
    );
    // Mkdir "a/b".
    let mkdir = [0u8, 0, 0, 9, 1, 32, 0, 0, 0, 3, b'a', b'/', b'b'];
    let mut r = &mkdir[..];
    assert_eq!(
        proto::read_msg(&mut r).unwrap().unwrap().unwrap(),
        Msg::Op(Op::Mkdir {
            path: RelPath::new(&b"a/b"[..]).unwrap()
        })
    );
}

/// A path list frame that claims more paths than its bytes can hold is
/// refused before anything is allocated for them.
#[test]
fn a_path_list_longer_than_its_frame_is_refused() {
    let frame = [0u8, 0, 0, 7, 1, 46, 0xff, 0xff, 0xff, 0xff, 0];
    let mut r = &frame[..];
    assert!(proto::read_msg(&mut r).unwrap().unwrap().is_err());
    // And a bad path inside a list is refused like anywhere else.
    let frame = [0u8, 0, 0, 12, 1, 49, 0, 0, 0, 1, 0, 0, 0, 2, b'.', b'.'];
    let mut r = &frame[..];
    assert!(proto::read_msg(&mut r).unwrap().unwrap().is_err());
}
