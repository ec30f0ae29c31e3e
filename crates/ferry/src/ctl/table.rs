//! How `ferry ctl` prints an answer: the API's JSON, or a table.

use serde::Serialize;

/// How one answer is printed.
pub(super) struct Out {
    pub json: bool,
}

impl Out {
    /// The answer as JSON, or the table `table` makes of it.
    pub fn print<T: Serialize>(&self, answer: &T, table: impl FnOnce(&T) -> Table) {
        if self.json {
            match serde_json::to_string_pretty(answer) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("ferry: cannot print the answer as JSON: {e}"),
            }
        } else {
            print!("{}", table(answer));
        }
    }
}

/// Columns aligned on the widest cell.
pub(super) struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&'static str]) -> Table {
        Table {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(mut self, cells: Vec<String>) -> Table {
        self.rows.push(cells);
        self
    }

    /// A two-column table of field names and values.
    pub fn fields(pairs: Vec<(&'static str, String)>) -> Table {
        let mut t = Table::new(&["FIELD", "VALUE"]);
        for (k, v) in pairs {
            t = t.row(vec![k.to_string(), v]);
        }
        t
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |f: &mut std::fmt::Formatter<'_>, cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i == last {
                    writeln!(f, "{c}")?;
                } else {
                    write!(f, "{c:<w$}  ")?;
                }
            }
            Ok(())
        };
        line(f, self.head.clone())?;
        for row in &self.rows {
            line(f, row.iter().map(String::as_str).collect())?;
        }
        Ok(())
    }
}

pub(super) fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}
