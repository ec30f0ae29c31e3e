//! Progress reporting without a UI dependency: the binary draws bars, tests and
//! libraries pass [`Quiet`].

/// Receives progress of long work. Methods may be called from several threads.
pub trait Progress: Sync {
    /// A new stage starts: `total` units of work (bytes or rows), 0 if unknown.
    fn begin(&self, _stage: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// The stage is over.
    fn end(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {}
