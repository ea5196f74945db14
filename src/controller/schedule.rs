//! When a GitSync's next sync is due: on a spec change, a request, the interval (jittered), or a
//! failure's backoff. The status this process knows decides, even before the watch delivers it.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::context::{Finished, key_of};
use crate::crd::{GitSync, GitSyncStatus, REQUESTED_AT_ANNOTATION};

/// ±10 % jitter around `interval`, different for each GitSync and each sync, and the same for
/// the same GitSync and last sync time: every requeue of one wait agrees on it (the scheduler
/// keeps the earliest of several requeues, so an unjittered one would undo the jitter).
pub fn jittered(interval: Duration, key: &str, last_sync: Timestamp) -> Duration {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same input gives the same wait in every call.
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    last_sync.as_second().hash(&mut hasher);
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    interval.mul_f64(1.0 + 0.1 * unit)
}

/// How soon a GitSync whose objects wait for their CRD syncs again.
pub const CRD_RECHECK: Duration = Duration::from_secs(5);

/// Backoff after `failures` consecutive failures: 5 s doubling, never beyond the interval.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let exp = Duration::from_secs(5).saturating_mul(1u32 << failures.saturating_sub(1).min(10));
    exp.min(interval).max(Duration::from_secs(1))
}

/// Why a sync runs now, or how long until it is due.
#[derive(Debug, PartialEq)]
pub enum Due {
    Now(&'static str),
    In(Duration),
}

/// The status as this process knows it: what the watch delivered, or, when this process has
/// since finished a sync the watch has not shown yet, that sync's fields.
pub fn known_status(status: &GitSyncStatus, finished: Option<&Finished>) -> GitSyncStatus {
    let mut status = status.clone();
    if let Some(f) = finished
        && status.last_sync_time.as_ref().is_none_or(|t| t.0 < f.time)
    {
        status.last_sync_time = Some(Time(f.time));
        status.observed_generation = f.generation;
        status.last_handled_requested_at = f.requested_at.clone();
    }
    status
}

pub fn due(sync: &GitSync, interval: Duration, failures: u32, now: Timestamp) -> Due {
    let status = sync.status.clone().unwrap_or_default();
    if status.observed_generation != sync.metadata.generation {
        return Due::Now("spec changed");
    }
    let requested = sync.annotations().get(REQUESTED_AT_ANNOTATION);
    if requested.is_some() && requested != status.last_handled_requested_at.as_ref() {
        return Due::Now("requested");
    }
    let Some(last) = status.last_sync_time else {
        return Due::Now("never synced");
    };
    let waiting_for_crd = !status.waiting_for_crd.is_empty();
    let wait = if failures > 0 {
        backoff(failures, interval)
    } else if waiting_for_crd {
        CRD_RECHECK.min(interval)
    } else {
        jittered(interval, &key_of(sync), last.0)
    };
    let elapsed = now
        .duration_since(last.0)
        .try_into()
        .unwrap_or(Duration::ZERO);
    if elapsed >= wait {
        Due::Now(match (failures > 0, waiting_for_crd) {
            (true, _) => "retry",
            (false, true) => "waiting for CRDs",
            (false, false) => "interval",
        })
    } else {
        Due::In(wait - elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::{sync_with, synced};

    #[test]
    fn a_status_the_watch_has_not_delivered_yet_does_not_start_the_same_sync_again() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let t1 = t0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60))
            .expect("t");
        let minute = Duration::from_secs(60);
        // The watch still shows the status before the request was handled at t1.
        let stale = sync_with(Some(synced(t0, None)), 2, Some("a"));
        assert_eq!(due(&stale, minute, 0, t1), Due::Now("spec changed"));
        let finished = Finished {
            time: t1,
            generation: Some(2),
            requested_at: Some("a".into()),
        };
        let mut view = stale.clone();
        view.status = Some(known_status(
            stale.status.as_ref().expect("status"),
            Some(&finished),
        ));
        assert_eq!(
            due(&view, minute, 0, t1),
            Due::In(jittered(minute, "apps/web", t1))
        );
        // Once the watch shows a newer status, that one counts.
        let t2 = t1
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))
            .expect("t");
        let newer = synced(t2, Some("a"));
        assert_eq!(
            known_status(&newer, Some(&finished)).last_sync_time,
            Some(Time(t2))
        );
    }

    #[test]
    fn a_sync_is_due_on_spec_change_request_interval_and_retry() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let minute = Duration::from_secs(60);
        let after = |s: i64| {
            t0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .expect("t")
        };
        assert_eq!(
            due(&sync_with(None, 1, None), minute, 0, t0),
            Due::Now("spec changed")
        );
        assert_eq!(
            due(&sync_with(Some(synced(t0, None)), 2, None), minute, 0, t0),
            Due::Now("spec changed")
        );
        let period = jittered(minute, "apps/web", t0);
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, None),
                minute,
                0,
                after(20)
            ),
            Due::In(period - Duration::from_secs(20))
        );
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, None),
                minute,
                0,
                after(67)
            ),
            Due::Now("interval"),
            "due within the interval plus 10 %"
        );
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, Some("a")),
                minute,
                0,
                after(1)
            ),
            Due::Now("requested")
        );
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, Some("a"))), 1, Some("a")),
                minute,
                0,
                after(1)
            ),
            Due::In(period - Duration::from_secs(1))
        );
        // After 2 failures the backoff (10 s) decides, not the interval.
        assert_eq!(
            due(
                &sync_with(Some(synced(t0, None)), 1, None),
                minute,
                2,
                after(10)
            ),
            Due::Now("retry")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let interval = Duration::from_secs(60);
        let steps: Vec<u64> = (1..=6).map(|n| backoff(n, interval).as_secs()).collect();
        assert_eq!(steps, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let mut waits = std::collections::BTreeSet::new();
        for i in 0..200 {
            let d = jittered(Duration::from_secs(100), &format!("s{i}"), t0);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
            assert_eq!(d, jittered(Duration::from_secs(100), &format!("s{i}"), t0));
            waits.insert(d.as_millis());
        }
        assert!(waits.len() > 150, "waits spread: {} distinct", waits.len());
        let below = waits.iter().filter(|&&w| w < 100_000).count();
        assert!(
            below > 50 && below < 150,
            "about half the waits are shorter than the interval: {below}"
        );
    }

    #[test]
    fn the_wait_after_a_sync_is_the_same_from_every_requeue() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let minute = Duration::from_secs(60);
        let sync = sync_with(Some(synced(t0, None)), 1, None);
        let expected = jittered(minute, &key_of(&sync), t0);
        assert_ne!(expected, minute, "jittered");
        assert_eq!(due(&sync, minute, 0, t0), Due::In(expected));
    }
}
