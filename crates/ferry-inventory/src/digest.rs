//! A fast 64-bit content digest, stable across platforms and releases (unlike
//! std's `DefaultHasher`), so a plan can record which inventory it came from and
//! the orchestrator can refuse a plan made from other data. Not cryptographic: it
//! detects change, it does not resist forgery.

/// Streaming digest: feeding the same bytes in any chunking gives the same value.
#[derive(Debug, Clone)]
pub struct Digest {
    h: u64,
    buf: [u8; 8],
    pending: usize,
    len: u64,
}

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Default for Digest {
    fn default() -> Digest {
        Digest {
            h: 0x243F_6A88_85A3_08D3,
            buf: [0; 8],
            pending: 0,
            len: 0,
        }
    }
}

impl Digest {
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(K).rotate_left(29);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.pending > 0 {
            let take = (8 - self.pending).min(data.len());
            self.buf[self.pending..self.pending + take].copy_from_slice(&data[..take]);
            self.pending += take;
            data = &data[take..];
            if self.pending < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.buf));
            self.pending = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.pending = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut d = self.clone();
        if d.pending > 0 {
            let mut w = [0u8; 8];
            w[..d.pending].copy_from_slice(&d.buf[..d.pending]);
            d.word(u64::from_le_bytes(w));
        }
        // murmur3's finaliser, so the length and last word affect every bit.
        let mut x = d.h ^ d.len;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_the_digest() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = Digest::default();
        whole.update(&data);
        for step in [1, 3, 7, 8, 9, 64, 999] {
            let mut d = Digest::default();
            for c in data.chunks(step) {
                d.update(c);
            }
            assert_eq!(d.finish(), whole.finish(), "step {step}");
        }
    }

    #[test]
    fn content_and_length_matter() {
        let digest = |b: &[u8]| {
            let mut d = Digest::default();
            d.update(b);
            d.finish()
        };
        assert_ne!(digest(b"a"), digest(b"b"));
        assert_ne!(digest(b"a"), digest(b"a\0"));
        assert_ne!(digest(b""), digest(b"\0"));
    }
}
