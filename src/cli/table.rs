//! Columns for the terminal: each column as wide as its widest cell, numbers to the right, text to the left.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table of text cells, printed with two spaces between columns and no
/// trailing blanks. The last column may be ragged (a message, a list).
#[derive(Debug)]
pub(crate) struct Table {
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`; `aligns` gives each column's alignment.
    pub(crate) fn new(header: &[&str], aligns: &[Align]) -> Self {
        assert_eq!(header.len(), aligns.len(), "one alignment per column");
        Self {
            aligns: aligns.to_vec(),
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.aligns.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// The lines, each prefixed by `indent`.
    pub(crate) fn lines(&self, indent: &str) -> Vec<String> {
        let widths: Vec<usize> = (0..self.aligns.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.rows
            .iter()
            .map(|r| {
                let cells: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .zip(&self.aligns)
                    .map(|((cell, &w), align)| match align {
                        Align::Left => format!("{cell:<w$}"),
                        Align::Right => format!("{cell:>w$}"),
                    })
                    .collect();
                format!("{indent}{}", cells.join("  ").trim_end())
            })
            .collect()
    }
}

/// A JSON value as a cell: strings without quotes, numbers as they are,
/// `-` for null or absent (an optional value that is not there).
pub(crate) fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_widths() {
        let mut t = Table::new(
            &["name", "count", "note"],
            &[Align::Left, Align::Right, Align::Left],
        );
        t.row(vec!["a".into(), "1234567".into(), "x".into()]);
        t.row(vec!["shipments-eu".into(), "3".into(), String::new()]);
        assert_eq!(
            t.lines("  "),
            [
                "  name            count  note",
                "  a             1234567  x",
                "  shipments-eu        3",
            ]
        );
    }

    #[test]
    fn absent_values_are_a_dash_never_null() {
        assert_eq!(cell(&serde_json::Value::Null), "-");
        assert_eq!(cell(&serde_json::json!("ok")), "ok");
        assert_eq!(cell(&serde_json::json!(15)), "15");
    }
}
