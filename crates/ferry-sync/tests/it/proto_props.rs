//! Property tests of the frame decoder: arbitrary bytes never panic it, and
//! every message it accepts re-encodes to the same bytes.

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
