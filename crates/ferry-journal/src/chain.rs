//! The hash chain's hasher: fields fed to BLAKE3 so that no two field lists
//! hash alike (length prefixes), with the two encodings the persisted
//! journals use (prefixed and raw bytes, numbers as 8 little-endian bytes).

use rusqlite::types::Value;

/// One row's hash, built field by field.
pub struct Chain(blake3::Hasher);

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

impl Chain {
    pub fn new() -> Chain {
        Chain(blake3::Hasher::new())
    }

    /// A chain that starts with a length-prefixed label (the row's kind and version).
    pub fn labelled(label: &str) -> Chain {
        let mut c = Chain::new();
        c.bytes(label.as_bytes());
        c
    }

    /// Bytes without a length prefix (a fixed-size previous hash, a label).
    pub fn raw(&mut self, b: &[u8]) -> &mut Chain {
        self.0.update(b);
        self
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Chain {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    /// A number, 8 little-endian bytes.
    pub fn num(&mut self, n: u64) -> &mut Chain {
        self.0.update(&n.to_le_bytes());
        self
    }

    /// Absent (0) or present (1 then length-prefixed).
    pub fn opt(&mut self, s: Option<&str>) -> &mut Chain {
        match s {
            None => self.num(0),
            Some(s) => self.num(1).bytes(s.as_bytes()),
        }
    }

    /// A stored TEXT column, length-prefixed. A value of another type (an
    /// edited row) hashes as something no text does, so the row is refused.
    pub fn text(&mut self, v: &Value) -> &mut Chain {
        match v {
            Value::Text(s) => self.bytes(s.as_bytes()),
            other => self.foreign(other),
        }
    }

    /// A stored INTEGER column as a number.
    pub fn int(&mut self, v: &Value) -> &mut Chain {
        match v {
            Value::Integer(i) => self.num(*i as u64),
            other => self.foreign(other),
        }
    }

    /// A stored nullable TEXT column, as [`Chain::opt`].
    pub fn opt_text(&mut self, v: &Value) -> &mut Chain {
        match v {
            Value::Null => self.opt(None),
            Value::Text(s) => self.opt(Some(s)),
            other => self.foreign(other),
        }
    }

    /// A stored nullable INTEGER column, hashed as its decimal text through
    /// [`Chain::opt`].
    pub fn opt_int_text(&mut self, v: &Value) -> &mut Chain {
        match v {
            Value::Null => self.opt(None),
            Value::Integer(i) => self.opt(Some(&i.to_string())),
            other => self.foreign(other),
        }
    }

    /// A stored INTEGER column as length-prefixed 8 little-endian bytes.
    pub fn int_bytes(&mut self, v: &Value) -> &mut Chain {
        match v {
            Value::Integer(i) => self.bytes(&(*i as u64).to_le_bytes()),
            other => self.foreign(other),
        }
    }

    /// A stored nullable TEXT column, NULL hashed as the empty text.
    pub fn text_or_empty(&mut self, v: &Value) -> &mut Chain {
        match v {
            Value::Null => self.bytes(b""),
            other => self.text(other),
        }
    }

    /// A value of a type the column never holds: a marker no valid field
    /// starts with (a length of u64::MAX), then its debug form.
    fn foreign(&mut self, v: &Value) -> &mut Chain {
        self.num(u64::MAX).bytes(format!("{v:?}").as_bytes())
    }

    pub fn done(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}
