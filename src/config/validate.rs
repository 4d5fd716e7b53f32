//! Whole-file validation: every problem at once, each with its TOML path and the bad value; a valid producer comes out compiled.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use chrono_tz::Tz;

use super::load::Problem;
use super::types::*;
use super::{parse_cron, Producer, Schedule};
use crate::canonical::{check_pointer, RecordHasher};
use crate::ingest::email::Rules;
use crate::keyframe::fetch::Plan;

struct Check<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    /// Problems found so far: a step that added none passed.
    fn found(&self) -> usize {
        self.problems.len()
    }

    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn pointer(&mut self, path: impl Into<String>, pointer: &str) {
        if let Err(e) = check_pointer(pointer) {
            self.push(path, e.to_string());
        }
    }

    fn regex(&mut self, path: impl Into<String>, re: &str) -> Option<regex::Regex> {
        match regex::Regex::new(re) {
            Ok(r) => Some(r),
            Err(e) => {
                self.push(path, format!("invalid regex {re:?}: {e}"));
                None
            }
        }
    }

    fn http_url(&mut self, path: impl Into<String>, url: &str) {
        let shown = crate::redact::redact_url(url);
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => self.push(
                path,
                format!("URL {shown:?} must be http or https, not {:?}", u.scheme()),
            ),
            Err(e) => self.push(path, format!("invalid URL {shown:?}: {e}")),
        }
    }
}

