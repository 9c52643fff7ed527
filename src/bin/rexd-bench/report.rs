//! What a run reports: each workload's figures, latency statistics, the facts about the
//! machine that make figures comparable, and the server's memory when it runs locally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::json::Json;

/// One number a workload measured, named as it appears in the JSON `figures` object.
pub struct Figure {
    pub key: &'static str,
    /// `None` when the server does not expose it (e.g. staging time without timestamps).
    pub value: Option<f64>,
}

/// The result of one workload.
pub struct Outcome {
    pub figures: Vec<Figure>,
    /// The result in a few words, e.g. `1234.5 MB/s`, for the line and the summary table.
    pub headline: String,
    /// How it was measured (sizes, counts) and any breakdown the server exposed.
    pub detail: String,
    /// The workload's parameters, for the JSON report.
    pub params: Json,
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Latency samples of a timed loop.
pub struct Latencies(Vec<f64>);

impl Latencies {
    pub fn new(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().copied().map(ms).collect();
        ms.sort_by(f64::total_cmp);
        Latencies(ms)
    }

    pub fn from_ms(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Latencies(samples)
    }

    /// Nearest-rank percentile in milliseconds (`p` in 0..=100).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let n = self.0.len();
        if n % 2 == 1 {
            self.0[n / 2]
        } else {
            (self.0[n / 2 - 1] + self.0[n / 2]) / 2.0
        }
    }

    pub fn p95(&self) -> f64 {
        self.percentile(95.0)
    }
}

/// Facts about the machine running the client (and, for local runs, the server).
pub fn machine() -> Json {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let memory_mib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    Json::obj()
        .with("cores", cores)
        .with("cpu", cpu)
        .with("memory_mib", memory_mib)
        .with("os", std::env::consts::OS)
        .with("arch", std::env::consts::ARCH)
        .with("kernel", kernel)
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Resident set size of process `pid` in KiB, from `/proc/PID/status` (Linux only).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples a process's RSS every few milliseconds on its own thread and keeps the peak.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssPeak {
    const PERIOD: Duration = Duration::from_millis(10);

    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Self::PERIOD);
                }
            })
        };
        RssPeak { stop, peak, thread }
    }

    /// Stops sampling; the peak in MiB (`None` if the process could never be read).
    pub fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let kib = self.peak.load(Ordering::Relaxed);
        (kib > 0).then(|| kib as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latencies::from_ms((1..=100).map(f64::from).collect());
        assert_eq!(l.median(), 50.5);
        assert_eq!(l.p95(), 95.0);
        let one = Latencies::from_ms(vec![3.0]);
        assert_eq!((one.median(), one.p95()), (3.0, 3.0));
        assert!(Latencies::from_ms(vec![]).median().is_nan());
    }

    #[test]
    fn dates() {
        let now = utc_now();
        assert_eq!(
            (now.len(), &now[10..11], &now[19..]),
            (20, "T", "Z"),
            "{now}"
        );
    }
}
