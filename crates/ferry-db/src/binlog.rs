//! Which rows of the moving databases changed since a point in the source's
//! binary log, read from its row events. The freeze uses it to re-check only
//! those rows: the databases were proved equal at that point (on snapshots,
//! before the freeze), so equal changed rows make the databases equal at
//! the freeze position.
//!
//! Anything that cannot be narrowed to rows makes a table (or everything)
//! be checked in full instead: a table without a primary key, a key type
//! whose binlog form we do not turn back into SQL, a column count that
//! changed, more changed keys than `key_limit`, a statement on a moving
//! database (DDL), compressed events. Erring towards the full check is
//! always safe; it only costs time.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use mysql_async::binlog::events::EventData;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Value};

use crate::endpoint::{escape_into, quote, Endpoint, Session};
use crate::error::{Result, Side, SqlContext};
use crate::gtid::BinlogMark;

/// What changed, per table of the moving databases.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub tables: HashMap<(String, String), TableChanges>,
    /// Set when the changes cannot be narrowed at all: check everything.
    pub everything: Option<String>,
    /// Row images read for the moving databases.
    pub rows_seen: u64,
}

#[derive(Debug)]
pub(crate) enum TableChanges {
    /// Primary keys (SQL literals, in key order) of every row inserted,
    /// updated (before and after) or deleted.
    Keys(HashSet<Vec<String>>),
    /// Check the whole table, and why.
    Whole(String),
}

/// How a table's primary key sits in its row images.
struct KeyShape {
    columns: usize,
    /// (0-based column position, unsigned integer width in bits or 0)
    key: Vec<(usize, u32)>,
    /// Set when rows cannot be narrowed to keys (and why).
    unusable: Option<String>,
}

/// Reads the source's binary log from `mark` to its current end (the
/// source is frozen for these databases, so that end is past the freeze
/// position) and collects the changed keys of `dbs`' tables.
pub(crate) async fn changes_since(
    source: &Endpoint,
    mark: &BinlogMark,
    dbs: &[String],
    key_limit: usize,
) -> Result<Changes> {
    let mut meta = source.connect(Session::Control).await?;
    let mut changes = Changes::default();
    let compressed: Option<String> = meta
        .query_first("SELECT @@GLOBAL.log_bin_compress")
        .await
        .unwrap_or(None);
    if compressed.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON")) {
        changes.everything = Some("the source compresses its binary log events".into());
        return Ok(changes);
    }
    let stream_conn = source.connect(Session::Control).await?;
    // A replica's server id must be unique at the source (a second one with
    // the same id disconnects the first): a random id far above the ones
    // people configure.
    let server_id = 0x8000_0000 | (rand_u32() & 0x3fff_ffff);
    let request = BinlogStreamRequest::new(server_id)
        .with_filename(mark.file.as_bytes())
        .with_pos(mark.offset)
        .with_non_blocking();
    let mut stream = stream_conn
        .get_binlog_stream(request)
        .await
        .ctx(Side::Source, || {
            format!("reading the binary log from {}:{}", mark.file, mark.offset)
        })?;
    let mut shapes: HashMap<(String, String), KeyShape> = HashMap::new();
    while let Some(event) = stream.next().await {
        let event = event.ctx(Side::Source, || "reading a binary log event".into())?;
        let data = match event.read_data() {
            Ok(Some(d)) => d,
            // Event types this parser does not know (MariaDB's own GTID,
            // annotate and checkpoint events): no row changes in them.
            Ok(None) => continue,
            Err(e) => {
                changes.everything = Some(format!("an unreadable binary log event: {e}"));
                break;
            }
        };
        match data {
            EventData::QueryEvent(q) => {
                let text = q.query();
                if touches(&text, &q.schema(), dbs) {
                    changes.everything = Some(format!(
                        "a statement on a moving database: {}",
                        text.chars().take(80).collect::<String>()
                    ));
                    break;
                }
            }
            EventData::RowsEvent(rows) => {
                let Some(tme) = stream.get_tme(rows.table_id()) else {
                    changes.everything = Some("a row event without its table map".into());
                    break;
                };
                let db = tme.database_name().into_owned();
                if !dbs.contains(&db) {
                    continue;
                }
                let name = (db, tme.table_name().into_owned());
                if !shapes.contains_key(&name) {
                    let shape = key_shape(&mut meta, &name.0, &name.1).await?;
                    shapes.insert(name.clone(), shape);
                }
                let shape = &shapes[&name];
                let entry = changes
                    .tables
                    .entry(name.clone())
                    .or_insert_with(|| TableChanges::Keys(HashSet::new()));
                let TableChanges::Keys(keys) = entry else {
                    continue;
                };
                let why = if let Some(why) = &shape.unusable {
                    Some(why.clone())
                } else if tme.columns_count() as usize != shape.columns {
                    Some("its columns changed".into())
                } else {
                    collect_keys(&rows, tme, shape, keys, &mut changes.rows_seen)
                };
                let why = why.or_else(|| {
                    (keys.len() > key_limit).then(|| format!("more than {key_limit} rows changed"))
                });
                if let Some(why) = why {
                    *entry = TableChanges::Whole(why);
                }
            }
            _ => {}
        }
    }
    // The stream owns its connection; a non-blocking dump ends with EOF and
    // the server closes its side.
    let _ = stream.close().await;
    Ok(changes)
}

