//! Errors: a [`RowError`] says what is wrong with one row, a [`Problem`] adds the
//! file and line, and [`InventoryError`] is what loading returns.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with one row (or the header) of an inventory file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("missing column {column:?} (this file needs: {expected})")]
    MissingColumn {
        column: &'static str,
        expected: String,
    },
    #[error("unknown column {column:?} (this file takes: {expected})")]
    UnknownColumn { column: String, expected: String },
    #[error("column {column:?} appears twice")]
    DuplicateColumn { column: String },
    #[error("{field} is missing or empty")]
    Empty { field: &'static str },
    #[error("{field}: {value:?} is not a whole number")]
    BadNumber { field: &'static str, value: String },
    #[error("{field} is negative ({value})")]
    Negative { field: &'static str, value: String },
    #[error("unknown {kind} {name:?}")]
    UnknownReference { kind: &'static str, name: String },
    #[error("duplicate {kind} {name:?} (first at line {first_line})")]
    Duplicate {
        kind: &'static str,
        name: String,
        first_line: u64,
    },
    #[error("site {host} is on hosting {hosting:?} here but on hosting {first_hosting:?} at line {first_line}; a site belongs to one hosting")]
    SiteOnTwoHostings {
        host: String,
        hosting: String,
        first_hosting: String,
        first_line: u64,
    },
    #[error("invalid hostname {value:?}: {reason}")]
    BadHostname { value: String, reason: String },
    #[error("{field}: {value:?} is not an IP address")]
    BadAddress { field: &'static str, value: String },
    #[error("{field}: {value:?} must not contain '@' (databases are named name@server)")]
    AtInName { field: &'static str, value: String },
    #[error("database {value:?} must be written name@server")]
    BadDatabaseRef { value: String },
    #[error("an observed use names exactly one of hosting or client (got {got})")]
    ObservedUser { got: &'static str },
    #[error("row has {got} fields, the header has {want}")]
    FieldCount { got: usize, want: usize },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("invalid CSV: {0}")]
    Csv(String),
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// A [`RowError`] at a file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File name inside the inventory directory (`sites.csv`).
    pub file: String,
    /// 1-based line number.
    pub line: u64,
    pub error: RowError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.error)
    }
}

/// Why an inventory could not be loaded (or generated).
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("{dir}: both {stem}.csv and {stem}.jsonl exist; keep one")]
    BothFormats { dir: PathBuf, stem: &'static str },
    #[error("{dir}: no inventory file found (expected sites.csv or sites.jsonl and the others listed in the README)")]
    NoFiles { dir: PathBuf },
    #[error("{dir}: {stem}.{other} exists; remove it or generate with --format {other}")]
    OtherFormatPresent {
        dir: PathBuf,
        stem: &'static str,
        other: &'static str,
    },
    #[error("the inventory has {count} problem(s); first: {}", .problems.first().map(|p| p.to_string()).unwrap_or_default())]
    Invalid {
        /// The first problems, in file order (at most [`MAX_PROBLEMS`]).
        problems: Vec<Problem>,
        /// How many problems were found in all.
        count: usize,
        /// Unknown references to rows that were refused themselves: counted,
        /// not listed (they go away with their cause).
        follow_on: usize,
    },
}

/// How many problems an [`InventoryError::Invalid`] keeps; the count goes on.
pub const MAX_PROBLEMS: usize = 1000;

impl InventoryError {
    /// True when the inventory itself is bad (as opposed to an I/O failure).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, InventoryError::Io { .. })
    }
}
