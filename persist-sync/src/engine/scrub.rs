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
/// `step_rows`, inside one consistent read taken when it starts, and
/// compares the buckets it computes with the recorded ones. `period` is the
/// promise: a row changed behind the library's back is found within it. A
/// change made just after a pass took its read is seen by the next pass, so
/// passes start every half period and each is paced to end within it: the
/// pause after a step spreads the rest of the pass (as many rows as the
/// last one read) over what is left of its half period.
///
/// `max_core_percent` caps the cost: the pause after a step is at least the
/// step's own time scaled to that share of one core. When a store is too
/// large to be read at that share within half a period, passes take longer,
/// and [`ScrubStatus::finds_within`] says how long a change can go unseen
/// (more than `period`; a warning says so). With the defaults a 100k-row
/// store costs about 1-2 % of one core; a 1M-row store about 15-20 % (raise
/// `period` for stores that size: a minute costs a sixth of that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Whether the node scrubs at all (default: yes).
    pub enabled: bool,
    /// A changed row is found within this (default 10 s).
    pub period: Duration,
    /// Rows read per step (default 2,000).
    pub step_rows: usize,
    /// The shortest pause between two steps, so other store calls go
    /// between them (default 1 ms).
    pub min_pause: Duration,
    /// The share of one core a pass may use at most, in percent (default
    /// 25; 1 to 100).
    pub max_core_percent: u32,
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
            min_pause: Duration::from_millis(1),
            max_core_percent: 25,
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
    /// The longest a changed row can go unseen at the last pass's pace: the
    /// time between two pass starts plus a pass. At most the configured
    /// period unless the core share capped the pace.
    pub finds_within: Option<Duration>,
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

/// A pass in progress.
struct Pass {
    start: Time,
    /// Steps this pass is planned to take (from the last pass's rows, or
    /// for the first pass from the rows counted with its first step);
    /// `None` until then, at the core share's pace.
    planned: Option<u64>,
    steps: u64,
    generation: u64,
}

/// When to scrub, and the counts of what scrubbing found.
pub(crate) struct Scrubber {
    cfg: ScrubConfig,
    next_at: Time,
    /// When the step in flight was asked for.
    in_flight: Option<Time>,
    pass: Option<Pass>,
    /// Bumped when the data changed outside the log (a repair, a restore):
    /// a pass that began before it compares rows that are gone.
    generation: u64,
    /// The last pass ran past its half period (warned once until it does not).
    behind: bool,
    pub status: ScrubStatus,
}

impl Scrubber {
    pub fn new(cfg: ScrubConfig, now: Time) -> Scrubber {
        Scrubber {
            next_at: now + cfg.period / 2,
            cfg,
            in_flight: None,
            pass: None,
            generation: 0,
            behind: false,
            status: ScrubStatus::default(),
        }
    }

    fn half(&self) -> Duration {
        self.cfg.period / 2
    }

    /// When the next step is due (`None`: disabled or a step is running).
    pub fn deadline(&self) -> Option<Time> {
        (self.cfg.enabled && self.in_flight.is_none()).then_some(self.next_at)
    }

    /// The next step, if one is due.
    pub fn poll(&mut self, now: Time) -> Option<StoreOp> {
        if !self.cfg.enabled || self.in_flight.is_some() || now < self.next_at {
            return None;
        }
        if self.pass.is_none() {
            let rows = self.status.last_pass_rows;
            self.pass = Some(Pass {
                start: now,
                planned: (self.status.passes > 0)
                    .then(|| rows.div_ceil(self.cfg.step_rows.max(1) as u64).max(1)),
                steps: 0,
                generation: self.generation,
            });
        }
        self.in_flight = Some(now);
        // A pass of unknown size (the first) has its rows counted with its
        // first step, and is spread like the others from then on.
        let count = self
            .pass
            .as_ref()
            .is_some_and(|p| p.planned.is_none() && p.steps == 0);
        Some(StoreOp::ScrubStep {
            rows: self.cfg.step_rows.max(1),
            count,
        })
    }

