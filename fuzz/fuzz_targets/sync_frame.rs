//! Fuzz target: the sync protocol's frame reader (ferry-sync `proto`) must
//! never panic, must refuse before reading any frame longer than the limit
//! it is given (the agent reads the handshake with 512 bytes), and must
//! answer as the whole-frame decoder does however the frame is read.

#![no_main]

use ferry_sync::proto::{self, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit: the handshake's or the session's.
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let max = if knob & 1 == 0 {
        proto::MAX_HANDSHAKE_FRAME
    } else {
        proto::MAX_FRAME
    };
    let mut r = stream;
    let got = proto::read_msg_max(&mut r, max);
    let taken = stream.len() - r.len();
    assert!(taken <= 4 + max, "read {taken} bytes past a limit of {max}");
    let Some(len) = stream.get(..4) else { return };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > max {
        assert!(matches!(got, Ok(Some(Err(_)))), "{got:?}");
        assert_eq!(taken, 4);
        return;
    }
    // A whole frame: the stream reader and the decoder agree, and what is
    // accepted is re-encoded to the same bytes (people's messages aside,
    // decoded lossily).
    if let Some(body) = stream.get(4..4 + len) {
        let whole = proto::decode(body);
        match (&got, &whole) {
            (Ok(Some(Ok(a))), Ok(b)) => assert_eq!(a, b),
            (Ok(Some(Err(_))), Err(_)) => {}
            other => panic!("read_msg and decode disagree: {other:?}"),
        }
        if let Ok(m) = whole {
            // A free-space answer never claims more free than total.
            if let Msg::Space(s) = &m {
                assert!(
                    s.bytes_free <= s.bytes_total && s.inodes_free <= s.inodes_total,
                    "{s:?}"
                );
            }
            let lossy = matches!(
                m,
                Msg::Error { .. } | Msg::ChangesEnd { full: Some(_) } | Msg::WatchFull { .. }
            );
            if !lossy {
                assert_eq!(&proto::encode(&m)[4..], body);
            }
        }
    }
});
