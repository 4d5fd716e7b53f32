//! The snapshot's records on disk, grouped by bucket: appended to one of up to 256 bucket ranges while pulling, sorted range by range at the end, read back a range at a time.
//!
//! A pull keeps no per-record state in memory. Each record's entry (bucket,
//! hash, version, where its JSON is, key) is appended to the buffer of its
//! bucket range; a full buffer goes to a temp file as one chunk. When the
//! pull ends, [`IndexWriter::finish`] loads one range at a time, sorts it by
//! `(bucket, key)`, rejects a duplicate key (equal keys share a bucket, so a
//! range holds both), sums the bucket digests and writes the range to the
//! final, sorted file. Memory is the buffers plus one range, whatever the
//! number of records; [`RecordIndex`] reads ranges back for the compare.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::error::PullError;
use super::{DocAt, RemoteRecord};
use crate::canonical::{Digest, RecordHash};

/// At most 2^RANGE_BITS bucket ranges.
const RANGE_BITS: u8 = 8;
/// Bytes a range buffers before its entries go to disk as one chunk.
const RANGE_BUFFER: usize = 16 << 10;
/// An entry's size without its key: bucket, hash, version flag and value,
/// document offset and length, key length.
const FIXED: usize = 4 + 32 + 1 + 8 + 8 + 4 + 4;

/// Where a run of entries sits in a file.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    offset: u64,
    len: u64,
}

/// One bucket range while pulling: its buffer and the chunks already written.
#[derive(Default)]
struct Pending {
    buffer: Vec<u8>,
    chunks: Vec<Span>,
}

/// Collects entries by bucket range during a pull.
pub(super) struct IndexWriter {
    file: File,
    written: u64,
    /// `bucket >> shift` is an entry's range.
    shift: u8,
    ranges: Vec<Pending>,
}

fn spill_error(action: &str) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Spill {
        action: action.to_string(),
        source,
    }
}

fn temp_file(what: &str) -> Result<File, PullError> {
    tempfile::tempfile().map_err(spill_error(what))
}

impl IndexWriter {
    pub(super) fn new(bucket_bits: u8) -> Result<Self, PullError> {
        let range_bits = bucket_bits.min(RANGE_BITS);
        Ok(Self {
            file: temp_file("creating the record index")?,
            written: 0,
            shift: bucket_bits - range_bits,
            ranges: (0..1usize << range_bits)
                .map(|_| Pending::default())
                .collect(),
        })
    }

    pub(super) fn push(&mut self, r: &RemoteRecord) -> Result<(), PullError> {
        let range = (r.bucket >> self.shift) as usize;
        let pending = &mut self.ranges[range];
        encode(r, &mut pending.buffer);
        if pending.buffer.len() >= RANGE_BUFFER {
            let span = Span {
                offset: self.written,
                len: pending.buffer.len() as u64,
            };
            self.file
                .write_all_at(&pending.buffer, span.offset)
                .map_err(spill_error("writing the record index"))?;
            self.written += span.len;
            pending.chunks.push(span);
            pending.buffer.clear();
        }
        Ok(())
    }

    /// Sorts every range, rejects duplicate keys and sums the bucket digests.
    pub(super) fn finish(self) -> Result<(RecordIndex, BTreeMap<u32, Digest>), PullError> {
        let Self {
            file,
            ranges,
            shift,
            ..
        } = self;
        let sorted = temp_file("creating the sorted record index")?;
        let mut out = BufWriter::with_capacity(256 << 10, &sorted);
        let mut spans = Vec::with_capacity(ranges.len());
        let mut digests = BTreeMap::new();
        let (mut offset, mut len) = (0u64, 0u64);
        let mut bytes = Vec::new();
        for pending in ranges {
            bytes.clear();
            for chunk in &pending.chunks {
                let start = bytes.len();
                bytes.resize(start + chunk.len as usize, 0);
                file.read_exact_at(&mut bytes[start..], chunk.offset)
                    .map_err(spill_error("reading the record index"))?;
            }
            bytes.extend_from_slice(&pending.buffer);
            drop(pending);
            let mut records = decode_all(&bytes)?;
            records.sort_unstable_by(|a, b| (a.bucket, &a.key).cmp(&(b.bucket, &b.key)));
            if let Some(w) = records.windows(2).find(|w| w[0].key == w[1].key) {
                return Err(PullError::DuplicateKey {
                    key: w[0].key.to_string(),
                });
            }
            bytes.clear();
            for r in &records {
                digests
                    .entry(r.bucket)
                    .or_insert_with(Digest::default)
                    .add(&r.key, &r.hash);
                encode(r, &mut bytes);
            }
            out.write_all(&bytes)
                .map_err(spill_error("writing the sorted record index"))?;
            spans.push(Span {
                offset,
                len: bytes.len() as u64,
            });
            offset += bytes.len() as u64;
            len += records.len() as u64;
        }
        out.flush()
            .map_err(spill_error("writing the sorted record index"))?;
        drop(out);
        Ok((
            RecordIndex {
                file: sorted,
                spans,
                shift,
                len,
            },
            digests,
        ))
    }
}

/// A pulled snapshot's records, sorted by `(bucket, key)`, on disk.
#[derive(Debug)]
pub(crate) struct RecordIndex {
    file: File,
    /// One span per bucket range, in bucket order.
    spans: Vec<Span>,
    shift: u8,
    len: u64,
}

impl RecordIndex {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Number of bucket ranges, for [`Self::range`].
    pub(crate) fn ranges(&self) -> usize {
        self.spans.len()
    }