/// Adds the keys in `rows`' images to `keys`; Some(reason) when an image
/// lacks a key column or holds a value we cannot write back as SQL.
fn collect_keys(
    rows: &mysql_async::binlog::events::RowsEventData<'_>,
    tme: &mysql_async::binlog::events::TableMapEvent<'_>,
    shape: &KeyShape,
    keys: &mut HashSet<Vec<String>>,
    seen: &mut u64,
) -> Option<String> {
    for row in rows.rows(tme) {
        let (before, after) = match row {
            Ok(r) => r,
            Err(e) => return Some(format!("an unreadable row image: {e}")),
        };
        let mut any = false;
        for image in [before, after].into_iter().flatten() {
            *seen += 1;
            let mut key = Vec::with_capacity(shape.key.len());
            for &(pos, unsigned_bits) in &shape.key {
                match image.as_ref(pos) {
                    Some(BinlogValue::Value(v)) => key.push(key_literal(v, unsigned_bits)?),
                    // Not in this image (a minimal after image of an
                    // update that kept its key): the before image has it.
                    _ => {
                        key.clear();
                        break;
                    }
                }
            }
            if !key.is_empty() {
                keys.insert(key);
                any = true;
            }
        }
        if !any {
            return Some("a changed row without its primary key in the binary log".into());
        }
    }
    None
}

/// `v` as an SQL literal for an integer or string key column. Row images
/// carry integers without their sign, so an unsigned column's large values
/// arrive negative: they are widened back with the column's width.
fn key_literal(v: &Value, unsigned_bits: u32) -> Option<String> {
    match v {
        Value::Int(i) if unsigned_bits > 0 && *i < 0 => {
            let wrapped = if unsigned_bits >= 64 {
                *i as u64
            } else {
                (*i as u64) & ((1u64 << unsigned_bits) - 1)
            };
            Some(wrapped.to_string())
        }
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Bytes(b) => {
            let mut out = vec![b'\''];
            escape_into(b, &mut out);
            out.push(b'\'');
            String::from_utf8(out).ok()
        }
        _ => None,
    }
}

/// Key types whose row-image values [`key_literal`] writes back exactly.
fn key_type_bits(data_type: &str, column_type: &str) -> Option<u32> {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    let bits = match data_type.to_ascii_lowercase().as_str() {
        "tinyint" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" => 32,
        "bigint" => 64,
        "char" | "varchar" | "varbinary" => return Some(0),
        _ => return None,
    };
    Some(if unsigned { bits } else { 0 })
}

