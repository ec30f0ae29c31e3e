//! Fuzz target: the passthrough listener's ClientHello reader must never panic
//! and must give the same answer however the bytes are cut into reads.

#![no_main]

use ferry_proxy::{Hello, HelloParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size limit and a cut point, so both the bound
    // and the incremental path are explored.
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    let limit = 64 + usize::from(knob) * 64;
    let whole = HelloParser::new(limit).parse(bytes);

    let cut = usize::from(knob) % (bytes.len() + 1);
    let mut parser = HelloParser::new(limit);
    let first = parser.parse(&bytes[..cut]);
    let in_two = if first == Hello::NeedMore {
        parser.parse(bytes)
    } else {
        first
    };
    // Which limit check fires first may depend on the cut; the verdict may not.
    assert_eq!(
        class(&whole),
        class(&in_two),
        "the answer depends on how the bytes were read: {whole:?} / {in_two:?}"
    );
});

/// The verdict without the details of a refusal.
fn class(h: &Hello) -> Hello {
    match h {
        Hello::Invalid(_) => Hello::Invalid(ferry_proxy::HelloError::BadServerName),
        other => other.clone(),
    }
}
