//! `driftd demo` through the real binary: it converges, shows drift found at a keyframe after the bootstrap, and leaves a config `driftd check` accepts.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::driftd_bin;

/// Longest the demo may take before the test kills it.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `driftd demo ARGS --dir DIR` to its end (bounded); its exit status,
/// stdout and stderr.
fn run_demo(
    args: &[&str],
    demo_dir: &std::path::Path,
) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    // Output goes to files, not pipes, so a chatty run can never block on a full pipe.
    let mut child = Command::new(driftd_bin())
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(demo_dir)
        .env_remove("RUST_LOG")
        .env_remove("DRIFTD_DEMO_WEBHOOK_SECRET")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("start driftd demo");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "driftd demo did not finish within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap(),
        std::fs::read_to_string(&err_path).unwrap(),
    )
}

/// Every line of the demo's output fits 100 columns.
fn assert_fits(stdout: &str) {
    let wide: Vec<(usize, &str)> = stdout
        .lines()
        .map(|l| (l.chars().count(), l))
        .filter(|(n, _)| *n > 100)
        .collect();
    assert!(wide.is_empty(), "lines wider than 100 columns: {wide:#?}");
}

#[test]
fn demo_paces_keyframes_by_their_drift_with_adaptive() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_demo(
        &[
            "--duration",
            "15",
            "--records",
            "500",
            "--keyframe-every",
            "2",
            "--loss",
            "0.3",
            "--adaptive",
        ],
        &dir.path().join("demo"),
    );
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(0), "{shown}");
    assert_fits(&stdout);
    assert!(
        stdout.contains("vendor: now 30% of webhooks lost"),
        "{shown}"
    );
    assert!(
        stdout.contains("vendor: now 0.3% of webhooks lost"),
        "{shown}"
    );
    let intervals: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split("pacing: next keyframe in ").nth(1))
        .filter_map(|rest| rest.split('s').next()?.parse().ok())
        .collect();
    assert!(intervals.len() >= 3, "{shown}");
    // Between a fifth of --keyframe-every (at least 1 s) and twice it.
    assert!(
        intervals.iter().all(|i| (1.0..=4.0).contains(i)),
        "{intervals:?}\n{shown}"
    );
    assert!(stdout.contains("equal: yes"), "{shown}");
}

#[test]
fn demo_converges_and_writes_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (status, stdout, stderr) = run_demo(
        &[
            "--duration",
            "8",
            "--records",
            "500",
            "--keyframe-every",
            "2",
            "--loss",
            "0.2",
        ],
        &demo_dir,
    );
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(status.code(), Some(0), "{shown}");

    // The bootstrap fills the empty table; a later keyframe finds the drift lost webhooks left.
    assert!(
        stdout.contains("(bootstrap): 500 records, drift found 500 (missing 500"),
        "{shown}"
    );
    let later_drift: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("keyframe run") && !l.contains("(bootstrap)"))
        .filter_map(|l| l.split("drift found ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        later_drift.iter().any(|&n| n > 0),
        "no keyframe after the bootstrap found drift: {later_drift:?}\n{shown}"
    );
    // Each keyframe with drift says why.
    assert!(stdout.contains("  why: "), "{shown}");
    assert_fits(&stdout);
    // The open drift a scheduled keyframe queued shows in the status line
    // that follows it (its peak since the line before), however fast the
    // workers carried it out.
    let lines: Vec<&str> = stdout.lines().collect();
    let found_drift = |l: &str| {
        l.split("drift found ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    };
    let peak = |l: &str| {
        l.split("(peak ")
            .nth(1)?
            .split(')')
            .next()?
            .parse::<u64>()
            .ok()
    };
    let shown_after: Vec<(&str, u64)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("(scheduled)") && found_drift(l))
        .filter_map(|(i, l)| Some((*l, lines[i..].iter().find_map(|l| peak(l))?)))
        .collect();
    assert!(
        !shown_after.is_empty(),
        "no scheduled keyframe with drift before a status line\n{shown}"
    );
    for (keyframe, peak) in shown_after {
        assert!(
            peak > 0,
            "the status line after {keyframe:?} shows no open drift\n{shown}"
        );
    }
    // The closing hint is a command that runs as printed, from the directory
    // the demo ran in (no `driftd` on PATH needed).
    let hint = lines.last().expect("a last line").trim();
    let mut words = hint.split_whitespace();
    let program = words.next().unwrap();
    assert!(hint.contains(" status --config "), "{shown}");
    let status_out = Command::new(program)
        .args(words)
        .env_remove("DRIFTD_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("run {hint:?}: {e}"));
    assert!(
        status_out.status.success() && String::from_utf8_lossy(&status_out.stdout).contains("demo"),
        "{hint:?}: {}{}",
        String::from_utf8_lossy(&status_out.stdout),
        String::from_utf8_lossy(&status_out.stderr)
    );

    let config = demo_dir.join("driftd-demo.toml");
    let check = Command::new(driftd_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("DRIFTD_CONFIG")
        .output()
        .expect("run driftd check");
    assert!(
        check.status.success(),
        "driftd check rejected the demo config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