async fn key_shape(conn: &mut Conn, db: &str, table: &str) -> Result<KeyShape> {
    let sql = format!(
        "SELECT c.ORDINAL_POSITION, c.DATA_TYPE, c.COLUMN_TYPE, \
         (SELECT s.SEQ_IN_INDEX FROM information_schema.STATISTICS s \
          WHERE s.TABLE_SCHEMA = c.TABLE_SCHEMA AND s.TABLE_NAME = c.TABLE_NAME \
          AND s.COLUMN_NAME = c.COLUMN_NAME AND s.INDEX_NAME = 'PRIMARY') \
         FROM information_schema.COLUMNS c \
         WHERE c.TABLE_SCHEMA = {} AND c.TABLE_NAME = {} ORDER BY c.ORDINAL_POSITION",
        quote(db),
        quote(table)
    );
    let rows: Vec<(u64, String, String, Option<u64>)> =
        conn.query(&sql).await.ctx(Side::Source, || sql.clone())?;
    let mut key: Vec<(u64, usize, u32)> = Vec::new();
    let mut unusable = None;
    for (i, (_, data_type, column_type, seq)) in rows.iter().enumerate() {
        let Some(seq) = seq else { continue };
        match key_type_bits(data_type, column_type) {
            Some(bits) => key.push((*seq, i, bits)),
            None => unusable = Some(format!("its key has a {data_type} column")),
        }
    }
    if key.is_empty() && unusable.is_none() {
        unusable = Some("it has no primary key".into());
    }
    key.sort();
    Ok(KeyShape {
        columns: rows.len(),
        key: key.into_iter().map(|(_, pos, bits)| (pos, bits)).collect(),
        unusable,
    })
}

/// Statements that never change table data: transaction control, account
/// management (the freeze's own `ALTER USER .. ACCOUNT LOCK` is one).
const NO_DATA: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "XA ",
    "SAVEPOINT",
    "RELEASE SAVEPOINT",
    "ALTER USER",
    "CREATE USER",
    "DROP USER",
    "RENAME USER",
    "GRANT",
    "REVOKE",
    "SET PASSWORD",
    "CREATE ROLE",
    "DROP ROLE",
    "FLUSH",
];

/// Whether a statement event may change a moving database: anything but
/// [`NO_DATA`] and the placeholders MariaDB sends old-protocol readers, run
/// in a moving database or naming one as a word.
fn touches(text: &str, schema: &str, dbs: &[String]) -> bool {
    let t = text.trim_start();
    let head: String = t.chars().take(24).collect::<String>().to_ascii_uppercase();
    if t.starts_with('#') || NO_DATA.iter().any(|k| head.starts_with(k)) {
        return false;
    }
    let lower = t.to_lowercase();
    dbs.iter()
        .any(|d| d == schema || names_word(&lower, &d.to_lowercase()))
}

/// `word` in `text` with no identifier character on either side.
fn names_word(text: &str, word: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    text.match_indices(word).any(|(i, _)| {
        !ident(text[..i].chars().next_back()) && !ident(text[i + word.len()..].chars().next())
    })
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // A fixed id if the OS has no randomness: collisions only cost a retry.
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_and_placeholders_touch_nothing() {
        let dbs = vec!["shop".to_string()];
        for t in ["BEGIN", "COMMIT", "# Dummy event", "XA END 'x'", "ROLLBACK"] {
            assert!(!touches(t, "shop", &dbs), "{t}");
        }
        assert!(touches("ALTER TABLE t ADD c INT", "shop", &dbs));
        assert!(touches("DROP TABLE `Shop`.t", "other", &dbs));
        assert!(!touches("CREATE TABLE t (a INT)", "other", &dbs));
        assert!(!touches("CREATE TABLE shopping.t (a INT)", "other", &dbs));
        assert!(!touches("ALTER USER 'shop'@'%' ACCOUNT LOCK", "shop", &dbs));
    }

    #[test]
    fn unsigned_keys_are_widened_back() {
        assert_eq!(
            key_literal(&Value::Int(-1), 32).as_deref(),
            Some("4294967295")
        );
        assert_eq!(
            key_literal(&Value::Int(-1), 64).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(key_literal(&Value::Int(-5), 0).as_deref(), Some("-5"));
        assert_eq!(
            key_literal(&Value::Bytes(b"a'b".to_vec()), 0).as_deref(),
            Some("'a\\'b'")
        );
        assert_eq!(key_literal(&Value::Double(1.0), 0), None);
    }

    #[test]
    fn only_exact_key_types_are_narrowed() {
        assert_eq!(key_type_bits("int", "int(10) unsigned"), Some(32));
        assert_eq!(key_type_bits("bigint", "bigint(20)"), Some(0));
        assert_eq!(key_type_bits("varchar", "varchar(64)"), Some(0));
        assert_eq!(key_type_bits("datetime", "datetime"), None);
        assert_eq!(key_type_bits("binary", "binary(16)"), None);
    }
}
