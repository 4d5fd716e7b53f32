//! The RFC 8288 `Link` header parser: finds the `rel="next"` target. Pure.

/// The target of the first `rel="next"` link among `Link` header values.
pub(super) fn next_link(values: &[String]) -> Option<String> {
    values.iter().find_map(|v| {
        parse_links(v)
            .into_iter()
            .find(|(_, rels)| rels.iter().any(|r| r == "next"))
            .map(|(target, _)| target)
    })
}

/// Parses an RFC 8288 `Link` value into `(target, rel values in lowercase)`.
fn parse_links(header: &str) -> Vec<(String, Vec<String>)> {
    let mut sc = Scan { s: header, i: 0 };
    let mut out = Vec::new();
    loop {
        while sc.peek().is_some_and(|c| c == ',' || c.is_whitespace()) {
            sc.bump();
        }
        match sc.bump() {
            None => break,
            Some('<') => {}
            Some(_) => {
                sc.skip_link();
                continue;
            }
        }
        let target = sc.take_while(|c| c != '>').to_string();
        if sc.bump() != Some('>') {
            break;
        }
        let mut rels: Option<Vec<String>> = None;
        loop {
            sc.skip_ws();
            if sc.peek() != Some(';') {
                break;
            }
            sc.bump();
            sc.skip_ws();
            let name = sc
                .take_while(|c| !matches!(c, '=' | ';' | ',') && !c.is_whitespace())
                .to_ascii_lowercase();
            sc.skip_ws();
            let mut value = String::new();
            if sc.peek() == Some('=') {
                sc.bump();
                sc.skip_ws();
                if sc.peek() == Some('"') {
                    sc.bump();
                    while let Some(c) = sc.bump() {
                        match c {
                            '"' => break,
                            '\\' => value.extend(sc.bump()),
                            c => value.push(c),
                        }
                    }
                } else {
                    value = sc
                        .take_while(|c| !matches!(c, ';' | ',') && !c.is_whitespace())
                        .to_string();
                }
            }
            // RFC 8288 §3.3: occurrences of rel after the first are ignored.
            if name == "rel" && rels.is_none() {
                rels = Some(
                    value
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect(),
                );
            }
        }
        out.push((target, rels.unwrap_or_default()));
        sc.skip_link();
    }
    out
}

struct Scan<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.i]
    }

    /// Skips to the comma ending the current link (quotes respected).
    fn skip_link(&mut self) {
        let mut quoted = false;
        while let Some(c) = self.peek() {
            match c {
                ',' if !quoted => return,
                '"' => quoted = !quoted,
                '\\' if quoted => {
                    self.bump();
                }
                _ => {}
            }
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_parse_per_rfc_8288() {
        let links = [
            r#"<https://a.test/p?x=1>; rel="first", </p?page=3>; title="a, b; rel=next"; rel="last next""#.to_string(),
        ];
        assert_eq!(next_link(&links).as_deref(), Some("/p?page=3"));
        let unquoted = ["<https://a.test/2>; rel=next".to_string()];
        assert_eq!(next_link(&unquoted).as_deref(), Some("https://a.test/2"));
        let split = [
            "</1>; rel=prev".to_string(),
            "</3>; REL=\"Next\"".to_string(),
        ];
        assert_eq!(next_link(&split).as_deref(), Some("/3"));
        let none = [r#"</1>; rel="prev nextish"; rel=next, junk, <"#.to_string()];
        assert_eq!(next_link(&none), None, "only the first rel counts");
    }
}
