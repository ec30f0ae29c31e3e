//! The allocator's calls that are not `GlobalAlloc`: [`release_freed`] gives
//! freed pages back to the system now. The `ferry` binary's global allocator
//! is mimalloc (`crates/ferry/src/main.rs`); this crate holds the workspace's
//! only `unsafe`, one foreign call, so every other crate keeps forbidding it.

/// Returns to the system the pages that freed memory left with mimalloc.
///
/// mimalloc gives freed pages back (`MADV_DONTNEED`) only once they have been
/// free for its purge delay (1 s), and only when a later allocation or free
/// looks; a router that has just loaded a million sites is idle then, so the
/// load's temporaries (the sites file's text and list, ~50 bytes a site)
/// stayed in its RSS. To be called after a bulk change only
/// (`ferry_proxy::set_release_freed`): a forced collection walks the calling
/// thread's pages and every arena, too much for a request's path.
///
/// Harmless when mimalloc is not the global allocator (it then has nothing to
/// give back).
pub fn release_freed() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` takes no pointer and only walks the allocator's
    // own structures (the calling thread's pages, then the arenas, which it
    // guards itself); mimalloc allows it from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_release_with_nothing_freed_is_harmless() {
        let kept: Vec<u8> = vec![1; 1 << 20];
        drop(vec![0u8; 4 << 20]);
        super::release_freed();
        super::release_freed();
        assert_eq!(kept.iter().map(|&b| usize::from(b)).sum::<usize>(), 1 << 20);
    }
}
