//! A journal row's cells read back, for each [`Kind`](crate::Kind)'s
//! `run_from_row` / `event_from_row` (the other way from [`Chain`](crate::Chain),
//! which hashes them). `None` is a cell of another type: the caller names
//! the column in its error.

use rusqlite::types::Value;

/// A TEXT cell.
pub fn text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

/// An INTEGER cell.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

/// A TEXT cell that may be NULL (`Some(None)`).
pub fn opt_text(v: &Value) -> Option<Option<&str>> {
    match v {
        Value::Null => Some(None),
        v => text(v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_of_another_type_are_none() {
        let t = Value::Text("x".into());
        let i = Value::Integer(7);
        assert_eq!(
            (text(&t), text(&i), text(&Value::Null)),
            (Some("x"), None, None)
        );
        assert_eq!((int(&i), int(&t)), (Some(7), None));
        assert_eq!(opt_text(&Value::Null), Some(None));
        assert_eq!(opt_text(&t), Some(Some("x")));
        assert_eq!(opt_text(&i), None);
    }
}
