//! The scrubber's schedule: when a node re-reads its rows, a bounded number
//! at a time, and what it reports. Without I/O or clock, like the rest of
//! the engine: it asks for [`StoreOp::ScrubStep`]s and takes their results;
//! what a finished pass means (repair on a backup, an alarm on a master) is
//! decided by the node's side.

use std::time::Duration;

use persist_core::store::ScrubReport;

use super::{StoreOp, StoreResult, StoreValue};
use crate::clock::Time;

/// How a node scrubs its rows (see RELIABILITY.md, "Scrub and ranged repair").
///
/// A pass reads every row of every registered table in steps of
/// `step_rows`, one step every `step_interval` at most, inside one
/// consistent read, and compares the buckets it computes with the recorded
/// ones; a pass starts every `period` (or as soon as the previous one ends,
/// if it took longer). By default at most 40,000 rows/s: a 100k-row store
/// is read whole in 2.5 s, every 10 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Whether the node scrubs at all (default: yes).
    pub enabled: bool,
    /// A pass starts at most this often (default 10 s).
    pub period: Duration,
    /// Rows read per step (default 2,000).
    pub step_rows: usize,
    /// The pause between two steps (default 50 ms).
    pub step_interval: Duration,
    /// Master: rows one repair ships at most (default 10,000); a backup
    /// that needs more is sent a snapshot.
    pub max_repair_rows: usize,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            enabled: true,
            period: Duration::from_secs(10),
            step_rows: 2_000,
            step_interval: Duration::from_millis(50),
            max_repair_rows: 10_000,
        }
    }
}

/// What a node reports about scrubbing and repairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubStatus {
    /// Passes completed since the node started.
    pub passes: u64,
    /// Rows the last pass read.
    pub last_pass_rows: u64,
    /// How long the last pass took (first step to result).
    pub last_pass_took: Option<Duration>,
    /// The position the last pass checked.
    pub position: u64,
    /// Ranges (buckets) whose rows did not match their recorded digest in
    /// the last pass.
    pub differing_ranges: usize,
    /// Passes that found such ranges (each is logged).
    pub alarms: u64,
    /// The recorded ranges are unknown (the rows did not match the recorded
    /// digest when the store opened): a scrub cannot tell where.
    pub untrusted: bool,
    /// Repairs done (backup: applied; master: answered with rows).
    pub repairs: u64,
    /// Rows shipped by repairs (master: sent; backup: received).
    pub rows_shipped: u64,
    /// Backup: rows its repairs changed.
    pub rows_repaired: u64,
    /// Backup: repairs that did not fit (rows changed meanwhile) and were
    /// rolled back.
    pub repair_failures: u64,
    /// The master's own rows do not match its digest: nothing is shipped
    /// from those ranges until an operator decides (set on both nodes).
    pub master_diverged: Option<String>,
    /// The last scrub failure (a store error), if the last pass failed.
    pub error: Option<String>,
}

/// When to scrub, and the counts of what scrubbing found.
pub(crate) struct Scrubber {
    cfg: ScrubConfig,
    next_at: Time,
    in_flight: bool,
    pass_start: Option<Time>,
    /// Bumped when the data changed outside the log (a repair, a restore):
    /// a pass that began before it compares rows that are gone.
    generation: u64,
    pass_generation: u64,
    pub status: ScrubStatus,
}

impl Scrubber {
    pub fn new(cfg: ScrubConfig, now: Time) -> Scrubber {
        Scrubber {
            next_at: now + cfg.period,
            cfg,
            in_flight: false,
            pass_start: None,
            generation: 0,
            pass_generation: 0,
            status: ScrubStatus::default(),
        }
    }

    /// When the next step is due (`None`: disabled or a step is running).
    pub fn deadline(&self) -> Option<Time> {
        (self.cfg.enabled && !self.in_flight).then_some(self.next_at)
    }

    /// The next step, if one is due.
    pub fn poll(&mut self, now: Time) -> Option<StoreOp> {
        if !self.cfg.enabled || self.in_flight || now < self.next_at {
            return None;
        }
        if self.pass_start.is_none() {
            self.pass_start = Some(now);
            self.pass_generation = self.generation;
        }
        self.in_flight = true;
        Some(StoreOp::ScrubStep {
            rows: self.cfg.step_rows.max(1),
        })
    }

    /// A step's result; a finished pass that still describes the data.
    pub fn stepped(&mut self, now: Time, result: StoreResult) -> Option<ScrubReport> {
        self.in_flight = false;
        match result {
            Ok(StoreValue::Scrubbed(None)) => {
                self.next_at = now + self.cfg.step_interval;
                None
            }
            Ok(StoreValue::Scrubbed(Some(report))) => {
                let start = self.pass_start.take().unwrap_or(now);
                self.next_at = (start + self.cfg.period).max(now + self.cfg.step_interval);
                let s = &mut self.status;
                s.passes += 1;
                s.last_pass_rows = report.rows;
                s.last_pass_took = Some(now.since(start));
                s.error = None;
                if self.pass_generation != self.generation {
                    // Rows were repaired or restored during the pass.
                    return None;
                }
                s.position = report.position;
                s.untrusted = !report.trusted;
                s.differing_ranges = report.differing_buckets();
                if s.differing_ranges > 0 {
                    s.alarms += 1;
                }
                Some(report)
            }
            Ok(_) => None,
            Err(e) => {
                self.pass_start = None;
                self.status.error = Some(e.to_string());
                self.next_at = now + self.cfg.period;
                None
            }
        }
    }

