//! What a scenario publishes: per request kind, how many were sent and succeeded, the failures
//! by status, the longest request, p50/p99 before, during and after the fault and the time to
//! recover; as a Markdown table, as JSON, and as the timeline the plot draws.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::load::{Kind, Record};
use super::plot::{Marker, Sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Phase {
    Before,
    During,
    After,
}

/// The fault window in seconds since the load started: `[start, end)`; `end` is when the
/// scenario finished undoing the fault (restarted what it killed, lifted the partition).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Window {
    pub start: f64,
    pub end: f64,
}

impl Window {
    pub fn phase(&self, t: f64) -> Phase {
        if t < self.start {
            Phase::Before
        } else if t < self.end {
            Phase::During
        } else {
            Phase::After
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of<'a>(records: impl Iterator<Item = &'a Record>) -> Latency {
        let mut ms: Vec<f64> = records.map(|r| r.latency_ms).collect();
        ms.sort_by(f64::total_cmp);
        Latency {
            count: ms.len(),
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KindSummary {
    pub kind: Kind,
    pub sent: usize,
    pub succeeded: usize,
    /// Outcome label (`503+Retry-After`, `error: …`) → count, for everything that did not succeed.
    pub failed: BTreeMap<String, usize>,
    pub before: Latency,
    pub during: Latency,
    pub after: Latency,
    /// Seconds from the fault's start to the end of the last failed request of this kind (0 if
    /// none failed).
    pub recovery_s: f64,
}

impl KindSummary {
    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub window: Window,
    pub markers: Vec<(f64, String)>,
    pub kinds: Vec<KindSummary>,
    pub duration_s: f64,
}

impl Report {
    pub fn new(
        scenario: &str,
        records: &[Record],
        window: Window,
        markers: &[Marker],
        duration_s: f64,
    ) -> Report {
        let mut kinds = Vec::new();
        for kind in Kind::ALL {
            let of_kind: Vec<&Record> = records.iter().filter(|r| r.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let mut failed = BTreeMap::new();
            let mut last_failure_end: Option<f64> = None;
            for r in of_kind.iter().filter(|r| !r.outcome.is_ok()) {
                *failed.entry(r.outcome.label()).or_insert(0) += 1;
                last_failure_end = Some(last_failure_end.unwrap_or(0.0).max(r.end()));
            }
            let in_phase = |p: Phase| {
                Latency::of(
                    of_kind
                        .iter()
                        .copied()
                        .filter(move |r| window.phase(r.start) == p),
                )
            };
            kinds.push(KindSummary {
                kind,
                sent: of_kind.len(),
                succeeded: of_kind.iter().filter(|r| r.outcome.is_ok()).count(),
                failed,
                before: in_phase(Phase::Before),
                during: in_phase(Phase::During),
                after: in_phase(Phase::After),
                recovery_s: last_failure_end.map_or(0.0, |e| (e - window.start).max(0.0)),
            });
        }
        Report {
            scenario: scenario.to_owned(),
            window,
            markers: markers.iter().map(|m| (m.at, m.label.clone())).collect(),
            kinds,
            duration_s,
        }
    }

    pub fn kind(&self, kind: Kind) -> Option<&KindSummary> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    /// The Markdown table (and the fault's timeline) printed for a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fault from {:.1} s to {:.1} s of {:.1} s; {}",
            self.window.start,
            self.window.end,
            self.duration_s,
            self.markers
                .iter()
                .map(|(t, l)| format!("{t:.2} s {l}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push('\n');
        out.push_str(
            "| requests | sent | succeeded | failed (by outcome) | longest | p50 / p99 before | p50 / p99 during | p50 / p99 after | recovered after |\n",
        );
        out.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|\n");
        for k in &self.kinds {
            let failed = if k.failed.is_empty() {
                "0".to_owned()
            } else {
                k.failed
                    .iter()
                    .map(|(label, n)| format!("{n} × {label}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let longest = k.before.max_ms.max(k.during.max_ms).max(k.after.max_ms);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.1} ms | {} | {} | {} | {} |",
                k.kind.name(),
                k.sent,
                k.succeeded,
                failed,
                longest,
                pair(&k.before),
                pair(&k.during),
                pair(&k.after),
                if k.failed.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{:.2} s", k.recovery_s)
                }
            );
        }
        out
    }

    /// The timeline in buckets of `bucket` seconds, by request start.
    pub fn samples(records: &[Record], duration_s: f64, bucket: f64) -> Vec<Sample> {
        let n = (duration_s / bucket).ceil().max(1.0) as usize;
        let mut buckets: Vec<(u64, u64, Vec<f64>)> = vec![(0, 0, Vec::new()); n];
        for r in records {
            let i = ((r.start / bucket) as usize).min(n - 1);
            if r.outcome.is_ok() {
                buckets[i].0 += 1;
            } else {
                buckets[i].1 += 1;
            }
            buckets[i].2.push(r.latency_ms);
        }
        buckets
            .into_iter()
            .enumerate()
            .map(|(i, (ok, failed, mut ms))| {
                ms.sort_by(f64::total_cmp);
                Sample {
                    t: i as f64 * bucket,
                    ok,
                    failed,
                    p99_ms: percentile(&ms, 0.99),
                }
            })
            .collect()
    }
}

fn pair(l: &Latency) -> String {
    if l.count == 0 {
        "–".to_owned()
    } else {
        format!("{:.1} / {:.1} ms", l.p50_ms, l.p99_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::Outcome;
    use super::*;

    fn rec(kind: Kind, start: f64, ms: f64, code: u16) -> Record {
        Record {
            kind,
            start,
            latency_ms: ms,
            outcome: Outcome::Status {
                code,
                retry_after: code == 503,
            },
        }
    }

    #[test]
    fn phases_failures_and_recovery_come_from_the_records() {
        let records = vec![
            rec(Kind::Cached, 0.5, 2.0, 200),
            rec(Kind::Cached, 1.5, 40.0, 200),
            rec(Kind::Login, 1.2, 5.0, 503),
            rec(Kind::Login, 1.8, 100.0, 503),
            rec(Kind::Login, 2.5, 3.0, 200),
        ];
        let w = Window {
            start: 1.0,
            end: 2.0,
        };
        let r = Report::new("t", &records, w, &[], 3.0);
        let cached = r.kind(Kind::Cached).unwrap();
        assert_eq!(
            (cached.sent, cached.succeeded, cached.failed_total()),
            (2, 2, 0)
        );
        assert_eq!(cached.before.max_ms, 2.0);
        assert_eq!(cached.during.p99_ms, 40.0);
        assert_eq!(cached.recovery_s, 0.0);
        let login = r.kind(Kind::Login).unwrap();
        assert_eq!(login.failed["503+Retry-After"], 2);
        // The last failure started at 1.8 s and took 100 ms: recovered 0.9 s after 1.0 s.
        assert!(
            (login.recovery_s - 0.9).abs() < 1e-9,
            "{}",
            login.recovery_s
        );
        assert_eq!(login.after.count, 1);
        let table = r.table();
        assert!(
            table.contains("| new login | 3 | 1 | 2 × 503+Retry-After |"),
            "{table}"
        );
    }

    #[test]
    fn samples_bucket_by_start_time() {
        let records = vec![
            rec(Kind::Cached, 0.1, 1.0, 200),
            rec(Kind::Cached, 0.6, 9.0, 500),
            rec(Kind::Cached, 0.7, 3.0, 200),
        ];
        let s = Report::samples(&records, 1.0, 0.5);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].ok, s[0].failed), (1, 0));
        assert_eq!((s[1].ok, s[1].failed, s[1].p99_ms), (1, 1, 9.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
