//! The prune step: behind every guard, delete what left Git, then narrow the ApplySet parent to
//! what the set still holds.
use std::collections::BTreeSet;

use super::error::SyncError;
use super::options::{Clients, SyncOptions};
use super::report::SyncReport;
use crate::applyset::OpenSet;
use crate::plan::ObjectKey;
use crate::prune::PruneBlocked;

/// Why this sync may not prune at all, before any guard on its size: an earlier failure, or an
/// inventory that could not be listed completely.
pub fn blocked(report: &SyncReport, set: &OpenSet) -> Option<PruneBlocked> {
    if !report.succeeded() {
        return Some(PruneBlocked::Failure);
    }
    if !report.waiting_for_crd.is_empty() {
        return Some(PruneBlocked::WaitingForCrd);
    }
    if !set.inventory.complete() {
        let detail = set
            .inventory
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Some(PruneBlocked::IncompleteInventory(detail));
    }
    None
}

/// Prunes and closes the set. A guard that stops the prune is reported and leaves the parent as
/// it is; a failed delete fails the sync (recorded in the report) and its object stays in the set.
pub async fn prune_and_close(
    clients: &Clients,
    options: &SyncOptions,
    set: &OpenSet,
    wanted: &BTreeSet<ObjectKey>,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    if let Some(blocked) = blocked(report, set) {
        report.prune_blocked = Some(blocked);
        return Ok(());
    }
    let (leftovers, outside) = confine(set.leftovers(wanted), options, report);
    let managed = set.inventory.objects.len();
    if let Some(blocked) = options.prune.guard(managed, leftovers.len(), wanted.len()) {
        report.prune_blocked = Some(blocked);
        return Ok(());
    }
    report.prune_started = !leftovers.is_empty();
    let pruned =
        crate::prune::prune(&clients.apply, leftovers, &options.prune, &options.apply).await;
    report.record_pruned(&pruned, &set.inventory);
    if options.apply.dry_run {
        return Ok(());
    }
    let still_held = (pruned.iter().filter(|p| p.left_in_set).map(|p| &p.key)).chain(&outside);
    set.narrow(
        &clients.parent,
        wanted.iter().chain(still_held),
        &options.apply.field_manager,
    )
    .await
    .map_err(SyncError::from)
}

/// Under the tenancy lockdown a sync prunes only in its own namespace: what the set holds
/// elsewhere (recorded before the lockdown) is left in place and in the set, with a warning.
fn confine(
    leftovers: Vec<(ObjectKey, crate::applyset::LiveObject)>,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> (
    Vec<(ObjectKey, crate::applyset::LiveObject)>,
    Vec<ObjectKey>,
) {
    let Some(own) = &options.target.confined_to else {
        return (leftovers, Vec::new());
    };
    let (inside, outside): (Vec<_>, Vec<_>) =
        (leftovers.into_iter()).partition(|(key, _)| key.namespace.as_ref() == Some(own));
    let outside: Vec<ObjectKey> = outside.into_iter().map(|(key, _)| key).collect();
    for key in &outside {
        report.warnings.push(format!(
            "{key}: left Git but is not pruned: it is outside namespace {own}, to which the \
             tenancy lockdown confines this sync"
        ));
    }
    (inside, outside)
}
