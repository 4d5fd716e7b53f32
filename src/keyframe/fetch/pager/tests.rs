//! The pager driven by tables: for each style, the pages a pull sees and the URLs or errors the pager answers.

use serde_json::json;

use super::*;
use crate::canonical::RecordHasher;
use crate::keyframe::fetch::plan::Plan;

/// What a test page said: `page(items)`, then what else it carried.
struct Said {
    items: u64,
    captured: Option<Value>,
    last_key: Option<&'static str>,
    links: Vec<String>,
    /// The URL that answered, when a redirect moved it.
    url: Option<&'static str>,
}

fn page(items: u64) -> Said {
    Said {
        items,
        captured: None,
        last_key: None,
        links: Vec::new(),
        url: None,
    }
}

impl Said {
    fn with(mut self, captured: Value) -> Self {
        self.captured = Some(captured);
        self
    }

    fn last(mut self, key: &'static str) -> Self {
        self.last_key = Some(key);
        self
    }

    fn link(mut self, value: &str) -> Self {
        self.links.push(value.to_string());
        self
    }

    fn from(mut self, url: &'static str) -> Self {
        self.url = Some(url);
        self
    }
}

/// Steps the pager for the snapshot config `toml` through `pages`: the
/// first URL, then after each page the next URL, `end`, or the error as
/// `pull` reports it.
fn run(toml: &str, pages: Vec<Said>) -> Vec<String> {
    let cfg: SnapshotConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let plan = Plan::new(&cfg, &RecordHasher::default(), 8).unwrap();
    let (mut pager, first) = Pager::start(&cfg, plan.base.clone(), plan.capture_pointer);
    let mut out = vec![first.to_string()];
    let mut url = first;
    let count = pages.len();
    for (number, said) in (1..).zip(pages) {
        let answered = said.url.map_or(url.clone(), |u| Url::parse(u).unwrap());
        let page = Page {
            number,
            items: said.items,
            captured: said.captured.as_ref(),
            last_key: said.last_key,
            links: &said.links,
            url: &answered,
        };
        let ended = match pager.step(&page) {
            Ok(Some(next)) => {
                out.push(next.to_string());
                url = next;
                continue;
            }
            Ok(None) => "end".to_string(),
            Err(e) => {
                let at = PageAt {
                    page: number,
                    url: shown(&url),
                };
                e.at(at).to_string()
            }
        };
        assert_eq!(number, count as u64, "pages left after {ended:?}");
        out.push(ended);
        break;
    }
    out
}

/// Runs each case of a table on the config `toml`, whose first URL is
/// `first`: a name, its pages and what the pager said after each page.
fn check(toml: &str, first: &str, cases: Vec<(&str, Vec<Said>, &[&str])>) {
    for (name, pages, expected) in cases {
        let said = run(toml, pages);
        assert_eq!(said[0], first, "{name}");
        assert_eq!(said[1..], *expected, "{name}");
    }
}

#[test]
fn none_reads_the_url_once() {
    check(
        r#"url = "http://v.test/all?x=1""#,
        "http://v.test/all?x=1",
        vec![("one page", vec![page(5)], &["end"])],
    );
}

#[test]
fn cursor_style() {
    let long = "x".repeat(100);
    check(
        r#"url = "http://v.test/items?cursor=c0&region=eu"
           pagination = { style = "cursor", cursor = "/next", limit = 2 }"#,
        "http://v.test/items?cursor=c0&region=eu&limit=2",
        vec![
            (
                "strings and numbers, until null",
                vec![
                    page(2).with(json!("c2")),
                    page(2).with(json!(4)),
                    page(1).with(json!(null)),
                ],
                &[
                    "http://v.test/items?region=eu&cursor=c2&limit=2",
                    "http://v.test/items?region=eu&cursor=4&limit=2",
                    "end",
                ],
            ),
            (
                "an empty cursor ends",
                vec![page(2).with(json!(""))],
                &["end"],
            ),
            ("no cursor ends", vec![page(2)], &["end"]),
            (
                "the cursor in the URL counts as requested",
                vec![page(2).with(json!("c0"))],
                &["page 1 of http://v.test/items: pagination loop: \
                     cursor \"c0\" was already requested"],
            ),
            (
                "a repeated cursor is shown cut",
                vec![page(1).with(json!(long)), page(1).with(json!(long))],
                &[
                    &format!("http://v.test/items?region=eu&cursor={long}&limit=2"),
                    &format!(
                        "page 2 of http://v.test/items: pagination loop: \
                         cursor \"{}…\" was already requested",
                        &long[..80]
                    ),
                ],
            ),
            (
                "an object is no cursor",
                vec![page(2).with(json!({"a": 1}))],
                &["page 1 of http://v.test/items: \
                     cursor at \"/next\" is an object, not a string or a number"],
            ),
        ],
    );
}

