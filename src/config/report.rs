//! Problems shown as cargo shows them: the message, `--> file:line:column`, and the line with a caret under the bad value, secrets masked.

use std::fmt::Write as _;
use std::ops::Range;

use super::tree::Span;

/// Where a problem is: its line as printed (secrets masked) and the columns to underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters) of the bad value.
    pub column: usize,
    /// The line, with every secret value replaced by `***`.
    pub source: String,
    /// The characters of `source` to underline.
    pub caret: Range<usize>,
}

/// A value not to print as written.
#[derive(Debug, Clone)]
pub(super) struct Mask {
    pub(super) span: Span,
    /// A secret, all of it; or a URL, of which only the credentials, query and fragment.
    pub(super) whole: bool,
}

/// Locates `span` in `text`, masking the values of `masks` on its line.
pub(super) fn locate(text: &str, span: &Span, masks: &[Mask]) -> Location {
    let start = floor(text, span.start.min(text.len()));
    let (line_start, line_end) = line_around(text, start);
    let end = floor(text, span.end.clamp(start, line_end.max(start)));
    // A comment may hold anything, a secret commented out included.
    let line = &text[line_start..line_end];
    let mut masks = masks.to_vec();
    if let (Some(hash), _) = scan_line(line) {
        let from = hash + 1 + usize::from(line[hash + 1..].starts_with(' '));
        if from < line.len() {
            masks.push(Mask {
                span: line_start + from..line_end,
                whole: true,
            });
        }
    }

    // The line cut into pieces, each either as written or masked.
    // Secrets first, so a secret that is also a URL is masked whole.
    let mut on_line: Vec<(Span, &Mask)> = masks
        .iter()
        .filter(|m| m.span.start < line_end && m.span.end > line_start && m.span.start < m.span.end)
        .map(|m| (m.span.start.max(line_start)..m.span.end.min(line_end), m))
        .collect();
    on_line.sort_by_key(|(piece, m)| (piece.start, !m.whole));
    let mut pieces: Vec<(Span, String, bool)> = Vec::new();
    let mut at = line_start;
    for (piece, m) in on_line {
        if piece.start < at {
            continue;
        }
        if piece.start > at {
            pieces.push((at..piece.start, text[at..piece.start].to_string(), false));
        }
        let shown = if m.whole {
            mask(text, &piece, &m.span)
        } else {
            mask_url(&text[piece.clone()])
        };
        pieces.push((piece.clone(), shown, true));
        at = piece.end;
    }
    if at < line_end {
        pieces.push((at..line_end, text[at..line_end].to_string(), false));
    }

    // Character columns of a byte offset in the printed line: inside a
    // masked piece, its start (or its end, for the caret's end).
    let column = |offset: usize, is_end: bool| {
        let mut col = 0;
        for (range, shown, masked) in &pieces {
            if offset >= range.end {
                col += shown.chars().count();
                continue;
            }
            if offset > range.start {
                col += match (masked, is_end) {
                    (true, true) => shown.chars().count(),
                    (true, false) => 0,
                    (false, _) => text[range.start..offset].chars().count(),
                };
            }
            break;
        }
        col
    };
    let source: String = pieces.iter().map(|(_, s, _)| s.as_str()).collect();
    let caret_start = column(start, false);
    let caret_end = column(end, true).max(caret_start + 1);
    Location {
        line: text[..start].matches('\n').count() + 1,
        column: text[line_start..start].chars().count() + 1,
        source,
        caret: caret_start..caret_end,
    }
}

/// Locates `span` in text that did not parse: nothing is known of its values,
/// so every value on the line (what follows the first `=`) is masked.
pub(super) fn locate_unparsed(text: &str, span: &Span) -> Location {
    let start = floor(text, span.start.min(text.len()));
    let (line_start, line_end) = line_around(text, start);
    let line = &text[line_start..line_end];
    let (comment, equals) = scan_line(line);
    let value_end = comment.unwrap_or(line.len());
    let masks: Vec<Mask> = equals
        .map(|eq| {
            let from = eq
                + 1
                + (line[eq + 1..value_end].len() - line[eq + 1..value_end].trim_start().len());
            let to = line[..value_end].trim_end().len().max(from);
            Mask {
                span: line_start + from..line_start + to,
                whole: true,
            }
        })
        .into_iter()
        .collect();
    locate(text, span, &masks)
}

/// The line around byte `at`, without its line ending.
fn line_around(text: &str, at: usize) -> (usize, usize) {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let end = if text[start..end].ends_with('\r') {
        end - 1
    } else {
        end
    };
    (start, end.max(start))
}

