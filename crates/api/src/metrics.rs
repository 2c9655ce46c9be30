//! A small Prometheus registry owned by one service instance.
//!
//! Services keep their own registry instead of a process-global recorder, because the devnet
//! runs several nodes and a gateway in one process and each must report only its own numbers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (seconds) of latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Counters (by name and one label value), gauges and latency histograms.
#[derive(Default)]
pub struct Registry {
    counters: Mutex<BTreeMap<(String, String), u64>>,
    gauges: Mutex<BTreeMap<String, i64>>,
    histograms: Mutex<BTreeMap<String, Histogram>>,
}

impl Registry {
    /// Adds `v` to counter `name{label_key="label"}`.
    pub fn inc(&self, name: &str, label: &str, v: u64) {
        let mut g = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *g.entry((name.to_string(), label.to_string())).or_default() += v;
    }

    pub fn set_gauge(&self, name: &str, v: i64) {
        let mut g = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        g.insert(name.to_string(), v);
    }

    pub fn add_gauge(&self, name: &str, delta: i64) {
        let mut g = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        *g.entry(name.to_string()).or_default() += delta;
    }

    /// Records one observation in seconds.
    pub fn observe(&self, name: &str, seconds: f64) {
        let mut g = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let h = g.entry(name.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The Prometheus text exposition. Counter labels are rendered as `label="..."`.
    pub fn render(&self, prefix: &str) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = "";
        for ((name, label), v) in counters.iter() {
            if name != last {
                let _ = writeln!(out, "# TYPE {prefix}_{name} counter");
                last = name;
            }
            if label.is_empty() {
                let _ = writeln!(out, "{prefix}_{name} {v}");
            } else {
                let _ = writeln!(out, "{prefix}_{name}{{label=\"{label}\"}} {v}");
            }
        }
        drop(counters);
        for (name, v) in self.gauges.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "# TYPE {prefix}_{name} gauge\n{prefix}_{name} {v}");
        }
        for (name, h) in self
            .histograms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "# TYPE {prefix}_{name} histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{prefix}_{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{prefix}_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{prefix}_{name}_sum {}", h.sum);
            let _ = writeln!(out, "{prefix}_{name}_count {}", h.count);
        }
        out
    }
}

/// A gauge that goes up on creation and down on drop (e.g. requests in flight).
pub struct GaugeGuard<'a> {
    reg: &'a Registry,
    name: &'static str,
}

impl<'a> GaugeGuard<'a> {
    pub fn new(reg: &'a Registry, name: &'static str) -> Self {
        reg.add_gauge(name, 1);
        GaugeGuard { reg, name }
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.reg.add_gauge(self.name, -1);
    }
}

/// Re-export for services that keep their own atomics.
pub type Counter = AtomicU64;
pub type Gauge = AtomicI64;

/// Reads an atomic counter.
pub fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::default();
        r.inc("requests_total", "chat", 2);
        r.set_gauge("queue_depth", 3);
        r.observe("ttft_seconds", 0.02);
        let text = r.render("node");
        assert!(text.contains("node_requests_total{label=\"chat\"} 2"));
        assert!(text.contains("node_queue_depth 3"));
        assert!(text.contains("node_ttft_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("node_ttft_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("node_ttft_seconds_count 1"));
    }
}
