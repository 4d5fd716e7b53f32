//! Whole-file validation: every problem at once, each with its TOML path and the bad value; a valid producer comes out compiled.

use std::collections::BTreeSet;

use chrono_tz::Tz;

use super::de::{Found, Overflow, Read};
use super::tree::join;
use super::types::*;
use super::{parse_cron, Producer, Schedule};
use crate::canonical::{check_pointer, RecordHasher};
use crate::ingest::email::Rules;
use crate::keyframe::fetch::{Plan, BUCKET_BITS_MAX};

struct Check<'a> {
    found: &'a mut Vec<Found>,
    /// What reading the file found: poisoned paths and integers out of range.
    read: &'a Read,
    /// Problems pushed, including those dropped at poisoned paths.
    pushed: usize,
    /// Paths whose range was checked (an overflow there is reported by the check).
    ranged: BTreeSet<String>,
}

impl Check<'_> {
    /// Problems found so far: a step that added none passed.
    fn found(&self) -> usize {
        self.pushed
    }

    /// A problem at `path`, unless one was reported there already (a value of
    /// the wrong type, an unset variable): one mistake, one problem.
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.add(path.into(), message.into(), false);
    }

    /// A problem with the key at `path` itself, such as an invalid header name.
    fn push_key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.add(path.into(), message.into(), true);
    }

    fn add(&mut self, path: String, message: String, on_key: bool) {
        self.pushed += 1;
        if !self.read.is_poisoned(&path) {
            self.found.push(Found {
                path,
                message,
                span: None,
                on_key,
            });
        }
    }

    /// Whether the values at `paths` are as written and in range, so a rule
    /// that compares them says something about the file rather than about a
    /// stand-in.
    fn usable(&self, paths: &[&str]) -> bool {
        paths
            .iter()
            .all(|p| !self.read.is_poisoned(p) && !self.read.overflows.contains_key(*p))
    }

    /// Whether any value at or under `at` was poisoned or out of range.
    fn tainted(&self, at: &str) -> bool {
        let inside = |p: &String| {
            p == at || p.starts_with(&format!("{at}.")) || p.starts_with(&format!("{at}["))
        };
        self.read.poisoned.iter().any(inside)
            || self.read.overflows.keys().any(inside)
            || self.read.is_poisoned(at)
    }

    /// An integer setting in `lo..=hi` (`hi` absent: only its type bounds it);
    /// the message says the range whether the value fits its type or not.
    fn bounded(
        &mut self,
        path: impl Into<String>,
        typed: impl Into<i128>,
        lo: i128,
        hi: Option<i128>,
    ) {
        let path = path.into();
        let over = self.read.overflows.get(&path).copied();
        self.ranged.insert(path.clone());
        let value = over.map_or(typed.into(), |o| i128::from(o.value));
        let message = if value < lo || hi.is_some_and(|hi| value > hi) {
            Some(match hi {
                Some(hi) => format!("must be between {lo} and {hi}, not {value}"),
                None => format!("must be at least {lo}, not {value}"),
            })
        } else {
            over.map(out_of_type)
        };
        if let Some(message) = message {
            self.push(path, message);
        }
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

/// The range of an integer's type, for one its type cannot hold.
fn out_of_type(o: Overflow) -> String {
    if i128::from(o.value) < o.min {
        format!("must be at least {}, not {}", o.min, o.value)
    } else {
        format!("must be at most {}, not {}", o.max, o.value)
    }
}

/// `usize` settings are bounded as `u64`s.
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `[server] listen`: `HOST:PORT` with a host name or an IP address (IPv6 in
/// brackets); the name is resolved when the server binds, not here, so
/// `driftd check` looks nothing up.
fn check_listen(listen: &str) -> Result<(), String> {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return Err("expected HOST:PORT, such as 127.0.0.1:7070 or localhost:7070".into());
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("port {port:?} must be a number from 0 to 65535"));
    }
    if let Some(ip) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match ip.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{ip:?} is not an IPv6 address")),
        };
    }
    if host.contains(':') {
        return Err("an IPv6 address is written in brackets: [::1]:7070".into());
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    let numeric = labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()));
    if host.len() > 253 || numeric || !labels.iter().all(|l| label(l)) {
        return Err(format!("{host:?} is not a host name or an IP address"));
    }
    Ok(())
}

/// Checks the whole file, pushing every problem; returns the compiled
/// producers when each of them is valid (`found` may still hold problems
/// of the server or database settings).
pub(super) fn validate(
    config: &ConfigFile,
    read: &Read,
    found: &mut Vec<Found>,
    warnings: &mut Vec<Found>,
) -> Option<Vec<Producer>> {
    let mut c = Check {
        found,
        read,
        pushed: 0,
        ranged: BTreeSet::new(),
    };
    let producers = validate_all(&mut c, config, warnings);
    // An integer its type cannot hold, in a setting with no range of its own.
    for (path, o) in &read.overflows {
        if !c.ranged.contains(path) {
            c.push(path.clone(), out_of_type(*o));
        }
    }
    producers
}