/// In one line of TOML: where a comment starts (its `#`), and where the
/// first `=` outside a string is.
fn scan_line(line: &str) -> (Option<usize>, Option<usize>) {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut equals = None;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '=' if equals.is_none() => equals = Some(i),
                '#' => return (Some(i), equals),
                _ => {}
            },
        }
    }
    (None, equals)
}

/// The largest char boundary at or below `i`.
fn floor(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `piece` of the secret `whole` as printed: its quotes and `${NAME}`
/// references kept (names are not secret), every other run of characters `***`.
fn mask(text: &str, piece: &Span, whole: &Span) -> String {
    let raw = &text[piece.clone()];
    let quote = |s: &str, from_end: bool| -> usize {
        let chars: Vec<char> = if from_end {
            s.chars().rev().collect()
        } else {
            s.chars().collect()
        };
        match chars.first() {
            Some(&q @ ('"' | '\'')) => chars.iter().take(3).take_while(|&&c| c == q).count(),
            _ => 0,
        }
    };
    let open = if piece.start == whole.start {
        quote(raw, false)
    } else {
        0
    };
    // Closing quotes only of a string: a piece that opened with quotes, or
    // the last line of one that opened on an earlier line.
    let string = open > 0 || piece.start != whole.start;
    let close = if piece.end == whole.end && raw.len() > open && string {
        quote(&raw[open..], true)
    } else {
        0
    };
    let inner = &raw[open..raw.len() - close];
    let mut out = raw[..open].to_string();
    let mut literal = false;
    let mut rest = inner;
    while !rest.is_empty() {
        let reference = rest.strip_prefix("${").and_then(|tail| {
            let end = tail.find('}')?;
            let name = &tail[..end];
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| &rest[..end + 3])
        });
        match reference {
            Some(r) => {
                out.push_str(r);
                rest = &rest[r.len()..];
                literal = false;
            }
            None => {
                if !literal {
                    out.push_str("***");
                    literal = true;
                }
                let skip = if rest.starts_with("$${") { 3 } else { 1 };
                let skip = rest.char_indices().nth(skip).map_or(rest.len(), |(i, _)| i);
                rest = &rest[skip..];
            }
        }
    }
    out.push_str(&raw[raw.len() - close..]);
    out
}

/// A URL as written, its credentials, query and fragment masked:
/// `"https://***@host/path?***"`.
fn mask_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else {
        return raw.to_string();
    };
    let (head, rest) = raw.split_at(scheme_end);
    let quote = rest.ends_with(['"', '\'']);
    let (rest, closing) = if quote {
        rest.split_at(rest.len() - 1)
    } else {
        (rest, "")
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let mut out = head.to_string();
    match authority.rfind('@') {
        Some(i) => {
            out.push_str("***");
            out.push_str(&authority[i..]);
        }
        None => out.push_str(authority),
    }
    match path.find(['?', '#']) {
        Some(i) => {
            out.push_str(&path[..=i]);
            out.push_str("***");
        }
        None => out.push_str(path),
    }
    out.push_str(closing);
    out
}

/// Colours of the report, when it goes to a terminal.
#[derive(Debug, Clone, Copy)]
pub(super) struct Paint {
    on: bool,
}

impl Paint {
    pub(super) fn new(on: bool) -> Self {
        Self { on }
    }

    fn wrap(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// One problem: `level: path: message`, and where it is when known, its line
/// number right-aligned in `width` columns (the widest of the report's).
pub(super) fn render(
    out: &mut String,
    level: &str,
    paint: Paint,
    file: &str,
    head: &str,
    at: Option<&Location>,
    width: usize,
) {
    let level_colour = if level == "error" { "1;31" } else { "1;33" };
    let _ = writeln!(
        out,
        "{}{}",
        paint.wrap(level_colour, level),
        paint.wrap("1", &format!(": {head}"))
    );
    let Some(at) = at else { return };
    let number = format!("{:>width$}", at.line);
    let pad = " ".repeat(number.len());
    let blue = |s: &str| paint.wrap("1;34", s);
    let under: String = at
        .source
        .chars()
        .take(at.caret.start)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let carets = "^".repeat(at.caret.end - at.caret.start);
    let _ = writeln!(out, "{pad}{} {file}:{}:{}", blue("-->"), at.line, at.column);
    let _ = writeln!(out, "{pad} {}", blue("|"));
    let _ = writeln!(out, "{} {}", blue(&format!("{number} |")), at.source);
    let _ = writeln!(
        out,
        "{pad} {} {under}{}",
        blue("|"),
        paint.wrap(level_colour, &carets)
    );
}
