//! One file's rows in its format, as [`Fields`]: CSV through the header
//! (columns in any order, unknown ones refused), JSON Lines one object per
//! line with scalar values. A bad row is a problem at its line, never the end
//! of the file.

use std::borrow::Cow;
use std::fmt;
use std::io::{BufRead, BufReader, Read};

use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::{Fields, Problems};
use crate::csvline::CsvReader;
use crate::error::RowError;
use crate::schema::{Entity, MAX_COLUMNS};

/// Maps header position -> schema column index. `Err` when the header is unusable.
fn map_header<'h>(
    entity: Entity,
    header: impl Iterator<Item = &'h str>,
) -> Result<Vec<usize>, RowError> {
    let columns = entity.columns();
    let mut map = Vec::new();
    let mut seen = [false; MAX_COLUMNS];
    for h in header {
        let h = h.trim();
        let Some(i) = columns.iter().position(|c| c.name == h) else {
            return Err(RowError::UnknownColumn {
                column: h.to_string(),
                expected: entity.column_list(),
            });
        };
        if seen[i] {
            return Err(RowError::DuplicateColumn {
                column: h.to_string(),
            });
        }
        seen[i] = true;
        map.push(i);
    }
    if let Some(c) = columns
        .iter()
        .enumerate()
        .find(|(i, c)| c.required && !seen[*i])
    {
        return Err(RowError::MissingColumn {
            column: c.1.name,
            expected: entity.column_list(),
        });
    }
    Ok(map)
}

pub(super) fn read_csv<R: Read>(
    entity: Entity,
    name: &str,
    input: R,
    problems: &mut Problems,
    mut row: impl FnMut(&Fields<'_>, u64) -> Result<(), RowError>,
) -> std::io::Result<u64> {
    let mut reader = CsvReader::new(BufReader::with_capacity(1 << 20, input));
    let mut map: Option<Vec<usize>> = None;
    let mut rows = 0;
    while let Some(record) = reader.next_record()? {
        let record = match record {
            Ok(r) => r,
            Err((line, e)) => {
                problems.push(name, line, e);
                continue;
            }
        };
        let line = record.line;
        let Some(columns) = &map else {
            let header: Result<Vec<&str>, _> = (0..record.len())
                .map(|i| std::str::from_utf8(record.get(i)))
                .collect();
            let mapped = match header {
                Ok(h) => map_header(entity, h.into_iter()),
                Err(_) => Err(RowError::NotUtf8),
            };
            match mapped {
                Ok(m) => map = Some(m),
                Err(e) => {
                    // Without a usable header no row can be read.
                    problems.push(name, line, e);
                    return Ok(0);
                }
            }
            continue;
        };
        rows += 1;
        if record.len() != columns.len() {
            problems.push(
                name,
                line,
                RowError::FieldCount {
                    got: record.len(),
                    want: columns.len(),
                },
            );
            continue;
        }
        let mut fields = Fields {
            values: [None; MAX_COLUMNS],
        };
        let mut utf8_ok = true;
        for (i, &col) in columns.iter().enumerate() {
            match std::str::from_utf8(record.get(i)) {
                Ok("") => {}
                Ok(v) => fields.values[col] = Some(v),
                Err(_) => utf8_ok = false,
            }
        }
        if !utf8_ok {
            problems.push(name, line, RowError::NotUtf8);
            continue;
        }
        if let Err(e) = row(&fields, line) {
            problems.push(name, line, e);
        }
    }
    Ok(rows)
}

/// A JSON scalar, borrowed from the line when it has no escapes.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Text(String),
    Null,
}

/// A JSON object whose values are scalars, kept as (key, value) pairs.
struct JsonRow<'a> {
    pairs: Vec<(Cow<'a, str>, Scalar<'a>)>,
}

/// A JSON key, borrowed from the line when it has no escapes (serde's own
/// borrowing `Cow` visitor, the same as `Scalar::Str` below without the other kinds).
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> de::Deserialize<'de> for JsonRow<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonRow<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one JSON object per line")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonRow<'de>, A::Error> {
                let mut pairs = Vec::with_capacity(MAX_COLUMNS);
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: Scalar<'de> = map.next_value()?;
                    pairs.push((k, v));
                }
                Ok(JsonRow { pairs })
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn read_jsonl<R: Read>(
    entity: Entity,
    name: &str,
    input: R,
    problems: &mut Problems,
    mut row: impl FnMut(&Fields<'_>, u64) -> Result<(), RowError>,
) -> std::io::Result<u64> {
    let columns = entity.columns();
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut rows = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line += 1;
        let Ok(text) = std::str::from_utf8(&buf) else {
            problems.push(name, line, RowError::NotUtf8);
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        rows += 1;
        let parsed: JsonRow<'_> = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                problems.push(name, line, RowError::Json(e.to_string()));
                continue;
            }
        };
        let mut fields = Fields {
            values: [None; MAX_COLUMNS],
        };
        let mut bad = None;
        for (k, v) in &parsed.pairs {
            let Some(i) = columns.iter().position(|c| c.name == k.as_ref()) else {
                bad = Some(RowError::UnknownColumn {
                    column: k.to_string(),
                    expected: entity.column_list(),
                });
                break;
            };
            if fields.values[i].is_some() {
                bad = Some(RowError::DuplicateColumn {
                    column: k.to_string(),
                });
                break;
            }
            let v = match v {
                Scalar::Str(s) => s.trim(),
                Scalar::Text(s) => s.as_str(),
                Scalar::Null => "",
            };
            if !v.is_empty() {
                fields.values[i] = Some(v);
            }
        }
        if bad.is_none() {
            if let Some(c) = columns
                .iter()
                .enumerate()
                .find(|(i, c)| c.required && fields.values[*i].is_none())
            {
                bad = Some(RowError::Empty { field: c.1.name });
            }
        }
        let result = match bad {
            Some(e) => Err(e),
            None => row(&fields, line),
        };
        if let Err(e) = result {
            problems.push(name, line, e);
        }
    }
    Ok(rows)
}
