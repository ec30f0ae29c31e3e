//! What a database holds (tables, columns, primary keys) and how a table is
//! cut into primary-key chunks, shared by the copy and the checksums.

use std::sync::Arc;

use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};

use crate::endpoint::{escape_into, ident, quote};
use crate::error::{Error, Result, Side, SqlContext};

/// A base table to copy and check.
#[derive(Debug)]
pub(crate) struct Table {
    pub db: String,
    pub name: String,
    /// Stored columns (generated ones are computed by the server, never
    /// inserted), in table order.
    pub columns: Vec<String>,
    /// Primary key columns in key order; empty: the table is one chunk.
    pub pk: Vec<String>,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.db), ident(&self.name))
    }
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One primary-key range of a table: `lower < pk <= upper`, each bound
/// absent at the table's ends. Bounds are SQL literals ready to paste.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub table: Arc<Table>,
    pub lower: Option<Vec<String>>,
    pub upper: Option<Vec<String>>,
}

impl Chunk {
    pub fn where_clause(&self) -> String {
        let pk: Vec<String> = self.table.pk.iter().map(|c| ident(c)).collect();
        let mut parts = Vec::new();
        if let Some(l) = &self.lower {
            parts.push(compare(&pk, l, ">", ">"));
        }
        if let Some(u) = &self.upper {
            parts.push(compare(&pk, u, "<", "<="));
        }
        if parts.is_empty() {
            "1".into()
        } else {
            parts.join(" AND ")
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{}.{} ({} .. {})",
            self.table.db,
            self.table.name,
            self.lower.as_ref().map_or("start".into(), |v| v.join(",")),
            self.upper.as_ref().map_or("end".into(), |v| v.join(","))
        )
    }
}

/// Lexicographic comparison of a composite key, spelled out as
/// `a > x OR (a = x AND b > y)` so the range optimizer uses the primary key.
fn compare(cols: &[String], vals: &[String], strict: &str, last: &str) -> String {
    let mut terms = Vec::new();
    for i in 0..cols.len() {
        let mut t: Vec<String> = (0..i)
            .map(|j| format!("{} = {}", cols[j], vals[j]))
            .collect();
        let op = if i + 1 == cols.len() { last } else { strict };
        t.push(format!("{} {op} {}", cols[i], vals[i]));
        terms.push(format!("({})", t.join(" AND ")));
    }
    format!("({})", terms.join(" OR "))
}

fn text(v: Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::NULL => String::new(),
        other => other.as_sql(false).trim_matches('\'').to_string(),
    }
}

async fn strings(conn: &mut Conn, side: Side, sql: String) -> Result<Vec<Vec<String>>> {
    let rows: Vec<mysql_async::Row> = conn.query(&sql).await.ctx(side, || sql.clone())?;
    Ok(rows
        .into_iter()
        .map(|r| r.unwrap().into_iter().map(text).collect())
        .collect())
}

/// Base tables and views of `db`, by name.
pub(crate) async fn list(
    conn: &mut Conn,
    side: Side,
    db: &str,
) -> Result<(Vec<Table>, Vec<String>)> {
    let objects = strings(
        conn,
        side,
        format!(
            "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = {} ORDER BY TABLE_NAME",
            quote(db)
        ),
    )
    .await?;
    let mut tables = Vec::new();
    let mut views = Vec::new();
    for o in objects {
        if o[1] == "VIEW" {
            views.push(o[0].clone());
            continue;
        }
        let columns = strings(
            conn,
            side,
            format!(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} \
                 AND TABLE_NAME = {} AND IS_GENERATED = 'NEVER' ORDER BY ORDINAL_POSITION",
                quote(db),
                quote(&o[0])
            ),
        )
        .await?;
        let pk = strings(
            conn,
            side,
            format!(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {} \
                 AND TABLE_NAME = {} AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
                quote(db),
                quote(&o[0])
            ),
        )
        .await?;
        tables.push(Table {
            db: db.to_string(),
            name: o[0].clone(),
            columns: columns.into_iter().map(|mut r| r.remove(0)).collect(),
            pk: pk.into_iter().map(|mut r| r.remove(0)).collect(),
        });
    }
    Ok((tables, views))
}

/// Cuts `table` into chunks of about `rows` rows by walking its primary key
/// (an index-only scan), calling `emit` for each as soon as it is known so
/// copying starts before the walk ends.
pub(crate) async fn chunks<F, Fut>(
    conn: &mut Conn,
    side: Side,
    table: Arc<Table>,
    rows: u64,
    mut emit: F,
) -> Result<u64>
where
    F: FnMut(Chunk) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    if table.pk.is_empty() {
        emit(Chunk {
            table,
            lower: None,
            upper: None,
        })
        .await?;
        return Ok(1);
    }
    let pk = table
        .pk
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(",");
    let mut lower: Option<Vec<String>> = None;
    let mut count = 0;
    loop {
        let probe = Chunk {
            table: table.clone(),
            lower: lower.clone(),
            upper: None,
        };
        let sql = format!(
            "SELECT {pk} FROM {} WHERE {} ORDER BY {pk} LIMIT 1 OFFSET {}",
            table.qualified(),
            probe.where_clause(),
            rows.saturating_sub(1)
        );
        let mut result = conn.query_iter(&sql).await.ctx(side, || sql.clone())?;
        let columns = result.columns();
        let row = result.next().await.ctx(side, || sql.clone())?;
        result.drop_result().await.ctx(side, || sql.clone())?;
        let upper = match (row, columns) {
            (Some(row), Some(cols)) => {
                let mut lits = Vec::new();
                for (v, c) in row.unwrap().into_iter().zip(cols.iter()) {
                    let mut out = Vec::new();
                    literal(&v, c.column_type(), &mut out);
                    lits.push(String::from_utf8(out).map_err(|_| Error::Table {
                        db: table.db.clone(),
                        table: table.name.clone(),
                        message: "primary key value is not valid UTF-8; cannot chunk".into(),
                    })?);
                }
                Some(lits)
            }
            _ => None,
        };
        let last = upper.is_none();
        emit(Chunk {
            table: table.clone(),
            lower: lower.clone(),
            upper: upper.clone(),
        })
        .await?;
        count += 1;
        if last {
            return Ok(count);
        }
        lower = upper;
    }
}

/// Appends `v` (from the text protocol, so bytes or NULL) as a literal for a
/// column of type `ty`: numbers as they came, bits in hex, everything else
/// as an escaped string (sessions are `SET NAMES binary`, so the bytes land
/// unchanged).
pub(crate) fn literal(v: &Value, ty: ColumnType, out: &mut Vec<u8>) {
    use ColumnType::*;
    let bytes = match v {
        Value::NULL => {
            out.extend_from_slice(b"NULL");
            return;
        }
        Value::Bytes(b) => b,
        other => {
            out.extend_from_slice(other.as_sql(false).as_bytes());
            return;
        }
    };
    match ty {
        MYSQL_TYPE_TINY
        | MYSQL_TYPE_SHORT
        | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG
        | MYSQL_TYPE_INT24
        | MYSQL_TYPE_FLOAT
        | MYSQL_TYPE_DOUBLE
        | MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_YEAR => out.extend_from_slice(bytes),
        MYSQL_TYPE_BIT => {
            out.extend_from_slice(b"X'");
            for b in bytes {
                out.extend_from_slice(format!("{b:02X}").as_bytes());
            }
            out.push(b'\'');
        }
        _ => {
            out.push(b'\'');
            escape_into(bytes, out);
            out.push(b'\'');
        }
    }
}
