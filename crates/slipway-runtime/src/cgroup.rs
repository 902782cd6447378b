//! Reading a container's cgroup: memory in use, CPU time, and how many times the kernel's
//! OOM killer struck in it.
//!
//! Each dyno's container gets the relative cgroup path `slipway/<dyno id>`. runc places a
//! relative path under its own cgroup (cgroup v1, per controller) or under the parent of its
//! own cgroup (cgroup v2); runc is the server's child, so both are found from
//! `/proc/self/cgroup`. This machine runs hybrid cgroups (v1 controllers, v2 without them);
//! both layouts are read.

use std::path::{Path, PathBuf};

use crate::backend::Usage;

const MOUNT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone)]
pub(crate) enum Cgroups {
    V1 {
        memory: PathBuf,
        cpuacct: Option<PathBuf>,
    },
    V2 {
        base: PathBuf,
    },
}

pub(crate) fn relative_path(dyno_id: &str) -> String {
    format!("slipway/{dyno_id}")
}

impl Cgroups {
    /// The layout this process runs under, if it has a memory controller.
    pub(crate) fn detect() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::parse(&text, Path::new(MOUNT))
    }

    fn parse(proc_self_cgroup: &str, mount: &Path) -> Option<Self> {
        let mut memory = None;
        let mut cpuacct = None;
        let mut unified = None;
        for line in proc_self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let path = path.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(path.to_string());
                continue;
            }
            let dir = mount.join(controllers).join(path);
            if controllers.split(',').any(|c| c == "memory") {
                memory = Some(dir.clone());
            }
            if controllers.split(',').any(|c| c == "cpuacct") {
                cpuacct = Some(dir);
            }
        }
        match (memory, unified) {
            (Some(memory), _) => Some(Cgroups::V1 { memory, cpuacct }),
            (None, Some(own)) if mount.join("cgroup.controllers").exists() => {
                let parent = Path::new(&own).parent().unwrap_or(Path::new(""));
                Some(Cgroups::V2 {
                    base: mount.join(parent),
                })
            }
            _ => None,
        }
    }

    fn memory_dir(&self, dyno_id: &str) -> PathBuf {
        match self {
            Cgroups::V1 { memory, .. } => memory.join(relative_path(dyno_id)),
            Cgroups::V2 { base } => base.join(relative_path(dyno_id)),
        }
    }

    /// Memory (in use, and its parts) and CPU time of the dyno's cgroup. cgroup v1 reads the
    /// `total_*` fields of `memory.stat` (the cgroup and any below it); v2 reads `anon`,
    /// `file` and `memory.swap.current`, and has no per-cgroup `pgpgin`/`pgpgout`.
    pub(crate) fn usage(&self, dyno_id: &str) -> Option<Usage> {
        let dir = self.memory_dir(dyno_id);
        let oom_kills = self.oom_kills(dyno_id).unwrap_or(0);
        match self {
            Cgroups::V1 { cpuacct, .. } => {
                let used = read_u64(&dir.join("memory.usage_in_bytes"))?;
                let stat = read_stat(&dir.join("memory.stat"));
                let field = |name: &str| stat_value(&stat, name);
                let cpu = cpuacct
                    .as_ref()
                    .and_then(|c| read_u64(&c.join(relative_path(dyno_id)).join("cpuacct.usage")));
                Some(Usage {
                    memory_bytes: used.saturating_sub(field("total_inactive_file").unwrap_or(0)),
                    memory_rss_bytes: field("total_rss").unwrap_or(0),
                    memory_cache_bytes: field("total_cache").unwrap_or(0),
                    memory_swap_bytes: field("total_swap").unwrap_or(0),
                    pgpgin: field("total_pgpgin"),
                    pgpgout: field("total_pgpgout"),
                    cpu_nanos: cpu,
                    oom_kills,
                })
            }
            Cgroups::V2 { .. } => {
                let used = read_u64(&dir.join("memory.current"))?;
                let stat = read_stat(&dir.join("memory.stat"));
                let field = |name: &str| stat_value(&stat, name);
                let cpu = stat_field(&dir.join("cpu.stat"), "usage_usec").map(|u| u * 1000);
                Some(Usage {
                    memory_bytes: used.saturating_sub(field("inactive_file").unwrap_or(0)),
                    memory_rss_bytes: field("anon").unwrap_or(0),
                    memory_cache_bytes: field("file").unwrap_or(0),
                    memory_swap_bytes: read_u64(&dir.join("memory.swap.current")).unwrap_or(0),
                    pgpgin: None,
                    pgpgout: None,
                    cpu_nanos: cpu,
                    oom_kills,
                })
            }
        }
    }

    /// The dyno's memory limit as the kernel enforces it (v1 `memory.limit_in_bytes`, v2
    /// `memory.max`).
    #[allow(dead_code)]
    pub(crate) fn memory_limit(&self, dyno_id: &str) -> Option<u64> {
        let dir = self.memory_dir(dyno_id);
        match self {
            Cgroups::V1 { .. } => read_u64(&dir.join("memory.limit_in_bytes")),
            Cgroups::V2 { .. } => read_u64(&dir.join("memory.max")),
        }
    }

    /// Processes the kernel's OOM killer ended in the dyno's cgroup (while it exists).
    pub(crate) fn oom_kills(&self, dyno_id: &str) -> Option<u64> {
        let dir = self.memory_dir(dyno_id);
        match self {
            Cgroups::V1 { .. } => stat_field(&dir.join("memory.oom_control"), "oom_kill"),
            Cgroups::V2 { .. } => stat_field(&dir.join("memory.events"), "oom_kill"),
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `name value` line of a cgroup stat file.
fn stat_field(path: &Path, name: &str) -> Option<u64> {
    stat_value(&read_stat(path), name)
}

/// A cgroup stat file's text (empty when it cannot be read).
fn read_stat(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of the `name value` line of a stat file's text.
fn stat_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_v1_layout_is_read_per_controller() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/\n";
        let Some(Cgroups::V1 { memory, cpuacct }) = Cgroups::parse(text, Path::new("/cg")) else {
            panic!("v1 expected")
        };
        assert_eq!(memory, PathBuf::from("/cg/memory/process_api/abc"));
        assert_eq!(cpuacct, Some(PathBuf::from("/cg/cpu,cpuacct/x")));
    }

    #[test]
    fn stat_values_are_found_by_whole_name() {
        let text = "cache 10\nrss 20\ntotal_cache 30\ntotal_rss 40\ntotal_pgpgin 7\n";
        assert_eq!(stat_value(text, "rss"), Some(20));
        assert_eq!(stat_value(text, "total_rss"), Some(40));
        assert_eq!(stat_value(text, "total_pgpgin"), Some(7));
        assert_eq!(stat_value(text, "total_swap"), None);
    }

    #[test]
    fn v2_uses_the_parent_of_the_own_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").expect("write");
        let Some(Cgroups::V2 { base }) =
            Cgroups::parse("0::/system.slice/slipway.service\n", dir.path())
        else {
            panic!("v2 expected")
        };
        assert_eq!(base, dir.path().join("system.slice"));
    }
}
