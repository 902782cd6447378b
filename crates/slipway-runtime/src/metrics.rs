//! Runtime metrics (Heroku's `log-runtime-metrics`): the two sample lines a dyno logs every
//! `--dyno-metrics-interval` while its app enables them (`settings.rs`), the load average
//! behind the second, and a plain-process dyno's use read from `/proc`.
//!
//! ```text
//! heroku[web.1]: source=web.1 dyno=heroku.<app id>.<dyno id> sample#memory_total=21.00MB sample#memory_rss=20.50MB sample#memory_cache=0.50MB sample#memory_swap=0.00MB sample#memory_pgpgin=5120pages sample#memory_pgpgout=4096pages sample#memory_quota=512.00MB
//! heroku[web.1]: source=web.1 dyno=heroku.<app id>.<dyno id> sample#load_avg_1m=0.12 sample#load_avg_5m=0.05 sample#load_avg_15m=0.01
//! ```
//!
//! Sizes are MiB with two decimals, as Heroku prints them (`512.00MB` is the 512 MiB quota of
//! `standard-1X`). `memory_total` is what the quota counts and R14 compares: the cgroup's
//! usage less inactive file cache (for plain processes, RSS + swap, Heroku's definition).
//! `pgpgin`/`pgpgout` are left out where the kernel does not count them per dyno (cgroup v2,
//! plain processes).
//!
//! **Load average.** Heroku's `load_avg` is the number of runnable tasks, averaged like the
//! kernel's load average. A cgroup does not expose its runnable-task count (v1 has no such
//! file; v2's `cpu.pressure` is a stall percentage), so slipway averages the dyno's *CPU use*
//! instead: at each sample, CPU time used since the last one (cgroup `cpuacct.usage` /
//! `cpu.stat usage_usec`; `/proc/PID/stat` utime + stime for plain processes) divided by the
//! wall time between them, i.e. the number of CPUs kept busy, folded into 1, 5 and 15 minute
//! exponentially decayed averages (`avg = avg * e + rate * (1 - e)`, `e = exp(-dt / window)`,
//! the kernel's formula). For CPU-bound work this equals the runnable-task count as long as
//! the dyno is not waiting for a CPU; tasks queued for a CPU (or in uninterruptible sleep) are
//! not counted. The load line is logged from the second sample on (a rate needs two).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::backend::Usage;

const MIB: f64 = 1024.0 * 1024.0;

/// The kernel's `USER_HZ`, the unit of `/proc/PID/stat` times (100 on every Linux ABI).
const USER_HZ: u64 = 100;

/// A dyno's load averages over 1, 5 and 15 minutes (CPUs kept busy).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Folds successive CPU-time readings into [`LoadAvg`].
#[derive(Debug, Default)]
pub(crate) struct LoadTracker {
    last: Option<(Instant, u64)>,
    avg: LoadAvg,
}

impl LoadTracker {
    /// Takes the dyno's total CPU time (`cpu_nanos`) read at `at`. The averages once a rate
    /// could be computed (from the second reading on).
    pub(crate) fn sample(&mut self, at: Instant, cpu_nanos: u64) -> Option<LoadAvg> {
        let previous = self.last.replace((at, cpu_nanos));
        let (then, before) = previous?;
        let dt = at.saturating_duration_since(then);
        if dt.is_zero() {
            return Some(self.avg);
        }
        // A counter that went back (a restarted cgroup) counts as no use.
        let used = cpu_nanos.saturating_sub(before) as f64;
        let rate = used / dt.as_nanos() as f64;
        let fold = |avg: f64, window: Duration| {
            let e = (-dt.as_secs_f64() / window.as_secs_f64()).exp();
            avg * e + rate * (1.0 - e)
        };
        self.avg = LoadAvg {
            one: fold(self.avg.one, Duration::from_secs(60)),
            five: fold(self.avg.five, Duration::from_secs(300)),
            fifteen: fold(self.avg.fifteen, Duration::from_secs(900)),
        };
        Some(self.avg)
    }
}

/// `source=web.1 dyno=heroku.<app id>.<dyno id>`: the start of both lines.
pub(crate) fn line_prefix(app_id: &str, dyno_id: &str, name: &str) -> String {
    format!("source={name} dyno=heroku.{app_id}.{dyno_id}")
}

fn mb(bytes: u64) -> String {
    format!("{:.2}MB", bytes as f64 / MIB)
}

/// The memory sample line.
pub(crate) fn memory_line(prefix: &str, usage: &Usage, quota_bytes: u64) -> String {
    let mut line = format!(
        "{prefix} sample#memory_total={} sample#memory_rss={} sample#memory_cache={} sample#memory_swap={}",
        mb(usage.memory_bytes),
        mb(usage.memory_rss_bytes),
        mb(usage.memory_cache_bytes),
        mb(usage.memory_swap_bytes),
    );
    if let (Some(pgin), Some(pgout)) = (usage.pgpgin, usage.pgpgout) {
        line.push_str(&format!(
            " sample#memory_pgpgin={pgin}pages sample#memory_pgpgout={pgout}pages"
        ));
    }
    line.push_str(&format!(" sample#memory_quota={}", mb(quota_bytes)));
    line
}

/// The load sample line.
pub(crate) fn load_line(prefix: &str, load: &LoadAvg) -> String {
    format!(
        "{prefix} sample#load_avg_1m={:.2} sample#load_avg_5m={:.2} sample#load_avg_15m={:.2}",
        load.one, load.five, load.fifteen
    )
}

