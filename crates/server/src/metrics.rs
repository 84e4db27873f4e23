//! Counters the server exposes at `GET /metrics`, in Prometheus's text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request-duration histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    /// (route, status) → requests
    requests: BTreeMap<(String, u16), u64>,
    durations: BTreeMap<String, Histogram>,
    samples: u64,
    bootstraps: u64,
    compute_seconds: f64,
    keys_registered: u64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub queue_pending: usize,
    pub prepared_keys: usize,
    pub prepared_key_bytes: usize,
    /// Key preparations done, and the seconds they took in all.
    pub key_preparations: u64,
    pub key_prepare_seconds: f64,
    /// Keys restored from their stored prepared form, and the seconds that took.
    pub key_restores: u64,
    pub key_restore_seconds: f64,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.with(|m| {
            *m.requests.entry((route.to_string(), status)).or_default() += 1;
            let h = m.durations.entry(route.to_string()).or_default();
            let s = elapsed.as_secs_f64();
            for (c, &b) in h.counts.iter_mut().zip(&BUCKETS) {
                if s <= b {
                    *c += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        })
    }

    /// A batch evaluated: its samples, bootstraps and compute time.
    pub fn evaluated(&self, samples: usize, bootstraps: usize, compute: Duration) {
        self.with(|m| {
            m.samples += samples as u64;
            m.bootstraps += bootstraps as u64;
            m.compute_seconds += compute.as_secs_f64();
        })
    }

    pub fn key_registered(&self) {
        self.with(|m| m.keys_registered += 1)
    }

    pub fn render(&self, g: &Gauges) -> String {
        self.with(|m| {
            let mut s = String::new();
            let _ = writeln!(
                s,
                "# HELP fhec_requests_total HTTP requests by route and status."
            );
            let _ = writeln!(s, "# TYPE fhec_requests_total counter");
            for ((route, code), n) in &m.requests {
                let _ = writeln!(
                    s,
                    "fhec_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
            let errors: u64 = m
                .requests
                .iter()
                .filter(|((_, c), _)| *c >= 400)
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                s,
                "# HELP fhec_request_errors_total HTTP requests answered 4xx or 5xx."
            );
            let _ = writeln!(s, "# TYPE fhec_request_errors_total counter");
            let _ = writeln!(s, "fhec_request_errors_total {errors}");
            let _ = writeln!(
                s,
                "# HELP fhec_request_duration_seconds Time to answer a request."
            );
            let _ = writeln!(s, "# TYPE fhec_request_duration_seconds histogram");
            for (route, h) in &m.durations {
                for (c, b) in h.counts.iter().zip(&BUCKETS) {
                    let _ = writeln!(
                        s,
                        "fhec_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {c}"
                    );
                }
                let _ = writeln!(
                    s,
                    "fhec_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    s,
                    "fhec_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    s,
                    "fhec_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
            let counters = [
                ("fhec_samples_total", "Samples evaluated.", m.samples as f64),
                (
                    "fhec_bootstraps_total",
                    "Bootstraps evaluated.",
                    m.bootstraps as f64,
                ),
                (
                    "fhec_key_preparations_total",
                    "Evaluation keys prepared (Fourier conversion, tables), on upload or after eviction.",
                    g.key_preparations as f64,
                ),
                (
                    "fhec_key_prepare_seconds_total",
                    "Seconds spent preparing evaluation keys.",
                    g.key_prepare_seconds,
                ),
                (
                    "fhec_key_restores_total",
                    "Evaluation keys restored from their stored prepared form (no conversion).",
                    g.key_restores as f64,
                ),
                (
                    "fhec_key_restore_seconds_total",
                    "Seconds spent restoring prepared evaluation keys.",
                    g.key_restore_seconds,
                ),
                (
                    "fhec_compute_seconds_total",
                    "Wall time the compute pool spent evaluating batches.",
                    m.compute_seconds,
                ),
                (
                    "fhec_keys_registered_total",
                    "Evaluation keys newly registered.",
                    m.keys_registered as f64,
                ),
            ];
            for (name, help, v) in counters {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
            }
            let rate = if m.compute_seconds > 0.0 {
                m.bootstraps as f64 / m.compute_seconds
            } else {
                0.0
            };
            let gauges = [
                (
                    "fhec_bootstraps_per_second",
                    "Bootstraps per second of evaluation (bootstraps / compute seconds).",
                    rate,
                ),
                (
                    "fhec_queue_pending",
                    "Jobs queued or running in the compute pool.",
                    g.queue_pending as f64,
                ),
                (
                    "fhec_prepared_keys",
                    "Evaluation keys prepared in memory.",
                    g.prepared_keys as f64,
                ),
                (
                    "fhec_prepared_key_bytes",
                    "Estimated memory of the prepared evaluation keys.",
                    g.prepared_key_bytes as f64,
                ),
            ];
            for (name, help, v) in gauges {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            s
        })
    }
}