/// Checks the whole file, pushing every problem; returns the compiled
/// producers when each of them is valid (`problems` may still hold problems
/// of the server or database settings).
pub(super) fn validate(
    config: &ConfigFile,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<Vec<Producer>> {
    let mut c = Check { problems };

    if let Err(e) = config.server.listen.parse::<SocketAddr>() {
        c.push(
            "server.listen",
            format!("invalid socket address {:?}: {e}", config.server.listen),
        );
    }
    if let (Some(read), Some(admin)) = (&config.server.read_token, &config.server.admin_token) {
        if read.expose() == admin.expose() {
            c.push(
                "server.read_token",
                "must differ from server.admin_token: the application's token must not grant admin rights",
            );
        }
    }
    if config.server.body_limit_bytes == 0 {
        c.push("server.body_limit_bytes", "must be greater than 0");
    }
    let server = &config.server;
    if server.header_read_timeout_secs == 0 {
        c.push("server.header_read_timeout_secs", "must be at least 1");
    }
    if server.idle_timeout_secs <= server.request_timeout_secs {
        c.push(
            "server.idle_timeout_secs",
            format!(
                "{} must be greater than server.request_timeout_secs ({}): a request still being handled moves no bytes",
                server.idle_timeout_secs, server.request_timeout_secs
            ),
        );
    }
    if server.max_connections == 0 {
        c.push("server.max_connections", "must be at least 1");
    }
    let url = config.database.url.expose();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        let scheme = url.split(':').next().unwrap_or_default();
        c.push(
            "database.url",
            format!("unsupported database scheme {scheme:?}: use sqlite://PATH or postgres://…"),
        );
    }
    if config.database.max_connections == 0 {
        c.push("database.max_connections", "must be at least 1");
    }
    if config.producers.is_empty() {
        warnings.push(Problem {
            path: "producer".into(),
            message: "no producers configured: driftd will only serve metrics".into(),
        });
    }

    let mut names = BTreeSet::new();
    let mut producers = Vec::with_capacity(config.producers.len());
    for (i, p) in config.producers.iter().enumerate() {
        let before = c.found();
        let at = format!("producer[{i}]");
        let valid_name = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_');
        if !valid_name {
            c.push(
                format!("{at}.name"),
                format!(
                    "invalid producer name {:?}: use 1-64 of a-z, 0-9, '-', '_'",
                    p.name
                ),
            );
        } else if !names.insert(p.name.as_str()) {
            c.push(
                format!("{at}.name"),
                format!("duplicate producer name {:?}", p.name),
            );
        }
        let adaptive = p.schedule == ADAPTIVE;
        let cron = if adaptive {
            validate_adaptive(&mut c, &at, p.adaptive.as_ref());
            None
        } else {
            if p.adaptive.is_some() {
                c.push(
                    format!("{at}.adaptive"),
                    format!(
                        "only read with schedule = \"{ADAPTIVE}\"; schedule is {:?}",
                        p.schedule
                    ),
                );
            }
            parse_cron(&p.schedule)
                .map_err(|e| {
                    c.push(
                        format!("{at}.schedule"),
                        format!(
                            "invalid cron expression {:?}: {e} (or \"{ADAPTIVE}\")",
                            p.schedule
                        ),
                    );
                })
                .ok()
        };
        let tz = match &p.timezone {
            None => Some(Tz::UTC),
            Some(tz) => tz
                .parse::<Tz>()
                .map_err(|_| {
                    c.push(
                        format!("{at}.timezone"),
                        format!("unknown time zone {tz:?}"),
                    );
                })
                .ok(),
        };
        if p.bucket_bits > 24 {
            c.push(
                format!("{at}.bucket_bits"),
                format!("bucket_bits {} is out of range 0..=24", p.bucket_bits),
            );
        }
        if !(p.max_drift_ratio > 0.0 && p.max_drift_ratio <= 1.0) {
            c.push(
                format!("{at}.max_drift_ratio"),
                format!("max_drift_ratio {} must be in (0, 1]", p.max_drift_ratio),
            );
        }
        if p.unhealthy_after == 0 {
            c.push(format!("{at}.unhealthy_after"), "must be at least 1");
        }
        let hasher = validate_snapshot(&mut c, &format!("{at}.snapshot"), &p.snapshot);
        if let Some(w) = &p.webhook {
            validate_webhook(&mut c, warnings, &format!("{at}.webhook"), w);
        }
        let rules = match &p.email {
            Some(e) => validate_email(&mut c, &format!("{at}.email"), e).map(Some),
            None => Some(None),
        };
        validate_work(&mut c, &format!("{at}.work"), &p.work);
        validate_fetch(&mut c, &at, p);
        let schedule = match (cron, tz) {
            (Some(cron), Some(tz)) => Some(Schedule::new(cron, tz)),
            (None, Some(_)) if adaptive => Some(Schedule::adaptive()),
            _ => None,
        };
        if let (Some(schedule), Some(hasher), Some(rules)) = (schedule, hasher, rules) {
            if c.found() == before {
                // What the checks above left for the pull to find (a header
                // value that is not valid in HTTP) is found here, once.
                match Plan::new(&p.snapshot, &hasher, p.bucket_bits) {
                    Ok(plan) => match Producer::new(p.clone(), schedule, hasher, plan, rules) {
                        Ok(producer) => producers.push(producer),
                        Err(e) => c.push(format!("{at}.fetch"), e),
                    },
                    Err(e) => c.push(format!("{at}.snapshot"), e.to_string()),
                }
            }
        }
    }
    (producers.len() == config.producers.len()).then_some(producers)
}

