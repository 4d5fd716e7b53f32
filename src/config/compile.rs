//! Producers compiled once: what validation parsed (schedule, time zone, hasher, email rules) kept, typed, for every part of the daemon that runs them.

use std::ops::Deref;
use std::sync::Arc;

use super::{ProducerConfig, Schedule};
use crate::canonical::RecordHasher;
use crate::ingest::email::Rules;
use crate::keyframe::fetch::Plan;
use crate::refresh::RecordFetch;

/// A validated producer, ready to run: its settings as written (through
/// `Deref`) and everything validation had to parse to check them. Nothing
/// downstream parses a producer's settings again. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Producer(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    config: ProducerConfig,
    schedule: Schedule,
    hasher: RecordHasher,
    plan: Plan,
    rules: Option<Rules>,
    fetch: Option<RecordFetch>,
}

impl Producer {
    pub(super) fn new(
        config: ProducerConfig,
        schedule: Schedule,
        hasher: RecordHasher,
        plan: Plan,
        rules: Option<Rules>,
    ) -> Result<Self, String> {
        let fetch = match &config.fetch {
            Some(f) => Some(RecordFetch::new(f, &config.snapshot, &plan)?),
            None => None,
        };
        Ok(Self(Arc::new(Compiled {
            config,
            schedule,
            hasher,
            plan,
            rules,
            fetch,
        })))
    }

    /// How one record is fetched by key (`[producer.fetch]`), when configured.
    pub fn record_fetch(&self) -> Option<&RecordFetch> {
        self.0.fetch.as_ref()
    }

    /// How a keyframe pulls this producer: URL, headers, pacing, pagination and pointers, parsed.
    pub fn snapshot_plan(&self) -> &Plan {
        &self.0.plan
    }

    /// When keyframes run.
    pub(crate) fn schedule(&self) -> &Schedule {
        &self.0.schedule
    }

    /// Hashes this producer's records, leaving out `snapshot.ignore`.
    pub fn hasher(&self) -> &RecordHasher {
        &self.0.hasher
    }

    /// This producer with `change` made to its plain settings, not validated
    /// again (what validation parsed is kept): for tests that need a setting
    /// `driftd check` refuses.
    #[doc(hidden)]
    pub fn with_unchecked(&self, change: impl FnOnce(&mut ProducerConfig)) -> Self {
        let mut config = self.0.config.clone();
        change(&mut config);
        let plan = Plan::new(&config.snapshot, &self.0.hasher, config.bucket_bits)
            .unwrap_or_else(|e| panic!("the changed snapshot settings do not plan: {e}"));
        Self::new(
            config,
            self.0.schedule.clone(),
            self.0.hasher.clone(),
            plan,
            self.0.rules.clone(),
        )
        .unwrap_or_else(|e| panic!("the changed fetch settings do not compile: {e}"))
    }

    /// The compiled `[producer.email]` rules, when the producer takes email.
    pub(crate) fn email_rules(&self) -> Option<&Rules> {
        self.0.rules.as_ref()
    }
}

impl Deref for Producer {
    type Target = ProducerConfig;

    fn deref(&self) -> &ProducerConfig {
        &self.0.config
    }
}
