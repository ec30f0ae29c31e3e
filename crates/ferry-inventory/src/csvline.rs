//! A small CSV reader made for inventory exports: RFC 4180 quoting (`"a,b"`,
//! `""` for a quote, quoted fields across lines), `#` comment lines, blank
//! lines skipped, whitespace around unquoted fields trimmed, exact line numbers.
//!
//! Written here rather than taken from the `csv` crate because the common row
//! (no quotes) is then a split on commas of a line already in the buffer, with
//! no per-row allocation: at millions of rows that is most of the load time.

use std::io::BufRead;

use crate::error::RowError;

/// Reads records; fields borrow from the reader's buffers until the next call.
pub(crate) struct CsvReader<R> {
    input: R,
    line: Vec<u8>,
    /// Unquoted copy of a record that had quotes.
    unquoted: Vec<u8>,
    /// Field boundaries (start, end) in `line` or `unquoted`.
    bounds: Vec<(usize, usize)>,
    quoted: bool,
    line_no: u64,
}

/// One record: its first line number and fields.
pub(crate) struct Record<'a> {
    pub line: u64,
    buf: &'a [u8],
    bounds: &'a [(usize, usize)],
}

impl<'a> Record<'a> {
    pub fn len(&self) -> usize {
        self.bounds.len()
    }
    pub fn get(&self, i: usize) -> &'a [u8] {
        let (a, b) = self.bounds[i];
        &self.buf[a..b]
    }
}

fn trim(b: &[u8], mut a: usize, mut e: usize) -> (usize, usize) {
    while a < e && b[a].is_ascii_whitespace() {
        a += 1;
    }
    while e > a && b[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    (a, e)
}

impl<R: BufRead> CsvReader<R> {
    pub fn new(input: R) -> CsvReader<R> {
        CsvReader {
            input,
            line: Vec::with_capacity(256),
            unquoted: Vec::new(),
            bounds: Vec::with_capacity(8),
            quoted: false,
            line_no: 0,
        }
    }

    /// The next record, `Ok(None)` at the end. A record-level problem (an
    /// unterminated quote) is returned as `Err((line, error))` inside `Ok`.
    #[allow(clippy::type_complexity)]
    pub fn next_record(&mut self) -> std::io::Result<Option<Result<Record<'_>, (u64, RowError)>>> {
        loop {
            self.line.clear();
            if self.input.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let start_line = self.line_no;
            strip_eol(&mut self.line);
            let first = self.line.iter().position(|b| !b.is_ascii_whitespace());
            match first {
                None => continue,
                Some(i) if self.line[i] == b'#' => continue,
                Some(_) => {}
            }
            self.bounds.clear();
            if !self.line.contains(&b'"') {
                // Fast path: split on commas.
                self.quoted = false;
                let mut a = 0;
                for (i, &c) in self.line.iter().enumerate() {
                    if c == b',' {
                        self.bounds.push(trim(&self.line, a, i));
                        a = i + 1;
                    }
                }
                self.bounds.push(trim(&self.line, a, self.line.len()));
                return Ok(Some(Ok(Record {
                    line: start_line,
                    buf: &self.line,
                    bounds: &self.bounds,
                })));
            }
            self.quoted = true;
            if let Err(e) = self.parse_quoted() {
                return Ok(Some(Err((start_line, e))));
            }
            return Ok(Some(Ok(Record {
                line: start_line,
                buf: &self.unquoted,
                bounds: &self.bounds,
            })));
        }
    }

    /// Parses `self.line` (and following lines while a quote is open) into
    /// `self.unquoted` / `self.bounds`.
    fn parse_quoted(&mut self) -> Result<(), RowError> {
        self.unquoted.clear();
        let mut pos = 0;
        loop {
            // Start of a field: skip leading blanks.
            while pos < self.line.len() && matches!(self.line[pos], b' ' | b'\t') {
                pos += 1;
            }
            let start = self.unquoted.len();
            if pos < self.line.len() && self.line[pos] == b'"' {
                pos += 1;
                loop {
                    if pos >= self.line.len() {
                        // The quote continues on the next line.
                        let mut next = Vec::new();
                        let n = self
                            .input
                            .read_until(b'\n', &mut next)
                            .map_err(|e| RowError::Csv(e.to_string()))?;
                        if n == 0 {
                            return Err(RowError::Csv(
                                "quoted field not closed before the end of the file".into(),
                            ));
                        }
                        self.line_no += 1;
                        strip_eol(&mut next);
                        self.unquoted.push(b'\n');
                        self.line = next;
                        pos = 0;
                        continue;
                    }
                    let c = self.line[pos];
                    if c == b'"' {
                        if self.line.get(pos + 1) == Some(&b'"') {
                            self.unquoted.push(b'"');
                            pos += 2;
                            continue;
                        }
                        pos += 1;
                        break;
                    }
                    self.unquoted.push(c);
                    pos += 1;
                }
                let end = self.unquoted.len();
                while pos < self.line.len() && matches!(self.line[pos], b' ' | b'\t') {
                    pos += 1;
                }
                self.bounds.push((start, end));
                match self.line.get(pos) {
                    None => return Ok(()),
                    Some(b',') => pos += 1,
                    Some(_) => {
                        return Err(RowError::Csv(
                            "unexpected text after a closing quote".into(),
                        ))
                    }
                }
            } else {
                let end_in_line = self.line[pos..]
                    .iter()
                    .position(|&c| c == b',')
                    .map_or(self.line.len(), |i| pos + i);
                let field = &self.line[pos..end_in_line];
                if field.contains(&b'"') {
                    return Err(RowError::Csv(
                        "a quote inside an unquoted field (quote the whole field and double the quote)".into(),
                    ));
                }
                self.unquoted.extend_from_slice(field);
                let (a, b) = trim(&self.unquoted, start, self.unquoted.len());
                self.bounds.push((a, b));
                if end_in_line >= self.line.len() {
                    return Ok(());
                }
                pos = end_in_line + 1;
            }
        }
    }
}