/// Checks `[producer.snapshot]`; the hasher of its `ignore` pointers when they are valid.
fn validate_snapshot(c: &mut Check<'_>, at: &str, s: &SnapshotConfig) -> Option<RecordHasher> {
    c.http_url(format!("{at}.url"), &s.url);
    c.pointer(format!("{at}.items"), &s.items);
    c.pointer(format!("{at}.key"), &s.key);
    if let Some(v) = &s.version {
        c.pointer(format!("{at}.version"), v);
    }
    let before = c.found();
    for (i, p) in s.ignore.iter().enumerate() {
        c.pointer(format!("{at}.ignore[{i}]"), p);
    }
    let hasher = if c.found() == before {
        RecordHasher::new(&s.ignore)
            .map_err(|e| c.push(format!("{at}.ignore"), e.to_string()))
            .ok()
    } else {
        None
    };
    for name in s.headers.keys() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.push(
                format!("{at}.headers"),
                format!("invalid header name {name:?}"),
            );
        }
    }
    if s.timeout_secs == 0 {
        c.push(format!("{at}.timeout_secs"), "must be at least 1");
    }
    if s.max_pages == 0 {
        c.push(format!("{at}.max_pages"), "must be at least 1");
    }
    if let Some(r) = s.rate_limit {
        if !(r > 0.0 && r.is_finite()) {
            c.push(
                format!("{at}.rate_limit"),
                format!("rate_limit {r} must be a positive number of requests per second"),
            );
        }
    }
    let pg = &s.pagination;
    let pat = format!("{at}.pagination");
    let need = |c: &mut Check<'_>, field: &str, value: &Option<String>| match value {
        Some(p) => c.pointer(format!("{pat}.{field}"), p),
        None => c.push(
            format!("{pat}.{field}"),
            format!("required for style {:?}", style_name(pg.style)),
        ),
    };
    match pg.style {
        PaginationStyle::Cursor => need(c, "cursor", &pg.cursor),
        PaginationStyle::NextUrl => need(c, "next", &pg.next),
        PaginationStyle::Offset if pg.limit.is_none() => {
            c.push(format!("{pat}.limit"), "required for style \"offset\"")
        }
        _ => {}
    }
    for (field, value) in [("total_pages", &pg.total_pages), ("has_more", &pg.has_more)] {
        if let Some(p) = value {
            c.pointer(format!("{pat}.{field}"), p);
        }
    }
    if pg.limit == Some(0) {
        c.push(format!("{pat}.limit"), "must be at least 1");
    }
    hasher
}

fn style_name(style: PaginationStyle) -> &'static str {
    match style {
        PaginationStyle::None => "none",
        PaginationStyle::Cursor => "cursor",
        PaginationStyle::NextUrl => "next_url",
        PaginationStyle::LinkHeader => "link_header",
        PaginationStyle::Page => "page",
        PaginationStyle::Offset => "offset",
        PaginationStyle::AfterKey => "after_key",
    }
}

fn validate_webhook(c: &mut Check<'_>, warnings: &mut Vec<Problem>, at: &str, w: &WebhookConfig) {
    match w.scheme {
        SignatureScheme::None => warnings.push(Problem {
            path: format!("{at}.scheme"),
            message: "scheme \"none\": anyone who can reach the endpoint can write deltas".into(),
        }),
        scheme => {
            if w.secret.is_none() {
                c.push(format!("{at}.secret"), "required unless scheme is \"none\"");
            }
            if scheme == SignatureScheme::HmacSha256 && w.header.is_none() {
                c.push(
                    format!("{at}.header"),
                    "required for scheme \"hmac-sha256\"",
                );
            }
            if scheme == SignatureScheme::StandardWebhooks {
                for (field, s) in [
                    ("secret", &w.secret),
                    ("previous_secret", &w.previous_secret),
                ] {
                    if let Some(s) = s {
                        let raw = s.expose().strip_prefix("whsec_").unwrap_or(s.expose());
                        use base64::Engine as _;
                        if base64::engine::general_purpose::STANDARD
                            .decode(raw)
                            .is_err()
                        {
                            c.push(
                                format!("{at}.{field}"),
                                "must be base64, optionally prefixed with whsec_ (value not shown)",
                            );
                        }
                    }
                }
            }
        }
    }
    c.pointer(format!("{at}.items"), &w.items);
    c.pointer(format!("{at}.key"), &w.key);
    for (field, p) in [
        ("version", &w.version),
        ("deleted", &w.deleted),
        ("event", &w.event),
        ("dedup_pointer", &w.dedup_pointer),
    ] {
        if let Some(p) = p {
            c.pointer(format!("{at}.{field}"), p);
        }
    }
    if !w.delete_events.is_empty() && w.event.is_none() {
        c.push(format!("{at}.event"), "required when delete_events is set");
    }
}