fn validate_all(
    c: &mut Check<'_>,
    config: &ConfigFile,
    warnings: &mut Vec<Found>,
) -> Option<Vec<Producer>> {
    let server = &config.server;
    if let Err(e) = check_listen(&server.listen) {
        c.push(
            "server.listen",
            format!("invalid listen address {:?}: {e}", server.listen),
        );
    }
    if let (Some(read), Some(admin)) = (&server.read_token, &server.admin_token) {
        if c.usable(&["server.read_token", "server.admin_token"]) && read.expose() == admin.expose()
        {
            c.push(
                "server.read_token",
                "must differ from server.admin_token: the application's token must not grant admin rights",
            );
        }
    }
    c.bounded(
        "server.body_limit_bytes",
        wide(server.body_limit_bytes),
        1,
        None,
    );
    c.bounded(
        "server.header_read_timeout_secs",
        server.header_read_timeout_secs,
        1,
        None,
    );
    if c.usable(&["server.idle_timeout_secs", "server.request_timeout_secs"])
        && server.idle_timeout_secs <= server.request_timeout_secs
    {
        c.push(
            "server.idle_timeout_secs",
            format!(
                "{} must be greater than server.request_timeout_secs ({}): a request still being handled moves no bytes",
                server.idle_timeout_secs, server.request_timeout_secs
            ),
        );
    }
    c.bounded(
        "server.max_connections",
        wide(server.max_connections),
        1,
        None,
    );
    let url = config.database.url.expose();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        // Only a scheme is named: the rest of the URL may hold a password.
        let message = match url.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch)) =>
            {
                format!("unsupported database scheme {scheme:?}: use sqlite://PATH or postgres://…")
            }
            _ => "not a database URL (value not shown): use sqlite://PATH or postgres://…".into(),
        };
        c.push("database.url", message);
    }
    c.bounded(
        "database.max_connections",
        config.database.max_connections,
        1,
        None,
    );
    if config.producers.is_empty() && !c.read.is_poisoned("producer") {
        warnings.push(Found {
            path: "producer".into(),
            message: "no producers configured: driftd will only serve metrics".into(),
            span: None,
            on_key: false,
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
        // A schedule already found wrong says nothing about [producer.adaptive].
        let schedule_usable = c.usable(&[&format!("{at}.schedule")]);
        let cron = if adaptive {
            validate_adaptive(c, &at, p.adaptive.as_ref());
            None
        } else {
            if p.adaptive.is_some() && schedule_usable {
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
        c.bounded(
            format!("{at}.bucket_bits"),
            p.bucket_bits,
            0,
            Some(BUCKET_BITS_MAX.into()),
        );
        if !(p.max_drift_ratio > 0.0 && p.max_drift_ratio <= 1.0) {
            c.push(
                format!("{at}.max_drift_ratio"),
                format!("max_drift_ratio {} must be in (0, 1]", p.max_drift_ratio),
            );
        }
        c.bounded(format!("{at}.unhealthy_after"), p.unhealthy_after, 1, None);
        let hasher = validate_snapshot(c, &format!("{at}.snapshot"), &p.snapshot);
        if let Some(w) = &p.webhook {
            validate_webhook(c, warnings, &format!("{at}.webhook"), w);
        }
        let rules = match &p.email {
            Some(e) => validate_email(c, &format!("{at}.email"), e).map(Some),
            None => Some(None),
        };
        validate_work(c, &format!("{at}.work"), &p.work);
        validate_fetch(c, &at, p);
        let schedule = match (cron, tz) {
            (Some(cron), Some(tz)) => Some(Schedule::new(cron, tz)),
            (None, Some(_)) if adaptive => Some(Schedule::adaptive()),
            _ => None,
        };
        if let (Some(schedule), Some(hasher), Some(rules)) = (schedule, hasher, rules) {
            // A producer is compiled only from values as written: a stand-in
            // for a bad one would fail here for a reason already reported.
            if c.found() == before && !c.tainted(&at) {
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
    header_names(c, &format!("{at}.headers"), s.headers.keys());
    c.bounded(format!("{at}.timeout_secs"), s.timeout_secs, 1, None);
    c.bounded(format!("{at}.max_pages"), s.max_pages, 1, None);
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
    if let Some(limit) = pg.limit {
        c.bounded(format!("{pat}.limit"), limit, 1, None);
    }
    hasher
}

/// Header names HTTP cannot carry, each reported at its key.
fn header_names<'k>(c: &mut Check<'_>, at: &str, names: impl Iterator<Item = &'k String>) {
    for name in names {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.push_key(join(at, name), format!("invalid header name {name:?}"));
        }
    }
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

fn validate_webhook(c: &mut Check<'_>, warnings: &mut Vec<Found>, at: &str, w: &WebhookConfig) {
    match w.scheme {
        // A scheme already found wrong says nothing about what it needs.
        _ if !c.usable(&[&format!("{at}.scheme")]) => {}
        SignatureScheme::None => warnings.push(Found {
            path: format!("{at}.scheme"),
            message: "scheme \"none\": anyone who can reach the endpoint can write deltas".into(),
            span: None,
            on_key: false,
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
        // The groups are known only when every regex of the rule compiled:
        // a bad regex is one problem, not also a missing group for each use.
        let mut known = true;
        for (field, re) in [("subject", &r.subject), ("body", &r.body)] {
            if let Some(re) = re {
                let path = format!("{rat}.{field}");
                known &= c.usable(&[&path]);
                match c.regex(path, re) {
                    Some(re) => groups.extend(re.capture_names().flatten().map(str::to_string)),
                    None => known = false,
                }
            }
        }
        if r.subject.is_none() && r.body.is_none() {
            c.push(rat.clone(), "a rule needs a subject or a body regex");
            continue;
        }
        let need_group = |c: &mut Check<'_>, path: String, g: &str| {
            if known && !groups.contains(g) {
                c.push(path, format!("no named group {g:?} in the rule's regexes"));
            }
        };
        need_group(c, format!("{rat}.key"), &r.key);
        if let Some(v) = &r.version {
            need_group(c, format!("{rat}.version"), v);
        }
        for (pointer, group) in &r.set {
            let path = join(&format!("{rat}.set"), pointer);
            if let Err(e) = check_pointer(pointer) {
                c.push_key(path.clone(), e.to_string());
            }
            need_group(c, path, group);
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
    c.bounded(format!("{at}.max_attempts"), w.max_attempts, 1, None);
    c.bounded(format!("{at}.concurrency"), w.concurrency, 1, None);
    c.bounded(format!("{at}.lease_secs"), w.lease_secs, 1, None);
    let (lease, timeout) = (format!("{at}.lease_secs"), format!("{at}.timeout_secs"));
    if w.lease_secs > 0
        && c.usable(&[&lease, &timeout, &format!("{at}.action")])
        && w.action == Action::Http
        && w.lease_secs <= w.timeout_secs
    {
        // A lease that can end while a call still runs lets another worker
        // deliver the same item again (the lease is renewed, but a renewal
        // that is late must not be the only guard).
        c.push(
            lease,
            format!(
                "{} must be greater than timeout_secs {}: an item's lease must outlast its call",
                w.lease_secs, w.timeout_secs
            ),
        );
    }
    backoff(c, at, w.backoff_base_ms, w.backoff_max_ms);
}

/// `backoff_base_ms` no greater than `backoff_max_ms`, both as written.
fn backoff(c: &mut Check<'_>, at: &str, base: u64, max: u64) {
    let (base_at, max_at) = (
        format!("{at}.backoff_base_ms"),
        format!("{at}.backoff_max_ms"),
    );
    if c.usable(&[&base_at, &max_at]) && base > max {
        c.push(base_at, format!("{base} exceeds backoff_max_ms {max}"));
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
    // One problem for a min_interval_secs of 0 or less: it is not positive.
    if a.min_interval_secs > 0.0 && a.min_interval_secs < 0.1 {
        c.push(
            format!("{aat}.min_interval_secs"),
            format!("min_interval_secs {} is below 0.1", a.min_interval_secs),
        );
    }
    let (min_at, max_at) = (
        format!("{aat}.min_interval_secs"),
        format!("{aat}.max_interval_secs"),
    );
    if c.usable(&[&min_at, &max_at])
        && a.min_interval_secs > 0.0
        && a.max_interval_secs < a.min_interval_secs
    {
        c.push(
            format!("{aat}.max_interval_secs"),
            format!(
                "max_interval_secs {} is below min_interval_secs {}",
                a.max_interval_secs, a.min_interval_secs
            ),
        );
    }
    if let Some(n) = a.max_pulls_per_day {
        c.bounded(format!("{aat}.max_pulls_per_day"), n, 1, None);
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
        header_names(
            c,
            &format!("{fat}.headers"),
            f.headers.iter().flat_map(|h| h.keys()),
        );
        for (field, value) in [
            ("timeout_secs", f.timeout_secs),
            ("max_attempts", u64::from(f.max_attempts)),
            ("concurrency", u64::from(f.concurrency)),
        ] {
            c.bounded(format!("{fat}.{field}"), value, 1, None);
        }
        backoff(c, &fat, f.backoff_base_ms, f.backoff_max_ms);
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
        c.bounded(format!("{kat}.every_secs"), k.every_secs, 1, None);
        if p.snapshot.version.is_none() {
            c.push(
                kat.to_string(),
                "needs snapshot.version: a catch-up starts from the newest version it saw",
            );
        }
    }
}
