//! Producers compiled once: what validation parsed (schedule, time zone, hasher, email rules) kept, typed, for every part of the daemon that runs them.

use std::ops::Deref;
use std::sync::Arc;

use super::{ProducerConfig, Schedule};
use crate::canonical::RecordHasher;
use crate::ingest::email::Rules;

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
    rules: Option<Rules>,
}

impl Producer {
    pub(super) fn new(
        config: ProducerConfig,
        schedule: Schedule,
        hasher: RecordHasher,
        rules: Option<Rules>,
    ) -> Self {
        Self(Arc::new(Compiled {
            config,
            schedule,
            hasher,
            rules,
        }))
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
        Self::new(
            config,
            self.0.schedule.clone(),
            self.0.hasher.clone(),
            self.0.rules.clone(),
        )
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
