//! One sync run: fetch → load → discover → plan → open the set → apply stages → wait → prune →
//! close the set → report. Used by the CLI and the controller alike. Nothing is pruned after any
//! failure; every guard that stops a prune is reported.
use std::path::{Path, PathBuf};
use std::time::Instant;

use kube::Client;
use tracing::{Instrument, info, info_span, warn};

use crate::applyset::{Footprint, OpenSet, write_jobs};
use crate::plan::{self, Discovery, PlannedObject};
use crate::run_once::{JobMemory, JobOutcome};
use crate::source::{self, Checkout, SourceSpec};
use plan_step::{load_all, make_plan, release_fields};
pub use report::ChartVersion;

mod apply_step;
mod error;
mod options;
mod plan_step;
mod prune_step;
mod repair;
mod report;
#[cfg(test)]
mod testing;

pub use crate::outcome::{Action, Change, ObjectReport, Summary};
pub use crate::prune::{PruneBlocked, PrunePolicy};
pub use apply_step::read_health;
pub use error::{Step, SyncError};
pub use options::{Clients, RevisionHook, SyncOptions, Target};
pub use repair::repair;
pub use report::SyncReport;

/// Fetches the source, then syncs it.
pub async fn sync_source(
    clients: &Clients,
    spec: &SourceSpec,
    cache_dir: &Path,
    options: &SyncOptions,
) -> SyncReport {
    let started = Instant::now();
    let span = info_span!("sync", sync = %options.target.name, revision = tracing::field::Empty);
    async {
        let fetch_started = Instant::now();
        let fetched = source::fetch(spec, cache_dir).await;
        let fetch_duration = Some(fetch_started.elapsed());
        let mut report = match fetched {
            Ok(checkout) => {
                tracing::Span::current().record("revision", checkout.revision.as_str());
                if let Some(hook) = &options.on_revision {
                    (hook.0)(&checkout.revision);
                }
                sync_checkout(clients, &checkout, options).await
            }
            Err(e) => {
                warn!(error = %e, "fetch failed");
                let mut report = SyncReport::failed(&options.target.name, SyncError::from(e));
                report.dry_run = options.apply.dry_run;
                report
            }
        };
        report.fetch_duration = fetch_duration;
        report.duration_seconds = started.elapsed().as_secs_f64();
        report
    }
    .instrument(span)
    .await
}

/// Syncs an already fetched checkout.
pub async fn sync_checkout(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
) -> SyncReport {
    let started = Instant::now();
    let mut report = SyncReport {
        name: options.target.name.clone(),
        revision: Some(checkout.revision.clone()),
        commit_time: checkout.commit_time,
        commit: checkout.commit.clone(),
        fetched: checkout.fetched,
        checkout_dir: Some(checkout.dir.clone()),
        dry_run: options.apply.dry_run,
        ..Default::default()
    };
    if let Err(e) = run(clients, checkout, options, &mut report).await {
        report.fail(e);
    }
    if !report.succeeded() && report.prune_blocked.is_none() && !report.prune_started {
        report.prune_blocked = Some(PruneBlocked::Failure);
    }
    if !options.prune.enabled && report.prune_blocked.is_none() {
        report.prune_blocked = Some(PruneBlocked::Disabled);
    }
    report.summarise();
    report.duration_seconds = started.elapsed().as_secs_f64();
    info!(
        revision = %checkout.revision,
        created = report.summary.created, configured = report.summary.configured,
        unchanged = report.summary.unchanged, pruned = report.summary.pruned,
        failed = report.summary.failed, ok = report.succeeded(),
        "sync finished"
    );
    report
}

