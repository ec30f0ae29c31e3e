//! Byte spans (what `toml` reports) to the `file:line:col` operators read.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::SpanError;

/// 1-based line and column of byte `byte_offset` in `text`; the column is
/// counted in characters, as editors show it. An offset past the end points
/// after the last character; one inside a character points at it.
pub fn line_col(text: &str, byte_offset: usize) -> (usize, usize) {
    let mut offset = byte_offset.min(text.len());
    // Spans from toml fall on character boundaries; stepping back is only a guard.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// One config file: its name (for messages) and its text (for positions).
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at the start of `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> Invalid {
        let (line, column) = line_col(self.text, span.start);
        Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// The same, for a [`SpanError`] from a check of this crate.
    pub fn locate(&self, e: SpanError) -> Invalid {
        self.error(e.span, e.message)
    }

    /// A TOML syntax or shape error, at the position toml reports (or 1:1).
    pub fn toml(&self, e: &toml::de::Error) -> Invalid {
        self.error(e.span().unwrap_or(0..0), e.message().trim_end())
    }

    /// 1-based line of `span`'s start ("first at line N").
    pub fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }
}

/// A value refused in a config file, at `path:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for Invalid {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters_and_lines_start_at_one() {
        let text = "ab\né=x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        // 'é' is two bytes, one column.
        assert_eq!(line_col(text, 5), (2, 2));
        assert_eq!(line_col(text, 6), (2, 3));
        // Inside 'é': its own column.
        assert_eq!(line_col(text, 4), (2, 1));
        assert_eq!(line_col(text, 999), (3, 1));
        assert_eq!(line_col("", 0), (1, 1));
    }

    /// Moved from ferry-config with the function.
    #[test]
    fn line_col_counts_characters() {
        let text = "ab\néé = 1\n";
        // After two 2-byte characters: byte 7, character column 3.
        assert_eq!(line_col(text, 7), (2, 3));
        // Inside a character or past the end: clamped, never a panic.
        assert_eq!(line_col(text, 4), (2, 1));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn an_error_reads_file_line_col_message() {
        let src = Source {
            path: Path::new("conf/a.toml"),
            text: "x = 1\ny = \"é\" z\n",
        };
        let z = src.text.find('z').unwrap();
        let e = src.error(z..z + 1, "unexpected z");
        // `y = "é" ` is 8 characters (9 bytes): z is in column 9.
        assert_eq!((e.line, e.column), (2, 9));
        assert_eq!(e.to_string(), "conf/a.toml:2:9: unexpected z");
        assert_eq!(src.line_of(&(6..7)), 2);
    }

    #[test]
    fn toml_errors_point_at_the_offending_value() {
        let text = "a = 1\nb = [\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let src = Source {
            path: Path::new("t.toml"),
            text,
        };
        let e = src.toml(&e);
        assert_eq!(e.line, 3, "{e}");
    }
}
