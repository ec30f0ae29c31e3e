//! A secret given inline (`<key> = "..."`) or in a file (`<key>_file = "..."`):
//! the rule is in the crate documentation.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use ferry_secret::Secret;
use toml::Spanned;

/// Shortest token or key accepted where a minimum applies (see the crate doc).
pub const MIN_TOKEN_CHARS: usize = 16;

/// A value refused, at its byte span in the config text; turned into
/// `file:line:col` by [`crate::Source::locate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanError {
    pub span: Range<usize>,
    pub message: String,
}

impl SpanError {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> SpanError {
        SpanError {
            span,
            message: message.into(),
        }
    }
}

impl fmt::Display for SpanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpanError {}

/// The two keys that may give one secret, as read from TOML.
#[derive(Clone, Copy, Debug)]
pub struct SecretKeys<'a> {
    /// Names the keys' table in messages ("admin", "callers.ops",
    /// "router \"r1\""); empty for top-level keys.
    pub owner: &'a str,
    /// The inline key ("token"); the file's key is `<key>_file`.
    pub key: &'a str,
    pub inline: Option<&'a Spanned<String>>,
    pub file: Option<&'a Spanned<String>>,
    /// Shortest value accepted, in characters: [`MIN_TOKEN_CHARS`] for
    /// tokens and keys, 0 where any non-empty value is acceptable.
    pub min_chars: usize,
}

impl SecretKeys<'_> {
    /// The secret, or `None` when neither key is set. A relative file path
    /// is relative to `base` (the config file's directory).
    pub fn optional(&self, base: &Path) -> Result<Option<Secret>, SpanError> {
        let (secret, span) = match (self.inline, self.file) {
            (None, None) => return Ok(None),
            (Some(_), Some(f)) => {
                return Err(SpanError::new(
                    f.span(),
                    format!(
                        "{}{} and {}_file are mutually exclusive, keep one",
                        self.prefix(),
                        self.key,
                        self.key
                    ),
                ))
            }
            (Some(v), None) => {
                let what = self.named(self.key);
                let secret = Secret::new(&what, v.get_ref().as_str())
                    .map_err(|e| SpanError::new(v.span(), e.to_string()))?;
                (secret, v.span())
            }
            (None, Some(f)) => {
                let what = self.named(&format!("{}_file", self.key));
                if f.get_ref().is_empty() {
                    return Err(SpanError::new(f.span(), format!("{what} is an empty path")));
                }
                // `join` keeps an absolute path as it is.
                let secret = ferry_secret::read_file(&what, &base.join(f.get_ref()))
                    .map_err(|e| SpanError::new(f.span(), e.to_string()))?;
                (secret, f.span())
            }
        };
        if secret.expose().chars().count() < self.min_chars {
            return Err(SpanError::new(
                span,
                format!(
                    "{}the {} must be at least {} characters",
                    self.prefix(),
                    self.key,
                    self.min_chars
                ),
            ));
        }
        Ok(Some(secret))
    }

    /// The secret; neither key set is refused at `whole` (the table's span).
    pub fn required(&self, base: &Path, whole: Range<usize>) -> Result<Secret, SpanError> {
        self.optional(base)?.ok_or_else(|| {
            SpanError::new(
                whole,
                format!(
                    "{}no {}: set {} or {}_file",
                    self.prefix(),
                    self.key,
                    self.key,
                    self.key
                ),
            )
        })
    }

    /// "owner: " or nothing, to start a message.
    fn prefix(&self) -> String {
        if self.owner.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.owner)
        }
    }

    /// "owner key" or "key": how ferry-secret's errors name the setting.
    fn named(&self, key: &str) -> String {
        if self.owner.is_empty() {
            key.to_string()
        } else {
            format!("{} {key}", self.owner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Deserialize)]
    struct Raw {
        token: Option<Spanned<String>>,
        token_file: Option<Spanned<String>>,
    }

    fn keys(raw: &Raw, min_chars: usize) -> SecretKeys<'_> {
        SecretKeys {
            owner: "callers.ops",
            key: "token",
            inline: raw.token.as_ref(),
            file: raw.token_file.as_ref(),
            min_chars,
        }
    }

    fn raw(text: &str) -> Raw {
        toml::from_str(text).unwrap()
    }

    fn write(dir: &Path, name: &str, content: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn inline_or_file_or_neither() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t", "0123456789abcdef-file\n", 0o600);
        let r = raw("token = \"0123456789abcdef\"");
        let s = keys(&r, MIN_TOKEN_CHARS).optional(dir.path()).unwrap();
        assert!(s.unwrap().matches(b"0123456789abcdef"));
        // Relative to the base, trimmed.
        let r = raw("token_file = \"t\"");
        let s = keys(&r, MIN_TOKEN_CHARS).optional(dir.path()).unwrap();
        assert!(s.unwrap().matches(b"0123456789abcdef-file"));
        let r = raw("");
        assert!(keys(&r, 0).optional(dir.path()).unwrap().is_none());
        let e = keys(&r, 0).required(dir.path(), 3..4).unwrap_err();
        assert_eq!(e.span, 3..4);
        assert_eq!(e.message, "callers.ops: no token: set token or token_file");
    }

    #[test]
    fn both_keys_are_refused_at_the_file_key_naming_both() {
        let text = "token = \"0123456789abcdef\"\ntoken_file = \"t\"";
        let e = keys(&raw(text), 0).optional(Path::new(".")).unwrap_err();
        assert_eq!(&text[e.span.clone()], "\"t\"");
        assert_eq!(
            e.message,
            "callers.ops: token and token_file are mutually exclusive, keep one"
        );
    }

    #[test]
    fn empty_values_short_tokens_and_open_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = keys(&raw("token = \"\""), 0)
            .optional(dir.path())
            .unwrap_err();
        assert_eq!(e.message, "callers.ops token is empty");
        let e = keys(&raw("token_file = \"\""), 0)
            .optional(dir.path())
            .unwrap_err();
        assert_eq!(e.message, "callers.ops token_file is an empty path");
        let text = "token = \"short\"";
        let e = keys(&raw(text), MIN_TOKEN_CHARS)
            .optional(dir.path())
            .unwrap_err();
        assert_eq!(e.span.start, 8);
        assert_eq!(
            e.message,
            "callers.ops: the token must be at least 16 characters"
        );
        // Counted in characters: 16 two-byte characters are 16, not 32.
        let r = raw("token = \"éééééééééééééééé\"");
        assert!(keys(&r, 16).optional(dir.path()).is_ok());
        let r = raw("token = \"ééééééééééééééé\"");
        assert!(keys(&r, 16).optional(dir.path()).is_err());

        write(dir.path(), "open", "0123456789abcdef\n", 0o644);
        let e = keys(&raw("token_file = \"open\""), 0)
            .optional(dir.path())
            .unwrap_err();
        assert!(e.message.contains("callers.ops token_file"), "{e}");
        assert!(e.message.contains("chmod 600"), "{e}");
        write(dir.path(), "blank", "\n", 0o600);
        let e = keys(&raw("token_file = \"blank\""), 0)
            .optional(dir.path())
            .unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn top_level_keys_have_no_owner_in_messages() {
        let r = raw("token = \"short\"");
        let k = SecretKeys {
            owner: "",
            key: "key",
            inline: r.token.as_ref(),
            file: None,
            min_chars: MIN_TOKEN_CHARS,
        };
        let e = k.optional(Path::new(".")).unwrap_err();
        assert_eq!(e.message, "the key must be at least 16 characters");
    }
}