#[test]
fn next_url_style() {
    check(
        r#"url = "http://v.test/api/n?page=1"
           pagination = { style = "next_url", next = "/links/next" }"#,
        "http://v.test/api/n?page=1",
        vec![
            (
                "relative, absolute path and absolute URLs, until empty",
                vec![
                    page(1).with(json!("n?page=2")),
                    page(1).with(json!("/api/n?page=3")),
                    page(1).with(json!("http://v.test/api/n?page=4")),
                    page(0).with(json!("")),
                ],
                &[
                    "http://v.test/api/n?page=2",
                    "http://v.test/api/n?page=3",
                    "http://v.test/api/n?page=4",
                    "end",
                ],
            ),
            (
                "null ends",
                vec![page(1).with(json!(null))],
                &["end"],
            ),
            (
                "relative to the URL that answered",
                vec![page(1)
                    .with(json!("n?page=2"))
                    .from("http://v.test/v2/n?page=1")],
                &["http://v.test/v2/n?page=2"],
            ),
            (
                "another origin never gets the headers",
                vec![page(1).with(json!("http://other.test/n?token=t"))],
                &[
                    "page 1 of http://v.test/api/n: next URL http://other.test/n is not on the origin of \
                         http://v.test/api/n: headers are only sent to that origin",
                ],
            ),
            (
                "back to the first page",
                vec![page(1).with(json!("n?page=1"))],
                &[
                    "page 1 of http://v.test/api/n: pagination loop: next URL \"http://v.test/api/n\" \
                         was already requested",
                ],
            ),
            (
                "a number is no URL",
                vec![page(1).with(json!(2))],
                &[
                    "page 1 of http://v.test/api/n: next URL at \"/links/next\" is a number, not a string",
                ],
            ),
            (
                "an invalid URL is named without its query",
                vec![page(1).with(json!("http://[::1/n?token=t"))],
                &[
                    "page 1 of http://v.test/api/n: invalid next URL \"http://[::1/n\": invalid IPv6 address",
                ],
            ),
        ],
    );
}