    /// The data changed outside the log: the pass in progress (if any) no
    /// longer counts, and the next one starts soon (to confirm a repair).
    pub fn data_replaced(&mut self, now: Time) {
        self.generation += 1;
        self.hurry(now);
    }

    /// A pass is wanted soon (the rows are known to differ somewhere): the
    /// next one starts after one pause, unless one is running.
    pub fn hurry(&mut self, now: Time) {
        if self.pass_start.is_none() {
            self.next_at = self.next_at.min(now + self.cfg.step_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persist_core::store::RangeMismatch;

    fn at(ms: u64) -> Time {
        Time::from_offset(Duration::from_millis(ms))
    }

    fn report(differing: usize) -> ScrubReport {
        ScrubReport {
            position: 7,
            rows: 5,
            tables: 1,
            trusted: true,
            differing: (0..differing)
                .map(|i| RangeMismatch {
                    table: "t".into(),
                    buckets: vec![i as u16],
                })
                .collect(),
        }
    }

    fn cfg() -> ScrubConfig {
        ScrubConfig {
            period: Duration::from_secs(10),
            step_interval: Duration::from_millis(100),
            step_rows: 3,
            ..ScrubConfig::default()
        }
    }

    #[test]
    fn a_pass_is_paced_and_repeats_every_period() {
        let mut s = Scrubber::new(cfg(), at(0));
        assert_eq!(s.deadline(), Some(at(10_000)));
        assert!(s.poll(at(9_999)).is_none());
        assert!(matches!(
            s.poll(at(10_000)),
            Some(StoreOp::ScrubStep { rows: 3 })
        ));
        assert_eq!(s.deadline(), None, "one step at a time");
        assert!(s.poll(at(10_000)).is_none());
        assert!(s
            .stepped(at(10_010), Ok(StoreValue::Scrubbed(None)))
            .is_none());
        assert_eq!(s.deadline(), Some(at(10_110)), "the pause bounds the rate");
        assert!(s.poll(at(10_110)).is_some());
        let r = s.stepped(at(10_120), Ok(StoreValue::Scrubbed(Some(report(0)))));
        assert_eq!(r, Some(report(0)));
        assert_eq!(s.status.passes, 1);
        assert_eq!(s.status.last_pass_took, Some(Duration::from_millis(120)));
        assert_eq!(
            s.deadline(),
            Some(at(20_000)),
            "the next pass, a period after this one began"
        );
        assert_eq!(s.status.alarms, 0);
    }

    #[test]
    fn a_slow_pass_is_followed_at_once_and_findings_are_counted() {
        let mut s = Scrubber::new(cfg(), at(0));
        s.poll(at(10_000)).unwrap();
        let r = s.stepped(at(25_000), Ok(StoreValue::Scrubbed(Some(report(2)))));
        assert_eq!(r.unwrap().differing_buckets(), 2);
        assert_eq!((s.status.alarms, s.status.differing_ranges), (1, 2));
        assert_eq!(s.deadline(), Some(at(25_100)));
    }

    #[test]
    fn a_pass_overtaken_by_a_repair_does_not_count_and_the_next_comes_soon() {
        let mut s = Scrubber::new(cfg(), at(0));
        s.poll(at(10_000)).unwrap();
        s.data_replaced(at(10_050));
        assert!(s
            .stepped(at(10_100), Ok(StoreValue::Scrubbed(Some(report(3)))))
            .is_none());
        assert_eq!(s.status.alarms, 0);
        // Idle: a repair brings the next pass forward.
        s.data_replaced(at(12_000));
        assert_eq!(s.deadline(), Some(at(12_100)));
        // A pass in progress is not hurried, nor discarded by a hurry.
        s.poll(at(12_100)).unwrap();
        s.hurry(at(12_150));
        assert!(s
            .stepped(at(12_200), Ok(StoreValue::Scrubbed(Some(report(1)))))
            .is_some());
        s.hurry(at(12_300));
        assert_eq!(s.deadline(), Some(at(12_400)));
    }

    #[test]
    fn a_failed_step_ends_the_pass_and_waits_a_period() {
        let mut s = Scrubber::new(cfg(), at(0));
        s.poll(at(10_000)).unwrap();
        s.stepped(at(10_001), Err(persist_core::Error::Locked("busy".into())));
        assert!(s.status.error.as_deref().unwrap().contains("busy"));
        assert_eq!(s.deadline(), Some(at(20_001)));
        let off = ScrubConfig {
            enabled: false,
            ..cfg()
        };
        let mut s = Scrubber::new(off, at(0));
        assert_eq!(s.deadline(), None);
        assert!(s.poll(at(100_000)).is_none());
    }
}
