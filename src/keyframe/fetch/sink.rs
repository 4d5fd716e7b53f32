//! One page body parsed on the blocking pool: each item becomes a
//! `RemoteRecord` in the on-disk index and its JSON is appended to the spill file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};

use serde_json::Value;

use super::error::{PageAt, PullError};
use super::http::Body;
use super::index::{IndexWriter, RecordIndex};
use super::plan::Rules;
use super::walk::{lookup, Found, Walk, WalkError};
use super::{DocAt, RemoteRecord};
use crate::canonical::{bucket_of, key_string, type_name, version_value, Digest};

/// What a page said about pagination.
pub(super) struct PageOutcome {
    pub(super) items: u64,
    /// The value at the style's pagination pointer, when present.
    pub(super) captured: Option<Value>,
    /// Key of the page's last item (for `after_key`).
    pub(super) last_key: Option<String>,
}

/// Accumulates records (in the on-disk index) and their spilled JSON across pages.
pub(super) struct Sink {
    spill: BufWriter<File>,
    offset: u64,
    index: IndexWriter,
    /// Key of the last record accepted (for `after_key` pagination).
    last_key: String,
    scratch: Vec<u8>,
    /// The newest version among the records accepted.
    pub(super) newest_version: Option<i64>,
}

impl Sink {
    pub(super) fn new(bucket_bits: u8) -> Result<Self, PullError> {
        let file = tempfile::tempfile().map_err(|source| PullError::Spill {
            action: "creating the spill file".into(),
            source,
        })?;
        Ok(Self {
            spill: BufWriter::with_capacity(256 << 10, file),
            offset: 0,
            index: IndexWriter::new(bucket_bits)?,
            last_key: String::new(),
            scratch: Vec::new(),
            newest_version: None,
        })
    }

    fn accept(
        &mut self,
        rules: &Rules,
        at: &PageAt,
        index: u64,
        item: &Value,
    ) -> Result<(), PullError> {
        let key_value = lookup(item, &rules.key).ok_or_else(|| PullError::KeyMissing {
            at: at.clone(),
            index,
            pointer: rules.key_pointer.clone(),
        })?;
        let key = key_string(key_value).ok_or_else(|| PullError::BadKey {
            at: at.clone(),
            index,
            pointer: rules.key_pointer.clone(),
            found: match key_value {
                Value::Number(_) => "a non-integer number",
                other => type_name(other),
            },
        })?;
        let version = match &rules.version {
            None => None,
            Some((pointer, tokens)) => match lookup(item, tokens) {
                None | Some(Value::Null) => None,
                Some(v) => Some(version_value(v).map_err(|message| PullError::BadVersion {
                    at: at.clone(),
                    index,
                    key: key.clone(),
                    pointer: pointer.clone(),
                    message,
                })?),
            },
        };
        let hash = rules.hasher.hash(item);
        let bucket = bucket_of(&key, rules.bucket_bits);
        self.newest_version = self.newest_version.max(version);

        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, item).map_err(|e| PullError::Spill {
            action: format!("serializing record {index} of {at}"),
            source: e.into(),
        })?;
        let doc_len = u32::try_from(self.scratch.len()).map_err(|_| PullError::RecordTooLarge {
            at: at.clone(),
            index,
            key: key.clone(),
            len: self.scratch.len(),
        })?;
        self.spill
            .write_all(&self.scratch)
            .map_err(|source| PullError::Spill {
                action: format!("writing record {index} of {at}"),
                source,
            })?;
        let record = RemoteRecord {
            key: key.into_boxed_str(),
            bucket,
            hash,
            version,
            doc: DocAt {
                offset: self.offset,
                len: doc_len,
            },
        };
        self.index.push(&record)?;
        self.last_key.clear();
        self.last_key.push_str(&record.key);
        self.offset += u64::from(doc_len);
        Ok(())
    }

    /// Sorts the index by `(bucket, key)`, rejects duplicate keys, sums the
    /// bucket digests, flushes the spill file.
    pub(super) fn finish(self) -> Result<(RecordIndex, BTreeMap<u32, Digest>, File), PullError> {
        let Sink { spill, index, .. } = self;
        let spill = spill.into_inner().map_err(|e| PullError::Spill {
            action: "flushing".into(),
            source: e.into_error(),
        })?;
        let (index, digests) = index.finish()?;
        Ok((index, digests, spill))
    }
}

/// Walks one page body into `sink`; what the page said about pagination.
pub(super) fn parse_page(
    body: Body,
    sink: &mut Sink,
    rules: &Rules,
    at: &PageAt,
) -> Result<PageOutcome, PullError> {
    let mut index = 0u64;
    let mut walk = Walk::new(&rules.paths, |item: Value| {
        let r = sink.accept(rules, at, index, &item);
        index += 1;
        r
    });
    let walked = match body {
        Body::Memory(buf) => walk.run(&mut serde_json::Deserializer::from_slice(&buf)),
        Body::File(mut file) => {
            file.seek(SeekFrom::Start(0))
                .map_err(|source| PullError::Spill {
                    action: format!("rewinding the body of {at}"),
                    source,
                })?;
            let reader = BufReader::with_capacity(256 << 10, file);
            walk.run(&mut serde_json::Deserializer::from_reader(reader))
        }
    };
    let Walk {
        items, captured, ..
    } = walk;
    match walked {
        Ok(()) => {}
        Err(WalkError::Item(e)) => return Err(e),
        Err(WalkError::Json(e)) => {
            return Err(PullError::InvalidJson {
                at: at.clone(),
                message: e.to_string(),
            })
        }
    }
    match items {
        Found::Missing => Err(PullError::ItemsMissing {
            at: at.clone(),
            pointer: rules.items_pointer.clone(),
        }),
        Found::NotArray(found) => Err(PullError::ItemsNotArray {
            at: at.clone(),
            pointer: rules.items_pointer.clone(),
            found,
        }),
        Found::Array => Ok(PageOutcome {
            items: index,
            captured: captured.into_iter().next().flatten(),
            // The last record this page added, if it added any.
            last_key: (index > 0).then(|| sink.last_key.clone()),
        }),
    }
}