fn strip_eol(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each record as (line, fields), or (line, message) for a bad one.
    type Parsed = Result<(u64, Vec<String>), (u64, String)>;

    fn all(text: &str) -> Vec<Parsed> {
        let mut r = CsvReader::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(match rec {
                Ok(rec) => Ok((
                    rec.line,
                    (0..rec.len())
                        .map(|i| String::from_utf8(rec.get(i).to_vec()).unwrap())
                        .collect(),
                )),
                Err((line, e)) => Err((line, e.to_string())),
            });
        }
        out
    }

    #[test]
    fn plain_comments_blank_lines_and_crlf() {
        let got = all("a,b\r\n# note\n\n  x , y \n,\n");
        assert_eq!(
            got,
            vec![
                Ok((1, vec!["a".into(), "b".into()])),
                Ok((4, vec!["x".into(), "y".into()])),
                Ok((5, vec!["".into(), "".into()])),
            ]
        );
    }

    #[test]
    fn quotes() {
        let got = all("\"a,b\",\"say \"\"hi\"\"\", c\n\"multi\nline\",z\nnext,1\n");
        assert_eq!(
            got,
            vec![
                Ok((1, vec!["a,b".into(), "say \"hi\"".into(), "c".into()])),
                Ok((2, vec!["multi\nline".into(), "z".into()])),
                Ok((4, vec!["next".into(), "1".into()])),
            ]
        );
    }

    #[test]
    fn bad_quotes_name_their_line() {
        let got = all("ok,1\n\"open,2\n");
        assert!(
            matches!(&got[1], Err((2, m)) if m.contains("not closed")),
            "{got:?}"
        );
        let got = all("a\"b,1\n");
        assert!(matches!(&got[0], Err((1, _))), "{got:?}");
        let got = all("\"a\"x,1\n");
        assert!(matches!(&got[0], Err((1, m)) if m.contains("after a closing quote")));
    }
}
