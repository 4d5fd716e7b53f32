//! The `changes` chain: each row's link hashes the previous link with the row's content.

use crate::canonical::RecordHash;

/// Where a producer's chain stands: the last `seq` and its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub(crate) seq: i64,
    pub(crate) chain: [u8; 32],
}

impl ChainHead {
    /// The head of a producer with no `changes` rows.
    pub(crate) const GENESIS: ChainHead = ChainHead {
        seq: 0,
        chain: [0; 32],
    };
}

/// One `changes` row as it is chained: `chain = blake3(prev_chain || json)`.
/// The fields are the stored text, so a row read back hashes as written.
pub(crate) struct ChangeLink<'a> {
    pub(crate) producer: &'a str,
    pub(crate) seq: i64,
    pub(crate) key: &'a str,
    pub(crate) op: &'a str,
    pub(crate) hash: Option<&'a RecordHash>,
    pub(crate) version: Option<i64>,
    pub(crate) source: &'a str,
    pub(crate) at: i64,
}

impl ChangeLink<'_> {
    pub(crate) fn chain(&self, prev: &[u8; 32]) -> [u8; 32] {
        let body = serde_json::json!([
            self.producer,
            self.seq,
            self.key,
            self.op,
            self.hash.map(|h| h.to_hex()),
            self.version,
            self.source,
            self.at
        ]);
        let mut h = blake3::Hasher::new();
        h.update(prev);
        h.update(body.to_string().as_bytes());
        *h.finalize().as_bytes()
    }
}