#[test]
fn link_header_style() {
    check(
        r#"url = "http://v.test/l"
           pagination = { style = "link_header" }"#,
        "http://v.test/l",
        vec![
            (
                "rel=next, relative or absolute, until there is none",
                vec![
                    page(1).link(r#"</l?p=2>; rel="next""#),
                    page(1)
                        .link("</l?p=1>; rel=first")
                        .link("<http://v.test/l?p=3>; rel=next"),
                    page(1).link("</l?p=2>; rel=prev"),
                ],
                &["http://v.test/l?p=2", "http://v.test/l?p=3", "end"],
            ),
            (
                "back to the first page",
                vec![page(1).link("</l>; rel=next")],
                &["page 1 of http://v.test/l: pagination loop: \
                     Link rel=\"next\" \"http://v.test/l\" was already requested"],
            ),
        ],
    );
}

#[test]
fn page_style_with_total_pages() {
    check(
        r#"url = "http://v.test/pg"
           items = "/results"
           pagination = { style = "page", total_pages = "/total", limit_param = "per_page", limit = 2 }"#,
        "http://v.test/pg?page=1&per_page=2",
        vec![
            (
                "the total announced once is kept",
                vec![page(2).with(json!(3)), page(2), page(1)],
                &[
                    "http://v.test/pg?page=2&per_page=2",
                    "http://v.test/pg?page=3&per_page=2",
                    "end",
                ],
            ),
            (
                "no pages at all",
                vec![page(0).with(json!(0))],
                &["end"],
            ),
            (
                "the first page must announce the total",
                vec![page(2)],
                &[
                    "page 1 of http://v.test/pg: total_pages pointer \"/total\" not found",
                ],
            ),
            (
                "the total is a non-negative integer",
                vec![page(2).with(json!(-3))],
                &[
                    "page 1 of http://v.test/pg: total_pages at \"/total\" is a number, not a non-negative integer",
                ],
            ),
            (
                "an empty page before the last",
                vec![page(2).with(json!(5)), page(0).with(json!(5))],
                &[
                    "http://v.test/pg?page=2&per_page=2",
                    "page 2 of http://v.test/pg: short page: no items before the last page \
                         (5 pages announced at \"/total\")",
                ],
            ),
        ],
    );
}

#[test]
fn page_style_without_total_pages() {
    check(
        r#"url = "http://v.test/pz"
           pagination = { style = "page", start = 0, limit = 3 }"#,
        "http://v.test/pz?page=0&limit=3",
        vec![(
            "a short page goes on, an empty one ends",
            vec![page(3), page(1), page(0)],
            &[
                "http://v.test/pz?page=1&limit=3",
                "http://v.test/pz?page=2&limit=3",
                "end",
            ],
        )],
    );
}

#[test]
fn offset_style() {
    check(
        r#"url = "http://v.test/o?skip=9"
           pagination = { style = "offset", param = "skip", limit = 2 }"#,
        "http://v.test/o?skip=0&limit=2",
        vec![
            (
                "full pages advance, a short one ends",
                vec![page(2), page(2), page(1)],
                &[
                    "http://v.test/o?skip=2&limit=2",
                    "http://v.test/o?skip=4&limit=2",
                    "end",
                ],
            ),
            ("an empty first page ends", vec![page(0)], &["end"]),
        ],
    );
}

#[test]
fn after_key_style() {
    check(
        r#"url = "http://v.test/ak"
           pagination = { style = "after_key", has_more = "/meta/more", limit = 2 }"#,
        "http://v.test/ak?limit=2",
        vec![
            (
                "after the last key while more follow",
                vec![
                    page(2).with(json!(true)).last("k2"),
                    page(2).with(json!(true)).last("k4"),
                    page(1).with(json!(false)).last("k5"),
                ],
                &[
                    "http://v.test/ak?starting_after=k2&limit=2",
                    "http://v.test/ak?starting_after=k4&limit=2",
                    "end",
                ],
            ),
            (
                "has_more is required",
                vec![page(1).last("a")],
                &[
                    "page 1 of http://v.test/ak: has_more pointer \"/meta/more\" not found",
                ],
            ),
            (
                "has_more is a boolean",
                vec![page(1).with(json!("yes")).last("a")],
                &[
                    "page 1 of http://v.test/ak: has_more at \"/meta/more\" is a string, not a boolean",
                ],
            ),
            (
                "more after a page without items",
                vec![page(0).with(json!(true))],
                &[
                    "page 1 of http://v.test/ak: has_more at \"/meta/more\" is true on a page without items",
                ],
            ),
            (
                "the same last key twice",
                vec![
                    page(1).with(json!(true)).last("k"),
                    page(1).with(json!(true)).last("k"),
                ],
                &[
                    "http://v.test/ak?starting_after=k&limit=2",
                    "page 2 of http://v.test/ak: pagination loop: after key \"k\" was already requested",
                ],
            ),
        ],
    );
}

#[test]
fn max_pages_bounds_every_style() {
    check(
        r#"url = "http://v.test/pg"
           max_pages = 2
           pagination = { style = "page" }"#,
        "http://v.test/pg?page=1",
        vec![
            (
                "the last page allowed may end the pull",
                vec![page(1), page(0)],
                &["http://v.test/pg?page=2", "end"],
            ),
            (
                "but not announce another",
                vec![page(1), page(1)],
                &[
                    "http://v.test/pg?page=2",
                    "page 2 of http://v.test/pg: more pages follow but max_pages is 2",
                ],
            ),
        ],
    );
    check(
        r#"url = "http://v.test/c"
           max_pages = 2
           pagination = { style = "cursor", cursor = "/next" }"#,
        "http://v.test/c",
        vec![
            (
                "a cursor on the last page allowed",
                vec![page(1).with(json!("a")), page(1).with(json!("b"))],
                &[
                    "http://v.test/c?cursor=a",
                    "page 2 of http://v.test/c: more pages follow but max_pages is 2",
                ],
            ),
            (
                "a loop is reported before the page limit",
                vec![page(1).with(json!("a")), page(1).with(json!("a"))],
                &[
                    "http://v.test/c?cursor=a",
                    "page 2 of http://v.test/c: pagination loop: \
                     cursor \"a\" was already requested",
                ],
            ),
        ],
    );
}

#[test]
fn params_replace_their_name_and_keep_the_others() {
    let base = Url::parse("http://h/p?a=1&cursor=old&b=x%20y").unwrap();
    let url = set_params(&base, &[("cursor", "n&w".into()), ("limit", "5".into())]);
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let expected = [("a", "1"), ("b", "x y"), ("cursor", "n&w"), ("limit", "5")];
    assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(set_params(&base, &[]), base);
}
