//! The handshake's proofs of the pre-shared key, and the key itself.

use crate::error::Result;

/// The MAC a side proves knowledge of the key with. `role` separates the two
/// directions so one side's answer can never be replayed as the other's.
pub fn auth_mac(key: &[u8; 32], role: &str, a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"ferry-sync auth v1 ");
    h.update(role.as_bytes());
    h.update(a);
    h.update(b);
    *h.finalize().as_bytes()
}

/// Derives the 32-byte MAC key from the configured pre-shared key text.
pub fn derive_key(psk: &str) -> [u8; 32] {
    blake3::derive_key("ferry-sync 2025 pre-shared key v1", psk.as_bytes())
}

/// Reads a pre-shared key from `path` under ferry-secret's rule (readable
/// by its owner only, trimmed, not empty) and derives the MAC key; `what`
/// names the setting in errors.
pub fn read_key_file(what: &str, path: &std::path::Path) -> Result<[u8; 32]> {
    let psk = ferry_secret::read_file(what, path)?;
    Ok(derive_key(psk.expose()))
}

/// Constant-time equality of two MACs (fixed length: nothing to leak).
pub fn mac_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}
