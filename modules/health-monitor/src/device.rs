//! The device: CPU (from `/proc/stat` deltas), memory (`/proc/meminfo`), free space of the
//! data directory's file system (`statvfs`), and the clock (wall clock against the monotonic
//! clock between two readings). Parsing is pure; [`DeviceProbe`] does the reading.

use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// One reading of the device. `None` where a source could not be read (or, for CPU and the
/// clock, on the first reading, which has nothing to compare with).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSnapshot {
    /// CPU busy percentage since the previous reading (all cores).
    pub cpu_percent: Option<f64>,
    /// `MemTotal` in bytes.
    pub memory_total_bytes: Option<u64>,
    /// `MemAvailable` in bytes.
    pub memory_available_bytes: Option<u64>,
    /// `100 × (1 − MemAvailable / MemTotal)`.
    pub memory_used_percent: Option<f64>,
    /// The data directory that was measured.
    pub data_dir: String,
    /// Size of its file system in bytes.
    pub disk_total_bytes: Option<u64>,
    /// Space available to unprivileged users in bytes.
    pub disk_free_bytes: Option<u64>,
    /// `100 × free / total`.
    pub disk_free_percent: Option<f64>,
    /// The wall clock at the reading (RFC 3339).
    pub clock: String,
    /// |Δwall − Δmonotonic| since the previous reading, in seconds.
    pub clock_jump_seconds: Option<f64>,
}

/// Cumulative CPU times from the `cpu` line of `/proc/stat` (in ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// All ticks.
    pub total: u64,
    /// Idle and iowait ticks.
    pub idle: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
#[must_use]
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user/nice.
    let total = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuTimes { total, idle })
}

/// Busy percentage between two readings; `None` when no time passed.
#[must_use]
pub fn cpu_percent(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let idle = cur.idle.checked_sub(prev.idle)?;
    if total == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    Some(100.0 * (total.saturating_sub(idle)) as f64 / total as f64)
}

/// `(MemTotal, MemAvailable)` in bytes from `/proc/meminfo`.
#[must_use]
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// Reads the device, remembering what the next reading needs for deltas.
///
/// # Invariants
/// `prev_cpu` and `prev_clock` are from the previous [`DeviceProbe::read`], if any.
#[derive(Debug)]
pub struct DeviceProbe {
    data_dir: PathBuf,
    prev_cpu: Option<CpuTimes>,
    prev_clock: Option<(SystemTime, Instant)>,
}

impl DeviceProbe {
    /// A probe measuring the file system holding `data_dir`.
    #[must_use]
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            prev_cpu: None,
            prev_clock: None,
        }
    }

    /// Changes the measured directory.
    pub fn set_data_dir(&mut self, data_dir: PathBuf) {
        self.data_dir = data_dir;
    }

    /// Reads everything once.
    pub fn read(&mut self, now: Instant) -> DeviceSnapshot {
        let mut snap = DeviceSnapshot {
            data_dir: self.data_dir.display().to_string(),
            ..DeviceSnapshot::default()
        };
        if let Some(cur) = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_proc_stat)
        {
            snap.cpu_percent = self.prev_cpu.and_then(|p| cpu_percent(p, cur));
            self.prev_cpu = Some(cur);
        }
        if let Some((total, avail)) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .as_deref()
            .and_then(parse_meminfo)
        {
            snap.memory_total_bytes = Some(total);
            snap.memory_available_bytes = Some(avail);
            snap.memory_used_percent = percent(total.saturating_sub(avail), total);
        }
        match nix::sys::statvfs::statvfs(&self.data_dir) {
            // The field types are platform-dependent (u32 on some 32-bit targets).
            #[allow(clippy::useless_conversion)]
            Ok(st) => {
                let frag = u64::from(st.fragment_size());
                let total = u64::from(st.blocks()) * frag;
                let free = u64::from(st.blocks_available()) * frag;
                snap.disk_total_bytes = Some(total);
                snap.disk_free_bytes = Some(free);
                snap.disk_free_percent = percent(free, total);
            }
            Err(e) => {
                tracing::debug!(dir = %self.data_dir.display(), error = %e, "statvfs failed.");
            }
        }
        let wall = SystemTime::now();
        snap.clock = humantime::format_rfc3339_millis(wall).to_string();
        if let Some((pw, pm)) = self.prev_clock {
            snap.clock_jump_seconds = Some(clock_jump(pw, pm, wall, now).as_secs_f64());
        }
        self.prev_clock = Some((wall, now));
        snap
    }
}

/// |Δwall − Δmonotonic| between two readings.
#[must_use]
pub fn clock_jump(
    prev_wall: SystemTime,
    prev_mono: Instant,
    wall: SystemTime,
    mono: Instant,
) -> Duration {
    let d_mono = mono.saturating_duration_since(prev_mono);
    match wall.duration_since(prev_wall) {
        Ok(d_wall) => d_wall.abs_diff(d_mono),
        // The wall clock went backwards by `back`: it is off by back + d_mono.
        Err(e) => e.duration() + d_mono,
    }
}

#[allow(clippy::cast_precision_loss)]
fn percent(part: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| 100.0 * part as f64 / total as f64)
}