/// Checks `[producer.email]`; its compiled rules when every rule is valid.
fn validate_email(c: &mut Check<'_>, at: &str, e: &EmailConfig) -> Option<Rules> {
    let before = c.found();
    if e.maildir.is_none() && e.secret.is_none() {
        c.push(
            at.to_string(),
            "set maildir, or secret for the inbound-email endpoint, or both",
        );
    }
    for (i, r) in e.rule.iter().enumerate() {
        let rat = format!("{at}.rule[{i}]");
        let mut groups = BTreeSet::new();
        for (field, re) in [("subject", &r.subject), ("body", &r.body)] {
            if let Some(re) = re {
                if let Some(re) = c.regex(format!("{rat}.{field}"), re) {
                    groups.extend(re.capture_names().flatten().map(str::to_string));
                }
            }
        }
        if r.subject.is_none() && r.body.is_none() {
            c.push(rat.clone(), "a rule needs a subject or a body regex");
            continue;
        }
        let need_group = |c: &mut Check<'_>, path: String, g: &str| {
            if !groups.contains(g) {
                c.push(path, format!("no named group {g:?} in the rule's regexes"));
            }
        };
        need_group(c, format!("{rat}.key"), &r.key);
        if let Some(v) = &r.version {
            need_group(c, format!("{rat}.version"), v);
        }
        for (pointer, group) in &r.set {
            c.pointer(format!("{rat}.set"), pointer);
            need_group(c, format!("{rat}.set.{pointer:?}"), group);
        }
    }
    if c.found() > before {
        return None;
    }
    Rules::new(e)
        .map_err(|err| c.push(at.to_string(), err.to_string()))
        .ok()
}

fn validate_work(c: &mut Check<'_>, at: &str, w: &WorkConfig) {
    match (&w.action, &w.url) {
        (Action::Http, None) => c.push(format!("{at}.url"), "required for action \"http\""),
        (Action::Http, Some(url)) => c.http_url(format!("{at}.url"), url),
        _ => {}
    }
    if w.max_attempts == 0 {
        c.push(format!("{at}.max_attempts"), "must be at least 1");
    }
    if w.concurrency == 0 {
        c.push(format!("{at}.concurrency"), "must be at least 1");
    }
    if w.lease_secs == 0 {
        c.push(format!("{at}.lease_secs"), "must be at least 1");
    } else if w.action == Action::Http && w.lease_secs <= w.timeout_secs {
        // A lease that can end while a call still runs lets another worker
        // deliver the same item again (the lease is renewed, but a renewal
        // that is late must not be the only guard).
        c.push(
            format!("{at}.lease_secs"),
            format!(
                "{} must be greater than timeout_secs {}: an item's lease must outlast its call",
                w.lease_secs, w.timeout_secs
            ),
        );
    }
    if w.backoff_base_ms > w.backoff_max_ms {
        c.push(
            format!("{at}.backoff_base_ms"),
            format!(
                "{} exceeds backoff_max_ms {}",
                w.backoff_base_ms, w.backoff_max_ms
            ),
        );
    }
}

/// The `schedule` that paces keyframes by the drift they find.
const ADAPTIVE: &str = "adaptive";

