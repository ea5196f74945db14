//! Saying a problem once: a failure repeated every interval is one message, then another only
//! when the problem changes or the reminder period has passed, and one `recovered` when it ends.
use std::time::{Duration, Instant};

use super::event::EventKind;

/// A problem a sync ended with, or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `event` is Failed, Stalled, Unhealthy, PruneBlocked or RolledBack; `about` says which
    /// problem (two outcomes with the same event and `about` are the same problem).
    Problem {
        event: EventKind,
        about: String,
    },
    Fine,
}

/// The problem last told about, per GitSync.
#[derive(Debug, Default)]
pub struct Dedup {
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    event: EventKind,
    about: String,
    told_at: Instant,
}

/// What to send for an outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The problem, new, changed or due for a reminder.
    Tell(EventKind),
    /// The problem that was told has ended.
    Recovered,
    /// Nothing new.
    Quiet,
}

impl Dedup {
    pub fn decide(&mut self, outcome: Outcome, now: Instant, reminder: Duration) -> Decision {
        match outcome {
            Outcome::Fine => match self.open.take() {
                Some(_) => Decision::Recovered,
                None => Decision::Quiet,
            },
            Outcome::Problem { event, about } => {
                let about = normalized(&about);
                let repeated = self.open.as_ref().is_some_and(|o| {
                    o.event == event
                        && o.about == about
                        && (reminder.is_zero() || now.duration_since(o.told_at) < reminder)
                });
                if repeated {
                    return Decision::Quiet;
                }
                self.open = Some(Open {
                    event,
                    about,
                    told_at: now,
                });
                Decision::Tell(event)
            }
        }
    }

    /// The event of the open problem.
    pub fn open_event(&self) -> Option<EventKind> {
        self.open.as_ref().map(|o| o.event)
    }
}

/// Runs of digits become `#`: durations, ports and counts in an error message do not make a new
/// problem of the same one.
fn normalized(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(about: &str) -> Outcome {
        Outcome::Problem {
            event: EventKind::Failed,
            about: about.into(),
        }
    }

    #[test]
    fn ten_failing_intervals_are_one_message_and_one_recovery() {
        let mut d = Dedup::default();
        let start = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut told = vec![];
        for i in 0..10u64 {
            let about = format!("fetch: connection refused after 0.{i}s");
            told.push(d.decide(failed(&about), start + Duration::from_secs(60 * i), day));
        }
        told.push(d.decide(Outcome::Fine, start + Duration::from_secs(700), day));
        told.push(d.decide(Outcome::Fine, start + Duration::from_secs(760), day));
        let sent: Vec<_> = told.iter().filter(|t| **t != Decision::Quiet).collect();
        assert_eq!(
            sent,
            [&Decision::Tell(EventKind::Failed), &Decision::Recovered]
        );
    }

    #[test]
    fn a_changed_problem_or_a_reminder_is_told_again() {
        let mut d = Dedup::default();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            d.decide(failed("fetch: refused"), t0, hour),
            Decision::Tell(EventKind::Failed)
        );
        assert_eq!(
            d.decide(failed("apply: forbidden"), t0, hour),
            Decision::Tell(EventKind::Failed)
        );
        assert_eq!(
            d.decide(failed("apply: forbidden"), t0 + hour / 2, hour),
            Decision::Quiet
        );
        assert_eq!(
            d.decide(failed("apply: forbidden"), t0 + hour, hour),
            Decision::Tell(EventKind::Failed)
        );
        let stalled = Outcome::Problem {
            event: EventKind::Stalled,
            about: "apply: forbidden".into(),
        };
        assert_eq!(
            d.decide(stalled, t0 + hour, hour),
            Decision::Tell(EventKind::Stalled)
        );
        // A zero reminder: never again while the problem stays the same.
        assert_eq!(
            d.decide(failed("x"), t0, Duration::ZERO),
            Decision::Tell(EventKind::Failed)
        );
        assert_eq!(
            d.decide(failed("x"), t0 + hour * 100, Duration::ZERO),
            Decision::Quiet
        );
        assert_eq!(d.open_event(), Some(EventKind::Failed));
    }

    #[test]
    fn success_without_a_told_problem_is_quiet() {
        let mut d = Dedup::default();
        assert_eq!(
            d.decide(Outcome::Fine, Instant::now(), Duration::from_secs(1)),
            Decision::Quiet
        );
        assert_eq!(d.open_event(), None);
    }
}
