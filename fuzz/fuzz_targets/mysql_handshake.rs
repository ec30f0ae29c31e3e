//! Fuzz target: the database tunnel's login observer must never panic, and
//! its verdict must not depend on how the bytes were cut into reads.

#![no_main]

use ferry_proxy::observe_in_chunks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: the read size; second: where the client's bytes end and
    // the server's begin.
    let [knob, split, rest @ ..] = data else {
        return;
    };
    let split = usize::from(*split).min(rest.len());
    let (client, server) = rest.split_at(split);
    let whole = observe_in_chunks(client, server, usize::MAX);
    let cut = observe_in_chunks(client, server, usize::from(*knob) + 1);
    assert_eq!(whole, cut, "the verdict depends on how the bytes were read");
});