    /// Every record of one bucket range, in `(bucket, key)` order.
    pub(crate) fn range(&self, range: usize) -> Result<Vec<RemoteRecord>, PullError> {
        decode_all(&self.read(self.spans[range])?)
    }

    /// The records of `buckets` (sorted ascending), in `(bucket, key)` order.
    /// Reads only the ranges those buckets fall in, and decodes only their entries.
    pub(crate) fn in_buckets(&self, buckets: &[u32]) -> Result<Vec<RemoteRecord>, PullError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buckets.len() {
            let range = (buckets[at] >> self.shift) as usize;
            let end = at + buckets[at..].partition_point(|b| (b >> self.shift) as usize == range);
            let wanted = &buckets[at..end];
            let bytes = self.read(self.spans[range])?;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (bucket, size) = peek(rest)?;
                if wanted.binary_search(&bucket).is_ok() {
                    out.push(decode(&rest[..size])?);
                }
                rest = &rest[size..];
            }
            at = end;
        }
        Ok(out)
    }

    fn read(&self, span: Span) -> Result<Vec<u8>, PullError> {
        let mut bytes = vec![0; span.len as usize];
        self.file
            .read_exact_at(&mut bytes, span.offset)
            .map_err(spill_error("reading the sorted record index"))?;
        Ok(bytes)
    }
}

fn encode(r: &RemoteRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.bucket.to_le_bytes());
    out.extend_from_slice(&r.hash.0);
    out.push(u8::from(r.version.is_some()));
    out.extend_from_slice(&r.version.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&r.doc.offset.to_le_bytes());
    out.extend_from_slice(&r.doc.len.to_le_bytes());
    // A key is at most a record long, and a record's length fits a u32.
    out.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
    out.extend_from_slice(r.key.as_bytes());
}

fn corrupt() -> PullError {
    PullError::Spill {
        action: "decoding the record index".into(),
        source: io::Error::new(io::ErrorKind::InvalidData, "a truncated entry"),
    }
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N]
        .try_into()
        .expect("the entry's length was checked")
}

/// The bucket of the entry at the start of `b`, and the entry's size.
fn peek(b: &[u8]) -> Result<(u32, usize), PullError> {
    if b.len() < FIXED {
        return Err(corrupt());
    }
    let key_len = u32::from_le_bytes(array(b, FIXED - 4)) as usize;
    let size = FIXED + key_len;
    if b.len() < size {
        return Err(corrupt());
    }
    Ok((u32::from_le_bytes(array(b, 0)), size))
}

fn decode(b: &[u8]) -> Result<RemoteRecord, PullError> {
    let (bucket, size) = peek(b)?;
    let key = std::str::from_utf8(&b[FIXED..size]).map_err(|_| corrupt())?;
    Ok(RemoteRecord {
        key: key.into(),
        bucket,
        hash: RecordHash(array(b, 4)),
        version: (b[36] == 1).then(|| i64::from_le_bytes(array(b, 37))),
        doc: DocAt {
            offset: u64::from_le_bytes(array(b, 45)),
            len: u32::from_le_bytes(array(b, 53)),
        },
    })
}

fn decode_all(mut b: &[u8]) -> Result<Vec<RemoteRecord>, PullError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (_, size) = peek(b)?;
        out.push(decode(&b[..size])?);
        b = &b[size..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{bucket_of, RecordHasher};

    fn record(key: &str, bits: u8, version: Option<i64>) -> RemoteRecord {
        RemoteRecord {
            key: key.into(),
            bucket: bucket_of(key, bits),
            hash: RecordHasher::default().hash(&serde_json::json!(key)),
            version,
            doc: DocAt {
                offset: key.len() as u64 * 7,
                len: 3,
            },
        }
    }

    #[test]
    fn ranges_come_back_sorted_with_every_field_and_digests() {
        for bits in [0u8, 3, 8, 12] {
            let mut w = IndexWriter::new(bits).unwrap();
            let mut all: Vec<RemoteRecord> = (0..5_000)
                .map(|i| record(&format!("k{i}"), bits, (i % 3 != 0).then_some(i - 2_500)))
                .collect();
            for r in &all {
                w.push(r).unwrap();
            }
            let (index, digests) = w.finish().unwrap();
            assert_eq!(index.len(), 5_000);
            let read: Vec<RemoteRecord> = (0..index.ranges())
                .flat_map(|i| index.range(i).unwrap())
                .collect();
            all.sort_by(|a, b| (a.bucket, &a.key).cmp(&(b.bucket, &b.key)));
            assert_eq!(read, all, "bucket_bits {bits}");
            let mut expected: BTreeMap<u32, Digest> = BTreeMap::new();
            for r in &all {
                expected.entry(r.bucket).or_default().add(&r.key, &r.hash);
            }
            assert_eq!(digests, expected);

            let some: Vec<u32> = digests.keys().copied().step_by(3).collect();
            let picked = index.in_buckets(&some).unwrap();
            let want: Vec<&RemoteRecord> = all
                .iter()
                .filter(|r| some.binary_search(&r.bucket).is_ok())
                .collect();
            assert_eq!(picked.iter().collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn a_duplicate_key_fails_the_index() {
        let mut w = IndexWriter::new(4).unwrap();
        for key in ["a", "b", "a"] {
            w.push(&record(key, 4, None)).unwrap();
        }
        match w.finish() {
            Err(PullError::DuplicateKey { key }) => assert_eq!(key, "a"),
            other => panic!("expected a duplicate key, got {:?}", other.map(|_| ())),
        }
    }
}