/// Memory and CPU of the processes in process group `pgid` (a plain-process dyno: its shell
/// leads the group and everything it starts stays in it unless it leaves on purpose), summed
/// from `<proc>/PID/stat` (group, CPU times including reaped children's) and
/// `<proc>/PID/status` (`VmRSS`, `VmSwap`). `None` when no process of the group is left.
pub(crate) fn process_group_usage(proc: &Path, pgid: u32) -> Option<Usage> {
    let mut found = false;
    let mut ticks: u64 = 0;
    let (mut rss, mut swap) = (0u64, 0u64);
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = proc.join(pid);
        let Some(stat) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        if stat.pgrp != pgid {
            continue;
        }
        found = true;
        ticks = ticks.saturating_add(stat.cpu_ticks);
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            rss = rss.saturating_add(status_kib(&status, "VmRSS").unwrap_or(0) * 1024);
            swap = swap.saturating_add(status_kib(&status, "VmSwap").unwrap_or(0) * 1024);
        }
    }
    found.then(|| Usage {
        memory_bytes: rss.saturating_add(swap),
        memory_rss_bytes: rss,
        memory_cache_bytes: 0,
        memory_swap_bytes: swap,
        pgpgin: None,
        pgpgout: None,
        cpu_nanos: Some(ticks.saturating_mul(1_000_000_000 / USER_HZ)),
        oom_kills: 0,
    })
}

struct ProcStat {
    pgrp: u32,
    /// utime + stime + cutime + cstime
    cpu_ticks: u64,
}

/// `/proc/PID/stat`: the fields after the command name (which may hold spaces and `)`).
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): pgrp is field 5, utime..cstime fields 14..=17.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let pgrp = u32::try_from(num(2)?).ok()?;
    let cpu_ticks = (11..=14).map(num).sum::<Option<u64>>()?;
    Some(ProcStat { pgrp, cpu_ticks })
}

/// A `Name:   N kB` line of `/proc/PID/status`.
fn status_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != name {
            return None;
        }
        v.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_heroku_s_shape() {
        let usage = Usage {
            memory_bytes: 21 * 1024 * 1024,
            memory_rss_bytes: 20 * 1024 * 1024 + 512 * 1024,
            memory_cache_bytes: 512 * 1024,
            memory_swap_bytes: 0,
            pgpgin: Some(5120),
            pgpgout: Some(4096),
            cpu_nanos: None,
            oom_kills: 0,
        };
        let prefix = line_prefix("app-1", "d-1", "web.1");
        assert_eq!(
            memory_line(&prefix, &usage, 512 * 1024 * 1024),
            "source=web.1 dyno=heroku.app-1.d-1 sample#memory_total=21.00MB sample#memory_rss=20.50MB sample#memory_cache=0.50MB sample#memory_swap=0.00MB sample#memory_pgpgin=5120pages sample#memory_pgpgout=4096pages sample#memory_quota=512.00MB"
        );
        let no_pages = Usage {
            pgpgin: None,
            pgpgout: None,
            ..usage
        };
        assert!(!memory_line(&prefix, &no_pages, 1).contains("pgpgin"));
        let load = LoadAvg {
            one: 0.123,
            five: 0.05,
            fifteen: 0.0,
        };
        assert_eq!(
            load_line(&prefix, &load),
            "source=web.1 dyno=heroku.app-1.d-1 sample#load_avg_1m=0.12 sample#load_avg_5m=0.05 sample#load_avg_15m=0.00"
        );
    }

    #[test]
    fn load_follows_cpu_use_with_the_kernel_s_decay() {
        let mut t = LoadTracker::default();
        let start = Instant::now();
        assert_eq!(t.sample(start, 0), None);
        // One CPU busy for a minute: the 1-minute average reaches 1 - 1/e.
        let avg = t
            .sample(start + Duration::from_secs(60), 60_000_000_000)
            .expect("a rate");
        assert!((avg.one - (1.0 - (-1.0f64).exp())).abs() < 1e-9, "{avg:?}");
        assert!(avg.five < avg.one && avg.fifteen < avg.five, "{avg:?}");
        // Idle afterwards: it decays, never below zero, and a counter going back is no use.
        let idle = t
            .sample(start + Duration::from_secs(120), 10)
            .expect("a rate");
        assert!(idle.one < avg.one && idle.one > 0.0, "{idle:?}");
    }

    #[test]
    fn proc_stat_and_status_are_parsed() {
        let stat = "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 1 1 1";
        let s = parse_stat(stat).expect("parsed");
        assert_eq!(s.pgrp, 42);
        assert_eq!(s.cpu_ticks, 250 + 50 + 7 + 3);
        let status = "Name:\tx\nVmRSS:\t   2048 kB\nVmSwap:\t      4 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(2048));
        assert_eq!(status_kib(status, "VmSwap"), Some(4));
        assert_eq!(status_kib(status, "VmData"), None);
    }

    #[test]
    fn a_process_group_is_measured_from_proc() {
        let me = std::process::id();
        let pgid = nix::unistd::getpgrp().as_raw() as u32;
        let usage = process_group_usage(Path::new("/proc"), pgid).expect("own group");
        assert!(usage.memory_rss_bytes > 0, "{usage:?} for {me}");
        assert_eq!(
            usage.memory_bytes,
            usage.memory_rss_bytes + usage.memory_swap_bytes
        );
        assert!(process_group_usage(Path::new("/proc"), u32::MAX).is_none());
    }
}
