//! Tests of the expected interval between keyframes that a schedule implies.

use chrono::{TimeZone, Utc};

use super::expected_interval_secs;
use crate::config::Config;

fn producer(schedule: &str, extra: &str) -> crate::config::Producer {
    let text = format!(
        "[[producer]]\nname = \"orders\"\nschedule = \"{schedule}\"\n{extra}\
         [producer.snapshot]\nurl = \"http://127.0.0.1:9/orders\"\n"
    );
    let loaded =
        Config::parse("t.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{schedule}: {e}"));
    loaded.config.producers[0].clone()
}

#[test]
fn a_cron_expects_its_longest_gap_and_adaptive_its_maximum() {
    // A Monday, 10:17:30 UTC.
    let now = Utc.with_ymd_and_hms(2026, 3, 2, 10, 17, 30).unwrap();
    let cases = [
        ("0 * * * * *", 60.0),
        ("*/15 * * * * *", 15.0),
        ("0 0 3 * * *", 86_400.0),
        // Twice a day, unevenly: the longer gap counts.
        ("0 0 6,9 * * *", 21.0 * 3600.0),
        // Weekdays only: Friday 03:00 to Monday 03:00.
        ("0 0 3 * * Mon-Fri", 3.0 * 86_400.0),
        // Monthly: the first gap (April 1 to May 1) is all there is to see
        // within the horizon.
        ("0 0 0 1 * *", 30.0 * 86_400.0),
    ];
    for (cron, want) in cases {
        let got = expected_interval_secs(&producer(cron, ""), now);
        assert_eq!(got, Some(want), "{cron}");
    }
    let adaptive = producer(
        "adaptive",
        "[producer.adaptive]\nmin_interval_secs = 5.0\nmax_interval_secs = 900.0\n\
         target_drift_seconds = 60.0\n",
    );
    assert_eq!(expected_interval_secs(&adaptive, now), Some(900.0));
    // Four pulls a day at most: a floor of six hours, longer than the maximum.
    let quota = producer(
        "adaptive",
        "[producer.adaptive]\nmin_interval_secs = 5.0\nmax_interval_secs = 900.0\n\
         target_drift_seconds = 60.0\nmax_pulls_per_day = 4\n",
    );
    assert_eq!(expected_interval_secs(&quota, now), Some(21_600.0));
}