/// The sync, step by step. A step that fails ends the sync there; failures of single objects are
/// recorded in the report as they happen. After any failure nothing is pruned.
async fn run(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let clock = Instant::now();
    let client = &clients.apply;
    check_stop(options)?;
    let discovery = Discovery::run(client).await.map_err(SyncError::from)?;
    let loaded = load_all(client, checkout, options, &discovery).await?;
    report.render_duration = loaded.render_duration;
    report.chart = loaded.chart;
    let manifests = loaded.manifests;
    check_stop(options)?;
    debug_elapsed(clock, "manifests loaded");
    let ctx = options.target.plan_context();
    let mut the_plan = make_plan(manifests, &discovery, &ctx, options.wait_for_crds, report)?;
    release_fields(client, &discovery, options, &mut the_plan, report).await?;
    check_stop(options)?;
    debug_elapsed(clock, "planned");
    let parent = options.target.parent();
    let desired = Footprint::of_plan(&the_plan);
    let mut set = OpenSet::read(&clients.parent, &parent, desired)
        .await
        .map_err(SyncError::from)?;
    let first = apply_step::create_parent_namespace(client, options, &set, &mut the_plan).await?;
    set.widen(
        &clients.parent,
        &options.apply.field_manager,
        !options.apply.dry_run,
    )
    .await
    .map_err(SyncError::from)?;
    set.list(client, &discovery, options.apply.concurrency)
        .await;
    debug_elapsed(clock, "inventory listed");
    let job_hashes = JobMemory::hashes(&the_plan.objects);
    let mut applied =
        apply_step::apply_stages(client, options, &ctx, the_plan, &set, first, report).await;
    debug_elapsed(clock, "applied");
    let waiting = options
        .wait
        .filter(|_| !options.apply.dry_run && report.succeeded());
    if let Some(timeout) = waiting {
        apply_step::wait_for_health(client, &mut applied.outcomes, timeout).await;
        report.health_checked = true;
    }
    report.record_applied(&applied.outcomes);
    if waiting.is_some() && report.succeeded() {
        report.require_health();
    }
    remember_jobs(clients, options, &set, &job_hashes, &applied, report).await;
    if options.prune.enabled {
        prune_step::prune_and_close(clients, options, &set, &applied.wanted, report).await?;
    }
    Ok(())
}

/// Records on the parent which Jobs ran (`run_once`), when that changed. A failed write is a
/// warning: those Jobs may run again once they are gone.
async fn remember_jobs(
    clients: &Clients,
    options: &SyncOptions,
    set: &OpenSet,
    hashes: &std::collections::BTreeMap<crate::plan::ObjectKey, String>,
    applied: &apply_step::Applied,
    report: &mut SyncReport,
) {
    let outcomes: Vec<JobOutcome> = (applied.outcomes.iter())
        .map(|o| JobOutcome {
            key: &o.key,
            action: &o.action,
            health: o.health.as_ref(),
        })
        .collect();
    let jobs = set.jobs.after(hashes, &outcomes, &applied.wanted);
    if jobs == set.jobs || options.apply.dry_run {
        return;
    }
    let field_manager = &options.apply.field_manager;
    if let Err(e) = write_jobs(&clients.parent, &set.parent, &jobs, field_manager).await {
        report
            .warnings
            .push(format!("remembering which Jobs ran: {e}"));
    }
}

fn debug_elapsed(clock: Instant, what: &str) {
    tracing::debug!(elapsed_ms = clock.elapsed().as_millis() as u64, "{what}");
}

/// Ends the sync before apply when a stop was requested; once apply has begun the sync runs
/// through prune, so a stop never leaves a half-pruned set.
fn check_stop(options: &SyncOptions) -> Result<(), SyncError> {
    match options.stopping() {
        true => Err(SyncError::Stopped),
        false => Ok(()),
    }
}

/// Loads and plans a checkout without touching the cluster beyond discovery (for `render`).
/// Custom resources whose CRD is in the same checkout are rendered as the plan would send them.
pub async fn render(
    client: &Client,
    checkout: &Checkout,
    options: &SyncOptions,
) -> Result<Vec<PlannedObject>, Vec<SyncError>> {
    let discovery = Discovery::run(client)
        .await
        .map_err(|e| vec![SyncError::from(e)])?;
    let manifests = (load_all(client, checkout, options, &discovery).await)
        .map_err(SyncError::split)?
        .manifests;
    let ctx = options.target.plan_context();
    let the_plan = plan::plan(manifests, &discovery, &ctx);
    if !the_plan.errors.is_empty() {
        return Err(SyncError::Plans(the_plan.errors).split());
    }
    let mut objects = the_plan.objects;
    objects.extend(the_plan.deferred.iter().map(|d| d.assumed(&ctx)));
    Ok(objects)
}

/// Where the CLI keeps its git cache unless `--cache-dir` says otherwise.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .map(|h| h.join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("kubesync")
}
