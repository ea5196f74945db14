//! A repair: Git's content re-applied to named objects that changed in the cluster, from the
//! checkout of the revision the last sync applied. Nothing is listed, pruned or written to the
//! ApplySet parent (the objects are already in the set). The controller repairs when its
//! watches see drift.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tracing::{Instrument, info, info_span};

use super::apply_step::APPLY_ORDER;
use super::error::SyncError;
use super::options::{Clients, SyncOptions};
use super::plan_step::{load_all, make_plan, release_fields};
use super::report::SyncReport;
use crate::apply::apply_stage;
use crate::applyset::read_parent;
use crate::plan::{Discovery, ObjectKey};
use crate::prune::PruneBlocked;
use crate::source::Checkout;

/// Re-applies `objects` as the checkout has them; `options.target.paths` should name only the
/// files they come from. An object no longer in those files is reported as an error (the
/// checkout is not the one that was synced).
pub async fn repair(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
    objects: &BTreeSet<ObjectKey>,
) -> SyncReport {
    let started = Instant::now();
    let span = info_span!("repair", sync = %options.target.name, revision = %checkout.revision);
    let mut report = SyncReport {
        name: options.target.name.clone(),
        revision: Some(checkout.revision.clone()),
        commit_time: checkout.commit_time,
        commit: checkout.commit.clone(),
        prune_blocked: Some(PruneBlocked::Disabled),
        ..Default::default()
    };
    async {
        if let Err(e) = reapply(clients, checkout, options, objects, &mut report).await {
            report.fail(e);
        }
        report.summarise();
        report.duration_seconds = started.elapsed().as_secs_f64();
        info!(
            objects = objects.len(),
            corrected = report.summary.drift_corrected,
            created = report.summary.created,
            ok = report.succeeded(),
            "repair finished"
        );
    }
    .instrument(span)
    .await;
    report
}

async fn reapply(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
    objects: &BTreeSet<ObjectKey>,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let discovery = Discovery::run(&clients.apply)
        .await
        .map_err(SyncError::from)?;
    let manifests = (load_all(&clients.apply, checkout, options, &discovery).await?).manifests;
    let ctx = options.target.plan_context();
    let mut the_plan = make_plan(manifests, &discovery, &ctx, false, report)?;
    the_plan.objects.retain(|o| objects.contains(&o.key));
    release_fields(&clients.apply, &discovery, options, &mut the_plan, report).await?;
    let found: BTreeSet<&ObjectKey> = the_plan.objects.iter().map(|o| &o.key).collect();
    let missing: Vec<String> = objects
        .iter()
        .filter(|k| !found.contains(k))
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(SyncError::RepairTargetsGone {
            revision: checkout.revision.clone(),
            objects: missing.join(", "),
        });
    }
    let none_listed = BTreeMap::new();
    let mut outcomes = Vec::new();
    // A Job that ran is not run again by a repair (its TTL deleting it is no drift).
    let any_job = (the_plan.objects.iter()).any(|o| crate::run_once::is_job(&o.key));
    let jobs = match any_job {
        true => {
            (read_parent(&clients.parent, &options.target.parent()).await)
                .map_err(SyncError::from)?
                .jobs
        }
        false => Default::default(),
    };
    let (ran, pending): (Vec<_>, Vec<_>) =
        (the_plan.objects.into_iter()).partition(|o| jobs.already_ran(o));
    outcomes.extend(ran.iter().map(super::apply_step::ran_once));
    let mut pending = pending;
    for stage in APPLY_ORDER {
        let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|o| o.stage == stage);
        pending = later;
        if !now.is_empty() {
            outcomes.extend(apply_stage(&clients.apply, &now, &none_listed, &options.apply).await);
        }
    }
    report.record_applied(&outcomes);
    // No error is recorded yet: the first problem is the first object that failed.
    match report.first_problem() {
        Some(first) => Err(SyncError::Apply { first }),
        None => Ok(()),
    }
}
