//! Who holds a keyframe lease: the holding process's identity, written into the lease so the next process can tell a holder that stopped from one that is slow.
//!
//! A holder is `host/boot/pidns/pid/start/token`: the host name (for people
//! reading the table), the kernel's boot id, the PID namespace, the process id
//! and its start time (in clock ticks since boot), and a random token per
//! acquisition. Two holders with the same boot id and PID namespace see the
//! same process table, so if the holder's process is gone, or its pid now
//! belongs to a process started at another time, it stopped without releasing
//! (SIGKILL, a crash) and its lease can be taken over at once. Anywhere else
//! (another host or container, or no `/proc`) the lease's expiry decides.

use std::fmt;

/// The identity of the process that holds (or wants) a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    host: String,
    boot: String,
    pidns: String,
    pid: u32,
    start: String,
    token: String,
}

impl Holder {
    /// This process, with a fresh token. Reads `/proc` on Linux; elsewhere the
    /// identity fields stay empty and no takeover is ever judged safe.
    pub(crate) fn current() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let pid = std::process::id();
        Self {
            host: clean(&read("/proc/sys/kernel/hostname")),
            boot: clean(&read("/proc/sys/kernel/random/boot_id")),
            pidns: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| clean(&p.to_string_lossy()))
                .unwrap_or_default(),
            pid,
            start: start_time(&read(&format!("/proc/{pid}/stat"))).unwrap_or_default(),
            token: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// The same process with a new token, one per lease acquisition: two runs
    /// in one process exclude each other like runs in two processes do.
    pub(crate) fn renewed(&self) -> Self {
        Self {
            token: format!("{:016x}", rand::random::<u64>()),
            ..self.clone()
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let [host, boot, pidns, pid, start, token] = parts.as_slice() else {
            return None;
        };
        Some(Self {
            host: host.to_string(),
            boot: boot.to_string(),
            pidns: pidns.to_string(),
            pid: pid.parse().ok()?,
            start: start.to_string(),
            token: token.to_string(),
        })
    }

    /// Whether `self` can judge `other`'s process: same boot, same PID namespace.
    pub(crate) fn shares_process_table(&self, other: &Holder) -> bool {
        !self.boot.is_empty()
            && !self.pidns.is_empty()
            && !other.start.is_empty()
            && self.boot == other.boot
            && self.pidns == other.pidns
    }

    /// Whether the process behind the lease holder written as `id` has
    /// stopped, as far as `self` can tell ([`Self::sees_stopped`]); an id
    /// that is not a holder (written by hand, or by an older driftd) never is.
    pub(crate) fn sees_stopped_id(&self, id: &str) -> bool {
        Holder::parse(id).is_some_and(|other| self.sees_stopped(&other))
    }

    /// Whether `other`'s process has stopped, as far as `self` can tell: only
    /// when they share a process table. `self`'s own pid with another start
    /// time is an earlier process that had the same pid (a restarted container).
    pub(crate) fn sees_stopped(&self, other: &Holder) -> bool {
        if !self.shares_process_table(other) {
            return false;
        }
        if other.pid == self.pid {
            return other.start != self.start;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", other.pid)) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(stat) => start_time(&stat).is_some_and(|start| start != other.start),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}/{}",
            self.host, self.boot, self.pidns, self.pid, self.start, self.token
        )
    }
}

/// A field without the separator.
fn clean(s: &str) -> String {
    s.replace('/', "_")
}

/// A process's start time (field 22 of `/proc/PID/stat`), after the command
/// name, which may itself hold spaces and parentheses.
fn start_time(stat: &str) -> Option<String> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from the third (state) on; the start time is the 22nd.
    after_comm
        .split_whitespace()
        .nth(22 - 3)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(boot: &str, pidns: &str, pid: u32, start: &str) -> Holder {
        Holder {
            host: "h".into(),
            boot: boot.into(),
            pidns: pidns.into(),
            pid,
            start: start.into(),
            token: "t".into(),
        }
    }

    #[test]
    fn round_trips_through_text() {
        let h = holder("b-1", "pid:[4026531836]", 42, "12345");
        assert_eq!(Holder::parse(&h.to_string()), Some(h));
        assert_eq!(Holder::parse("driftd-42-0000abcd"), None);
        assert_eq!(Holder::parse("a/b/c/notanumber/e/f"), None);
    }

    #[test]
    fn start_time_skips_a_command_with_spaces_and_parens() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(start_time(stat).as_deref(), Some("98765"));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn judges_only_a_shared_process_table() {
        let me = holder("boot", "ns", 1, "10");
        assert!(me.shares_process_table(&holder("boot", "ns", 2, "20")));
        assert!(!me.shares_process_table(&holder("other-boot", "ns", 2, "20")));
        assert!(!me.shares_process_table(&holder("boot", "other-ns", 2, "20")));
        assert!(!me.shares_process_table(&holder("boot", "ns", 2, "")));
        assert!(!holder("", "", 1, "").shares_process_table(&holder("", "", 2, "")));
        assert!(
            !me.sees_stopped(&holder("boot", "ns", 1, "10")),
            "its own process is running"
        );
        assert!(
            me.sees_stopped(&holder("boot", "ns", 1, "9")),
            "an earlier process with its pid stopped"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_running_and_a_reused_pid_is_not_it() {
        let me = Holder::current();
        assert!(!me.boot.is_empty() && !me.start.is_empty(), "{me:?}");
        let parent = std::os::unix::process::parent_id();
        let stat = std::fs::read_to_string(format!("/proc/{parent}/stat")).unwrap();
        let alive = Holder {
            pid: parent,
            start: start_time(&stat).unwrap(),
            ..me.renewed()
        };
        assert!(!me.sees_stopped(&alive), "a running process");
        let reused = Holder {
            start: "1".into(),
            ..alive.clone()
        };
        assert!(
            me.sees_stopped(&reused),
            "the pid now names another process"
        );
    }
}
