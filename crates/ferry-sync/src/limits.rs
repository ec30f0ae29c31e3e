//! The bounds every part of the replicator agrees on: what one frame may
//! hold, and the block sizes a request may ask for.
//!
//! A leaf module (it uses nothing of the crate): the wire protocol checks
//! frames against these, block mode and the delta check requests against
//! them, and none of those has to reach into another for a number.

/// Largest frame accepted (length field value).
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Largest frame accepted before the peer proved it knows the key: `Auth`
/// is 66 bytes and `Open` at most 263, so a stranger cannot make the agent
/// reserve more than this per connection (it reserved 8 MiB: #6 of issue 15).
pub const MAX_HANDSHAKE_FRAME: usize = 512;
/// Block sizes of block mode: powers of two in this range. The upper bound
/// keeps a block inside one `FileData` frame ([`MAX_DATA`]) and what the
/// agent reads per request small (a 16 MiB block size made hashing take
/// ~1 GiB: #7 of issue 15).
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 4 * 1024 * 1024;
/// Largest delta block size (a signature's, or asked in `SigReq`): the
/// reader of a basis holds one block at least. 8 MiB blocks cover files up
/// to ~1.6 TB at [`crate::delta::block_size_for`]'s 200,000 blocks.
pub const MAX_DELTA_BLOCK: u32 = 8 * 1024 * 1024;
/// Largest data payload in one frame (file pieces, blocks).
pub const MAX_DATA: usize = 4 * 1024 * 1024;