/// Checks `[producer.adaptive]` for `schedule = "adaptive"`; whether it is usable.
fn validate_adaptive(c: &mut Check<'_>, at: &str, a: Option<&AdaptiveConfig>) -> bool {
    let Some(a) = a else {
        c.push(
            format!("{at}.adaptive"),
            "schedule = \"adaptive\" needs a [producer.adaptive] table \
             (min_interval_secs, max_interval_secs, target_drift_seconds)",
        );
        return false;
    };
    let before = c.found();
    let aat = format!("{at}.adaptive");
    for (field, value) in [
        ("min_interval_secs", a.min_interval_secs),
        ("max_interval_secs", a.max_interval_secs),
        ("target_drift_seconds", a.target_drift_seconds),
    ] {
        if !(value.is_finite() && value > 0.0) {
            c.push(
                format!("{aat}.{field}"),
                format!("{field} {value} must be a positive number"),
            );
        }
    }
    if a.min_interval_secs.is_finite() && a.min_interval_secs < 0.1 {
        c.push(
            format!("{aat}.min_interval_secs"),
            format!("min_interval_secs {} is below 0.1", a.min_interval_secs),
        );
    }
    if a.max_interval_secs < a.min_interval_secs {
        c.push(
            format!("{aat}.max_interval_secs"),
            format!(
                "max_interval_secs {} is below min_interval_secs {}",
                a.max_interval_secs, a.min_interval_secs
            ),
        );
    }
    if a.max_pulls_per_day == Some(0) {
        c.push(format!("{aat}.max_pulls_per_day"), "must be at least 1");
    }
    c.found() == before
}

/// Checks `[producer.fetch]`, `[producer.catchup]` and the settings that need them.
fn validate_fetch(c: &mut Check<'_>, at: &str, p: &ProducerConfig) {
    if let Some(f) = &p.fetch {
        let fat = format!("{at}.fetch");
        if f.url.contains("{key}") {
            c.http_url(format!("{fat}.url"), &f.url.replace("{key}", "key"));
        } else {
            c.push(
                format!("{fat}.url"),
                format!(
                    "URL {:?} has no {{key}} to put the record's key in",
                    crate::redact::redact_url(&f.url)
                ),
            );
        }
        c.pointer(format!("{fat}.item"), &f.item);
        for name in f.headers.iter().flat_map(|h| h.keys()) {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                c.push(
                    format!("{fat}.headers"),
                    format!("invalid header name {name:?}"),
                );
            }
        }
        for (field, value) in [
            ("timeout_secs", f.timeout_secs),
            ("max_attempts", u64::from(f.max_attempts)),
            ("concurrency", u64::from(f.concurrency)),
        ] {
            if value == 0 {
                c.push(format!("{fat}.{field}"), "must be at least 1");
            }
        }
        if f.backoff_base_ms > f.backoff_max_ms {
            c.push(
                format!("{fat}.backoff_base_ms"),
                format!(
                    "{} exceeds backoff_max_ms {}",
                    f.backoff_base_ms, f.backoff_max_ms
                ),
            );
        }
    }
    let needs_fetch = |c: &mut Check<'_>, path: String| {
        if p.fetch.is_none() {
            c.push(
                path,
                "mode \"fetch\" needs a [producer.fetch] table with the record's URL",
            );
        }
    };
    if let Some(w) = &p.webhook {
        if w.mode == DeltaMode::Fetch {
            needs_fetch(c, format!("{at}.webhook.mode"));
        }
    }
    if let Some(e) = &p.email {
        for (i, r) in e.rule.iter().enumerate() {
            if r.mode == RuleMode::Fetch {
                needs_fetch(c, format!("{at}.email.rule[{i}].mode"));
            }
        }
    }
    if let Some(k) = &p.catchup {
        let kat = format!("{at}.catchup");
        if k.url.contains("{since}") {
            c.http_url(format!("{kat}.url"), &k.url.replace("{since}", "0"));
        } else {
            c.push(
                format!("{kat}.url"),
                format!(
                    "URL {:?} has no {{since}} to put the time of the last catch-up in",
                    crate::redact::redact_url(&k.url)
                ),
            );
        }
        if k.every_secs == 0 {
            c.push(format!("{kat}.every_secs"), "must be at least 1");
        }
        if p.snapshot.version.is_none() {
            c.push(
                kat.to_string(),
                "needs snapshot.version: a catch-up starts from the newest version it saw",
            );
        }
    }
}
