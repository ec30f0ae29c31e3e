//! The one-pass reader of the usual sites-file line (the general path in
//! `sites_file.rs` reads every other line, and names what is wrong).

use ferry_model::{SiteState, MAX_HOSTNAME_LEN};

use super::{parse_u64, Listed, Vocabulary};

/// What a byte can be in a line [`quick_line`] takes.
const OTHER: u8 = 0;
const NAME: u8 = 1;
const UPPER: u8 = 2;
const DOT: u8 = 3;
const BLANK: u8 = 4;
const END: u8 = 5;

const CLASS: [u8; 256] = {
    let mut class = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        class[b] = match b as u8 {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => NAME,
            b'A'..=b'Z' => UPPER,
            b'.' => DOT,
            b' ' | b'\t' => BLANK,
            b'\n' => END,
            _ => OTHER,
        };
        b += 1;
    }
    class
};

/// The most common line, read in one pass over its bytes: a host without
/// `*.`, trailing dots or blanks before it, then a placement, a state and an
/// epoch as [`fast_line`] takes them, ended by `\n` or the file's end. The
/// host is lowercased in place. Returns the site (its host at 0) and the
/// line's length without its `\n`; `None` for any other line, which the
/// general path then reads (and names, if it is wrong).
pub(super) fn quick_line(
    rest: &mut [u8],
    vocab: &Vocabulary,
    memo: &mut Memo,
) -> Option<(Listed, usize)> {
    let (mut i, mut label, mut upper) = (0, 0, false);
    loop {
        let class = CLASS[usize::from(*rest.get(i)?)];
        if class == NAME {
            i += 1;
            continue;
        }
        match class {
            UPPER => upper = true,
            DOT | BLANK => {
                // A label of 1-63 bytes not starting or ending with `-`.
                let name = &rest[label..i];
                let (&first, &last) = (name.first()?, name.last()?);
                if name.len() > 63 || first == b'-' || last == b'-' {
                    return None;
                }
                if class == BLANK {
                    break;
                }
                label = i + 1;
            }
            _ => return None,
        }
        i += 1;
    }
    let len = i;
    if len > MAX_HOSTNAME_LEN {
        return None;
    }
    let (site, at) = quick_fields(rest, len, vocab, memo)?;
    if upper {
        rest[..len].make_ascii_lowercase();
    }
    Some((site, at))
}

/// The fields after a [`quick_line`]'s host of `len` bytes.
fn quick_fields(
    rest: &[u8],
    len: usize,
    vocab: &Vocabulary,
    memo: &mut Memo,
) -> Option<(Listed, usize)> {
    let mut at = len;
    let placement = memo.find(word(rest, &mut at), vocab)?;
    let (mut state, mut epoch) = (SiteState::Active, 0);
    if !line_ends(rest, &mut at) {
        state = match word(rest, &mut at) {
            b"active" => SiteState::Active,
            b"maintenance" => SiteState::Maintenance,
            b"frozen" => SiteState::Frozen,
            _ => return None,
        };
        if !line_ends(rest, &mut at) {
            let digits = word(rest, &mut at);
            epoch = parse_u64(digits).filter(|_| !digits.is_empty())?;
            if !line_ends(rest, &mut at) {
                return None;
            }
        }
    }
    let site = Listed {
        start: 0,
        len: len as u8,
        state,
        placement,
        epoch,
    };
    Some((site, at))
}

/// Skips blanks from `at`; whether the line ends there (`\n` or the end,
/// where `at` then is).
fn line_ends(rest: &[u8], at: &mut usize) -> bool {
    while rest
        .get(*at)
        .is_some_and(|&b| CLASS[usize::from(b)] == BLANK)
    {
        *at += 1;
    }
    rest.get(*at).is_none_or(|&b| b == b'\n')
}

/// Skips blanks from `at`, then the word there (up to a blank, `\r`, `\n`
/// or the end; empty if at one).
fn word<'t>(rest: &'t [u8], at: &mut usize) -> &'t [u8] {
    while rest
        .get(*at)
        .is_some_and(|&b| CLASS[usize::from(b)] == BLANK)
    {
        *at += 1;
    }
    let start = *at;
    while rest
        .get(*at)
        .is_some_and(|&b| !matches!(CLASS[usize::from(b)], BLANK | END) && b != b'\r')
    {
        *at += 1;
    }
    &rest[start..*at]
}

/// The placements met last, by their text: a file names a few placements a
/// million times, and hashing the word and probing a table for each line
/// cost as much as the rest of the line. Direct-mapped; words of up to 16
/// bytes (longer ones ask the vocabulary every time).
pub(super) struct Memo {
    slots: Box<[(u128, u8, u16)]>,
}

impl Default for Memo {
    fn default() -> Memo {
        // Length 0 marks an empty slot (an empty word is never looked up).
        Memo {
            slots: vec![(0, 0, 0); 256].into_boxed_slice(),
        }
    }
}

impl Memo {
    fn find(&mut self, word: &[u8], vocab: &Vocabulary) -> Option<u16> {
        let len = match u8::try_from(word.len()) {
            Ok(len @ 1..=16) => len,
            _ => return vocab.find(word),
        };
        let mut bytes = [0u8; 16];
        bytes[..word.len()].copy_from_slice(word);
        let key = u128::from_le_bytes(bytes);
        let fold =
            (key as u64 ^ (key >> 64) as u64 ^ u64::from(len)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = &mut self.slots[(fold >> 56) as usize];
        if slot.0 == key && slot.1 == len {
            return Some(slot.2);
        }
        let found = vocab.find(word)?;
        *slot = (key, len, found);
        Some(found)
    }
}