    /// A step's result; a finished pass that still describes the data.
    pub fn stepped(&mut self, now: Time, result: StoreResult) -> Option<ScrubReport> {
        let asked = self.in_flight.take().unwrap_or(now);
        let work = now.since(asked);
        match result {
            Ok(StoreValue::Scrubbed(None)) => {
                self.step_done(now, work, None);
                None
            }
            Ok(StoreValue::ScrubProgress { total }) => {
                self.step_done(now, work, Some(total));
                None
            }
            Ok(StoreValue::Scrubbed(Some(report))) => {
                let pass = self.pass.take();
                let start = pass.as_ref().map_or(now, |p| p.start);
                let took = now.since(start);
                let between = took.max(self.half());
                self.next_at = (start + self.half()).max(now + self.cfg.min_pause);
                let s = &mut self.status;
                s.passes += 1;
                s.last_pass_rows = report.rows;
                s.last_pass_took = Some(took);
                s.finds_within = Some(between + took);
                s.error = None;
                let behind = between + took > self.cfg.period;
                if behind && !self.behind {
                    tracing::warn!(
                        rows = report.rows,
                        took_ms = took.as_millis() as u64,
                        period_ms = self.cfg.period.as_millis() as u64,
                        max_core_percent = self.cfg.max_core_percent,
                        "a scrub pass took longer than half the scrub period at its core share: a changed row may go unseen for longer than the period (raise the period or the share)"
                    );
                }
                self.behind = behind;
                if pass.is_none_or(|p| p.generation != self.generation) {
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
                self.pass = None;
                self.status.error = Some(e.to_string());
                self.next_at = now + self.half();
                None
            }
        }
    }

    /// A step that did not end the pass took `work`; `total`, when the
    /// pass had its rows counted, plans its steps.
    fn step_done(&mut self, now: Time, work: Duration, total: Option<u64>) {
        let step_rows = self.cfg.step_rows.max(1) as u64;
        let pause = match self.pass.as_mut() {
            Some(pass) => {
                pass.steps += 1;
                if let Some(total) = total {
                    pass.planned = Some(total.div_ceil(step_rows).max(1));
                }
                pause(&self.cfg, now, work, pass)
            }
            None => self.cfg.min_pause,
        };
        self.next_at = now + pause;
    }

    /// The data changed outside the log: the pass in progress (if any) no
    /// longer counts, and the next one starts soon (to confirm a repair).
    pub fn data_replaced(&mut self, now: Time) {
        self.generation += 1;
        self.hurry(now);
    }

    /// A pass is wanted soon (the rows are known to differ somewhere): the
    /// next one starts after the shortest pause, unless one is running.
    pub fn hurry(&mut self, now: Time) {
        if self.pass.is_none() {
            self.next_at = self.next_at.min(now + self.cfg.min_pause);
        }
    }
}

/// The pause after a step that took `work`, `pass.steps` steps into `pass`.
fn pause(cfg: &ScrubConfig, now: Time, work: Duration, pass: &Pass) -> Duration {
    let percent = cfg.max_core_percent.clamp(1, 100);
    let capped = work * (100 - percent) / percent;
    // The rest of the pass spread over what is left of 90 % of its half
    // period (a little room for the last step and the result).
    let spread = match pass.planned {
        Some(planned) if planned > pass.steps => {
            let budget = pass.start + cfg.period / 2 * 9 / 10;
            budget.since(now) / (planned - pass.steps) as u32
        }
        _ => Duration::ZERO,
    };
    cfg.min_pause.max(capped).max(spread)
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
            step_rows: 3,
            min_pause: Duration::from_millis(1),
            max_core_percent: 25,
            ..ScrubConfig::default()
        }
    }

    /// Runs a pass of `steps` steps (the last one finishing), each taking
    /// `work`, from `at`; returns when it ended and its report.
    fn run_pass(s: &mut Scrubber, steps: u64, work: u64) -> (Time, Option<ScrubReport>) {
        let mut now = s.deadline().expect("a pass is due");
        for i in 1..=steps {
            assert!(s.poll(now).is_some(), "step {i} is due at {now}");
            assert_eq!(s.deadline(), None, "one step at a time");
            now += Duration::from_millis(work);
            let result = if i == steps {
                Some(ScrubReport {
                    rows: 3 * steps,
                    ..report(0)
                })
            } else {
                None
            };
            let r = s.stepped(now, Ok(StoreValue::Scrubbed(result)));
            if i == steps {
                return (now, r);
            }
            now = s.deadline().unwrap();
        }
        unreachable!()
    }

    #[test]
    fn passes_start_every_half_period_and_a_known_size_is_spread_over_it() {
        let mut s = Scrubber::new(cfg(), at(0));
        assert_eq!(
            s.deadline(),
            Some(at(5_000)),
            "the first pass after half a period"
        );
        assert!(s.poll(at(4_999)).is_none());
        // The first pass does not know its size and asks for the count with
        // its first step; answered without it (as here), it goes at the core
        // share's pace (a 10 ms step, then 30 ms of pause at 25 %).
        assert!(matches!(
            s.poll(at(5_000)),
            Some(StoreOp::ScrubStep {
                rows: 3,
                count: true
            })
        ));
        assert!(s.poll(at(5_000)).is_none());
        assert!(s
            .stepped(at(5_010), Ok(StoreValue::Scrubbed(None)))
            .is_none());
        assert_eq!(s.deadline(), Some(at(5_040)));
        s.poll(at(5_040)).unwrap();
        let r = s.stepped(
            at(5_050),
            Ok(StoreValue::Scrubbed(Some(ScrubReport {
                rows: 30,
                ..report(0)
            }))),
        );
        assert_eq!(r.unwrap().rows, 30);
        assert_eq!(s.status.passes, 1);
        assert_eq!(s.status.last_pass_took, Some(Duration::from_millis(50)));
        assert_eq!(s.status.finds_within, Some(Duration::from_millis(5_050)));
        assert_eq!(
            s.deadline(),
            Some(at(10_000)),
            "half a period after the last start"
        );
        // The second pass knows its size (30 rows: 10 steps) and spreads them
        // over 90 % of its half period: about 500 ms after each 1 ms step.
        let (end, r) = run_pass(&mut s, 10, 1);
        assert!(r.is_some());
        assert!(
            (at(14_400)..=at(14_502)).contains(&end),
            "spread over the half period, and ended within it ({end})"
        );
        assert_eq!(
            s.status.finds_within,
            Some(Duration::from_millis(5_000 + 4_501))
        );
        assert_eq!(s.deadline(), Some(at(15_000)));
    }

    #[test]
    fn the_first_pass_counts_its_rows_and_is_spread_like_the_others() {
        let mut s = Scrubber::new(cfg(), at(0));
        assert!(matches!(
            s.poll(at(5_000)),
            Some(StoreOp::ScrubStep {
                rows: 3,
                count: true
            })
        ));
        assert!(s
            .stepped(at(5_002), Ok(StoreValue::ScrubProgress { total: 30 }))
            .is_none());
        // 30 rows: 10 steps, the 9 left spread over what is left of 90 % of
        // the half period (about 500 ms apart), not at the core share's
        // pace (3 ms apart).
        let next = s.deadline().unwrap();
        assert!((at(5_450)..=at(5_502)).contains(&next), "{next}");
        let mut now = next;
        for i in 2..=10 {
            now = s.deadline().unwrap();
            assert!(
                matches!(s.poll(now), Some(StoreOp::ScrubStep { count: false, .. })),
                "step {i} is counted no more"
            );
            now += Duration::from_millis(1);
            let report = (i == 10).then(|| ScrubReport {
                rows: 30,
                ..report(0)
            });
            s.stepped(now, Ok(StoreValue::Scrubbed(report)));
        }
        assert_eq!(s.status.passes, 1);
        assert!(
            (at(9_400)..=at(9_502)).contains(&now),
            "spread over the half period, and ended within it ({now})"
        );
    }

    #[test]
    fn the_core_share_caps_a_large_pass_and_the_bound_it_then_keeps_is_reported() {
        let mut s = Scrubber::new(cfg(), at(0));
        // A pass of 200 steps of 10 ms: at 25 % it takes 200 * 40 ms - 30 ms.
        let (end, r) = run_pass(&mut s, 200, 10);
        assert!(r.is_some());
        assert_eq!(end, at(5_000 + 200 * 40 - 30));
        assert_eq!(s.status.last_pass_took, Some(Duration::from_millis(7_970)));
        assert_eq!(
            s.status.finds_within,
            Some(Duration::from_millis(2 * 7_970)),
            "longer than the period: the next pass starts at once"
        );
        assert_eq!(s.deadline(), Some(end + Duration::from_millis(1)));
        // The next pass, planned for 200 steps, is still held to the share.
        let start = s.deadline().unwrap();
        s.poll(start).unwrap();
        s.stepped(
            start + Duration::from_millis(10),
            Ok(StoreValue::Scrubbed(None)),
        );
        assert_eq!(
            s.deadline(),
            Some(start + Duration::from_millis(40)),
            "the cap, not the spread (4.5 s over 199 steps is 22 ms)"
        );
    }

    #[test]
    fn findings_are_counted() {
        let mut s = Scrubber::new(cfg(), at(0));
        s.poll(at(5_000)).unwrap();
        let r = s.stepped(at(5_100), Ok(StoreValue::Scrubbed(Some(report(2)))));
        assert_eq!(r.unwrap().differing_buckets(), 2);
        assert_eq!((s.status.alarms, s.status.differing_ranges), (1, 2));
    }

    #[test]
    fn a_pass_overtaken_by_a_repair_does_not_count_and_the_next_comes_soon() {
        let mut s = Scrubber::new(cfg(), at(0));
        s.poll(at(5_000)).unwrap();
        s.data_replaced(at(5_050));
        assert!(s
            .stepped(at(5_100), Ok(StoreValue::Scrubbed(Some(report(3)))))
            .is_none());
        assert_eq!(s.status.alarms, 0);
        // Idle: a repair brings the next pass forward.
        s.data_replaced(at(7_000));
        assert_eq!(s.deadline(), Some(at(7_001)));
        // A pass in progress is not hurried, nor discarded by a hurry.
        s.poll(at(7_001)).unwrap();
        s.hurry(at(7_050));
        assert!(s
            .stepped(at(7_100), Ok(StoreValue::Scrubbed(Some(report(1)))))
            .is_some());
        s.hurry(at(7_300));
        assert_eq!(s.deadline(), Some(at(7_301)));
    }

    #[test]
    fn a_failed_step_ends_the_pass_and_waits_half_a_period() {
        let mut s = Scrubber::new(cfg(), at(0));
        s.poll(at(5_000)).unwrap();
        s.stepped(at(5_001), Err(persist_core::Error::Locked("busy".into())));
        assert!(s.status.error.as_deref().unwrap().contains("busy"));
        assert_eq!(s.deadline(), Some(at(10_001)));
        let off = ScrubConfig {
            enabled: false,
            ..cfg()
        };
        let mut s = Scrubber::new(off, at(0));
        assert_eq!(s.deadline(), None);
        assert!(s.poll(at(100_000)).is_none());
    }
}
