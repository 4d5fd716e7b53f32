//! The maildir watcher: every ~500 ms, each message in `new/` is committed to the inbox, then moved to `cur/` (never before), then applied.
//!
//! Files are taken in name order (maildir names start with the delivery
//! time). A message is moved to `cur/NAME:2,S` ("seen") only after the
//! transaction holding it committed; a crash in between leaves it in `new/`,
//! and its next commit is recorded as a duplicate when it has a `Message-ID`.
//! A message larger than `server.body_limit_bytes` is recorded as `rejected`
//! without its body and moved to `cur/` all the same: kept, not dropped.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::apply::{dedup_key, Plan};
use super::pipeline::{effect, email_plan_of, Pipeline};
use crate::entity::Source;
use crate::store::{now_ms, Channel, InboxEntry, InboxOutcome};

/// How often `new/` is scanned.
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// Messages committed per scan (one transaction).
const PER_SCAN: usize = 64;

/// Maildir problems; each names the path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaildirError {
    #[error("cannot prepare maildir {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot commit {count} messages of {path}: {source}")]
    Commit {
        path: PathBuf,
        count: usize,
        source: crate::store::StoreError,
    },
}

/// Watches `root` for `producer` until `cancel`.
pub(crate) async fn watch(
    pipeline: Pipeline,
    producer: String,
    root: PathBuf,
    body_limit: usize,
    cancel: CancellationToken,
) {
    let mut watcher = Watcher {
        pipeline,
        producer,
        root,
        body_limit,
        unmoved: HashSet::new(),
    };
    let mut last_error: Option<String> = None;
    loop {
        match watcher.scan().await {
            Ok(n) => {
                if n > 0 {
                    debug!(producer = %watcher.producer, messages = n, "maildir messages committed");
                }
                last_error = None;
            }
            Err(e) => {
                // Once per distinct problem, not every half second.
                let shown = e.to_string();
                if last_error.as_deref() != Some(shown.as_str()) {
                    warn!(producer = %watcher.producer, error = %shown, "maildir scan failed; retrying");
                    last_error = Some(shown);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}

/// One producer's maildir.
struct Watcher {
    pipeline: Pipeline,
    producer: String,
    root: PathBuf,
    body_limit: usize,
    /// Committed messages whose move to `cur/` failed: not committed again.
    unmoved: HashSet<OsString>,
}

impl Watcher {
    /// Commits up to [`PER_SCAN`] messages of `new/` and moves them to
    /// `cur/`; returns how many were committed.
    async fn scan(&mut self) -> Result<usize, MaildirError> {
        for sub in ["new", "cur", "tmp"] {
            let path = self.root.join(sub);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|source| MaildirError::Prepare { path, source })?;
        }
        let new = self.root.join("new");
        let mut names = self.list(&new).await?;
        self.retry_moves(&mut names).await;
        names.sort();
        names.truncate(PER_SCAN);

        let Some(p) = self.pipeline.producers.get(&self.producer) else {
            return Ok(0);
        };
        let mut items = Vec::with_capacity(names.len());
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let path = new.join(&name);
            let (body, effect, message_id) = match read_message(&path, self.body_limit).await {
                Ok(Message::Fits(raw)) => {
                    let (plan, id) = email_plan_of(p, &raw, Source::Email);
                    (raw, effect(p, plan), id)
                }
                Ok(Message::TooLarge(len)) => {
                    let reason = format!(
                        "message of {len} bytes exceeds server.body_limit_bytes ({}); kept in {}",
                        self.body_limit,
                        self.root.join("cur").display()
                    );
                    (Vec::new(), effect(p, Plan::Rejected(reason)), None)
                }
                // Taken away between the listing and the read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warn!(producer = %self.producer, file = %path.display(), error = %e,
                        "cannot read a maildir message; leaving it in new/");
                    continue;
                }
            };
            let headers = serde_json::json!({ "maildir_file": name.to_string_lossy() });
            let entry = InboxEntry {
                producer: self.producer.clone(),
                channel: Channel::Email,
                received_at: now_ms(),
                dedup_key: message_id.as_deref().and_then(dedup_key),
                headers: headers.to_string(),
                body,
            };
            items.push((entry, effect));
            files.push(name);
        }
        if items.is_empty() {
            return Ok(0);
        }
        let count = items.len();
        let settled = self
            .pipeline
            .commit(items)
            .await
            .map_err(|source| MaildirError::Commit {
                path: new.clone(),
                count,
                source,
            })?;
        for (name, s) in files.into_iter().zip(&settled) {
            if s.outcome == InboxOutcome::Unmatched {
                debug!(producer = %self.producer, inbox_id = s.id, "email matched no rule; kept as unmatched");
            }
            self.move_to_cur(name).await;
        }
        Ok(count)
    }

    async fn list(&self, new: &Path) -> Result<Vec<OsString>, MaildirError> {
        let list_err = |source| MaildirError::List {
            path: new.to_path_buf(),
            source,
        };
        let mut dir = tokio::fs::read_dir(new).await.map_err(list_err)?;
        let mut names = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(list_err)? {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type().await.is_ok_and(|t| t.is_file()) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Moves already-committed messages again instead of committing them twice.
    async fn retry_moves(&mut self, names: &mut Vec<OsString>) {
        if self.unmoved.is_empty() {
            return;
        }
        let present: HashSet<OsString> = names.iter().cloned().collect();
        self.unmoved.retain(|n| present.contains(n));
        let pending: Vec<OsString> = self.unmoved.iter().cloned().collect();
        names.retain(|n| !self.unmoved.contains(n));
        for name in pending {
            self.unmoved.remove(&name);
            self.move_to_cur(name).await;
        }
    }

    async fn move_to_cur(&mut self, name: OsString) {
        let from = self.root.join("new").join(&name);
        let mut seen = name.clone();
        if !name.to_string_lossy().contains(":2,") {
            seen.push(":2,S");
        }
        let to = self.root.join("cur").join(seen);
        if let Err(e) = tokio::fs::rename(&from, &to).await {
            warn!(producer = %self.producer, file = %from.display(), error = %e,
                "committed message could not be moved to cur/; retrying");
            self.unmoved.insert(name);
        }
    }
}

enum Message {
    Fits(Vec<u8>),
    TooLarge(u64),
}

async fn read_message(path: &Path, limit: usize) -> io::Result<Message> {
    let len = tokio::fs::metadata(path).await?.len();
    if len > limit as u64 {
        return Ok(Message::TooLarge(len));
    }
    let raw = tokio::fs::read(path).await?;
    if raw.len() > limit {
        return Ok(Message::TooLarge(raw.len() as u64));
    }
    Ok(Message::Fits(raw))
}
