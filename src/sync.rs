//! One sync run: source → manifests → plan → apply → prune → report. Used by the CLI and the
//! controller alike. Nothing is pruned after any failure; every guard that stops a prune is reported.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::PropagationPolicy;
use tracing::{Instrument, info, info_span, warn};

use crate::apply::{ApplyAction, ApplyOptions, ApplyOutcome};
use crate::applyset::{self, Footprint, Inventory, Parent};
use crate::health::Health;
use crate::manifests::{self, Origin};
use crate::plan::{self, Discovery, ObjectKey, PlanContext, PlannedObject, Stage};
use crate::prune::{self, PruneAction, PruneOptions};
use crate::source::{self, Checkout, SourceSpec};

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Name of the sync (ApplySet parent name for the CLI).
    pub name: String,
    pub default_namespace: String,
    pub paths: Vec<String>,
    pub field_manager: String,
    pub prune: bool,
    pub dry_run: bool,
    pub force_conflicts: bool,
    /// Wait for health, at most this long.
    pub wait: Option<Duration>,
    /// Refuse to prune more than this many objects (None: 25 % of managed, at least 10).
    pub max_prune: Option<usize>,
    pub allow_empty: bool,
    pub prune_data: bool,
    pub propagation: PropagationPolicy,
    pub concurrency: usize,
    pub request_timeout: Duration,
    /// The ApplySet parent. None: a Secret named `name` in the default namespace (the CLI's).
    pub parent: Option<Parent>,
    /// Set to true to stop the sync at the next stage boundary before apply. Once apply has
    /// begun, the sync runs through prune, so a stop never leaves a half-pruned set.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl SyncOptions {
    pub fn new(name: &str, default_namespace: &str) -> Self {
        SyncOptions {
            name: name.into(),
            default_namespace: default_namespace.into(),
            paths: vec![".".into()],
            field_manager: crate::FIELD_MANAGER.into(),
            prune: true,
            dry_run: false,
            force_conflicts: true,
            wait: None,
            max_prune: None,
            allow_empty: false,
            prune_data: false,
            propagation: PropagationPolicy::Background,
            concurrency: 16,
            request_timeout: Duration::from_secs(30),
            parent: None,
            stop: None,
        }
    }

    /// The ApplySet parent this sync records its set on.
    pub fn parent(&self) -> Parent {
        self.parent
            .clone()
            .unwrap_or_else(|| Parent::secret(&self.name, &self.default_namespace))
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

/// The clients of one sync: `apply` reads and changes the managed objects (in the controller, it
/// impersonates the GitSync's ServiceAccount); `parent` reads and writes the ApplySet parent.
#[derive(Clone)]
pub struct Clients {
    pub apply: Client,
    pub parent: Client,
}

impl Clients {
    pub fn single(client: &Client) -> Clients {
        Clients {
            apply: client.clone(),
            parent: client.clone(),
        }
    }
}

/// Why a prune did not run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum PruneBlocked {
    /// Prune disabled by the user.
    Disabled,
    /// Something failed earlier in this sync.
    Failure,
    /// Some group-kind could not be listed (incomplete discovery or inventory).
    IncompleteInventory(String),
    /// Git holds no objects at all (--allow-empty overrides).
    EmptySource,
    /// More objects would go than --max-prune allows.
    TooMany(String),
}

impl PruneBlocked {
    /// Every value of [`PruneBlocked::category`].
    pub const CATEGORIES: [&'static str; 5] = [
        "disabled",
        "failure",
        "incomplete_inventory",
        "empty_source",
        "too_many",
    ];

    /// Fixed label value for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            PruneBlocked::Disabled => "disabled",
            PruneBlocked::Failure => "failure",
            PruneBlocked::IncompleteInventory(_) => "incomplete_inventory",
            PruneBlocked::EmptySource => "empty_source",
            PruneBlocked::TooMany(_) => "too_many",
        }
    }
}

impl std::fmt::Display for PruneBlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PruneBlocked::Disabled => write!(f, "prune is disabled"),
            PruneBlocked::Failure => write!(f, "not pruning: this sync had failures"),
            PruneBlocked::IncompleteInventory(d) => {
                write!(f, "not pruning: the inventory is incomplete ({d})")
            }
            PruneBlocked::EmptySource => write!(
                f,
                "not pruning: the source holds no objects (use --allow-empty to prune everything)"
            ),
            PruneBlocked::TooMany(d) => {
                write!(f, "not pruning: {d} (raise --max-prune to allow it)")
            }
        }
    }
}

/// Per-object line of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObjectReport {
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    pub result: ObjectResult,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drift_corrected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Where to read the object again (applied objects only), for health checks between syncs.
    #[serde(skip)]
    pub target: Option<(ObjectKey, kube::discovery::ApiResource)>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "reason")]
pub enum ObjectResult {
    Created,
    Configured,
    Unchanged,
    /// Deleted and created again because an immutable field changed (`kubesync.dev/recreate`).
    Recreated,
    /// Taken over from another ApplySet (`kubesync.dev/adopt`).
    Adopted,
    Pruned,
    Kept(String),
    Skipped(String),
    Failed(String),
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub managed: usize,
    pub created: usize,
    pub configured: usize,
    pub unchanged: usize,
    pub recreated: usize,
    pub adopted: usize,
    pub pruned: usize,
    pub kept: usize,
    pub failed: usize,
    pub drift_corrected: usize,
    pub unhealthy: usize,
}

/// Everything a sync did; rendered by the CLI and turned into status and metrics by the controller.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncReport {
    pub name: String,
    pub revision: Option<String>,
    #[serde(skip)]
    pub commit_time: Option<i64>,
    pub fetched: bool,
    pub dry_run: bool,
    pub objects: Vec<ObjectReport>,
    /// Errors that are not about one applied object (source, parse, plan, inventory).
    pub errors: Vec<String>,
    /// Problems that did not stop the sync.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub prune_blocked: Option<PruneBlocked>,
    pub summary: Summary,
    pub duration_seconds: f64,
    #[serde(skip)]
    pub fetch_duration: Option<Duration>,
    /// Fixed category of the first failure, for metrics.
    pub failure: Option<&'static str>,
    /// Dry runs only: (object, before, after) for every object that would change.
    #[serde(skip)]
    pub changes: Vec<Change>,
}

/// One object's state before and after (None: absent), for `kubesync diff`.
#[derive(Clone, Debug)]
pub struct Change {
    pub object: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl SyncReport {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    fn fail(&mut self, category: &'static str, message: String) {
        if self.failure.is_none() {
            self.failure = Some(category);
        }
        self.errors.push(message);
    }
}

/// Fetches the source, then syncs it.
pub async fn sync_source(
    client: &Client,
    spec: &SourceSpec,
    cache_dir: &std::path::Path,
    options: &SyncOptions,
) -> SyncReport {
    sync_source_with(&Clients::single(client), spec, cache_dir, options).await
}

/// [`sync_source`] with separate clients for the managed objects and the ApplySet parent.
pub async fn sync_source_with(
    clients: &Clients,
    spec: &SourceSpec,
    cache_dir: &std::path::Path,
    options: &SyncOptions,
) -> SyncReport {
    let started = Instant::now();
    let span = info_span!("sync", sync = %options.name, revision = tracing::field::Empty);
    async {
        let fetch_started = Instant::now();
        let checkout = match source::fetch(spec, cache_dir).await {
            Ok(c) => c,
            Err(e) => {
                let mut report = SyncReport {
                    name: options.name.clone(),
                    dry_run: options.dry_run,
                    ..Default::default()
                };
                report.fetch_duration = Some(fetch_started.elapsed());
                report.fail("source", format!("fetch failed: {e}"));
                report.prune_blocked = Some(PruneBlocked::Failure);
                report.duration_seconds = started.elapsed().as_secs_f64();
                warn!(error = %e, "fetch failed");
                return report;
            }
        };
        let fetch_duration = fetch_started.elapsed();
        tracing::Span::current().record("revision", checkout.revision.as_str());
        let mut report = sync_checkout_with(clients, &checkout, options).await;
        report.fetch_duration = Some(fetch_duration);
        report.duration_seconds = started.elapsed().as_secs_f64();
        report
    }
    .instrument(span)
    .await
}

/// Loads and plans a checkout without touching the cluster beyond discovery (for `render`).
pub async fn render(
    client: &Client,
    checkout: &Checkout,
    options: &SyncOptions,
) -> Result<Vec<PlannedObject>, Vec<String>> {
    let loaded = manifests::load(&checkout.dir, &options.paths)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let discovery = Discovery::run(client)
        .await
        .map_err(|e| vec![e.to_string()])?;
    let parent = options.parent();
    let ctx = PlanContext {
        default_namespace: options.default_namespace.clone(),
        applyset_id: parent.id(),
        parent: Some(parent.key()),
    };
    let plan = plan::plan(loaded, &discovery, &ctx);
    if !plan.errors.is_empty() {
        return Err(plan.errors.iter().map(ToString::to_string).collect());
    }
    let mut objects = plan.objects;
    // Deferred custom resources cannot be resolved without applying their CRDs; render them as
    // the plan would send them, with namespace and label.
    objects.extend(plan.deferred.iter().map(|d| d.assumed(&ctx)));
    Ok(objects)
}

/// Syncs an already fetched checkout.
pub async fn sync_checkout(
    client: &Client,
    checkout: &Checkout,
    options: &SyncOptions,
) -> SyncReport {
    sync_checkout_with(&Clients::single(client), checkout, options).await
}

/// [`sync_checkout`] with separate clients for the managed objects and the ApplySet parent.
pub async fn sync_checkout_with(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
) -> SyncReport {
    let started = Instant::now();
    let mut report = SyncReport {
        name: options.name.clone(),
        revision: Some(checkout.revision.clone()),
        commit_time: checkout.commit_time,
        fetched: checkout.fetched,
        dry_run: options.dry_run,
        ..Default::default()
    };
    run_pipeline(clients, checkout, options, &mut report).await;
    if !options.prune && report.prune_blocked.is_none() {
        report.prune_blocked = Some(PruneBlocked::Disabled);
    }
    summarise(&mut report);
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

/// A step that failed: the failure is already in the report, and nothing may be pruned.
struct Stop;

/// Records a failure that ends the sync before prune.
fn stop(report: &mut SyncReport, category: &'static str, message: String) -> Stop {
    report.fail(category, message);
    Stop
}

/// The sync, step by step. Each step records what it did in the report; a step that fails ends
/// the sync there, and then nothing is pruned.
async fn run_pipeline(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
    report: &mut SyncReport,
) {
    if run_steps(clients, checkout, options, report).await.is_err() {
        report.prune_blocked = Some(PruneBlocked::Failure);
    }
}

async fn run_steps(
    clients: &Clients,
    checkout: &Checkout,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<(), Stop> {
    let clock = Instant::now();
    let client = &clients.apply;
    check_stop(options, report)?;
    let loaded = load(checkout, options, report)?;
    check_stop(options, report)?;
    debug_elapsed(clock, "manifests loaded");
    let discovery = Discovery::run(client)
        .await
        .map_err(|e| stop(report, "discovery", e.to_string()))?;
    let parent = options.parent();
    let ctx = PlanContext {
        default_namespace: options.default_namespace.clone(),
        applyset_id: parent.id(),
        parent: Some(parent.key()),
    };
    let mut the_plan = make_plan(loaded, &discovery, &ctx, report)?;
    check_stop(options, report)?;
    debug_elapsed(clock, "planned");
    let set = open_set(clients, options, &parent, &discovery, &mut the_plan, report).await?;
    debug_elapsed(clock, "inventory listed");
    let mut applied = apply_stages(client, options, &ctx, the_plan, &set, report).await;
    debug_elapsed(clock, "applied");
    if let Some(timeout) = options
        .wait
        .filter(|_| !options.dry_run && report.failure.is_none())
    {
        wait_for_health(client, &mut applied.outcomes, timeout).await;
    }
    report_applied(options, &applied.outcomes, report);
    debug_elapsed(clock, "reported");
    if options.prune {
        prune_and_close(clients, options, &set, &applied.desired_keys, report).await?;
    }
    Ok(())
}

fn debug_elapsed(clock: Instant, what: &str) {
    tracing::debug!(elapsed_ms = clock.elapsed().as_millis() as u64, "{what}");
}

/// Ends the sync before apply when a stop was requested; once apply has begun the sync runs
/// through prune, so a stop never leaves a half-pruned set.
fn check_stop(options: &SyncOptions, report: &mut SyncReport) -> Result<(), Stop> {
    if options.stopping() {
        return Err(stop(
            report,
            "stopped",
            "stopped before apply (shutting down)".into(),
        ));
    }
    Ok(())
}

/// Manifests: any error fails the sync before anything is applied.
fn load(
    checkout: &Checkout,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> Result<Vec<manifests::Manifest>, Stop> {
    manifests::load(&checkout.dir, &options.paths).map_err(|errors| {
        for e in errors.0 {
            report.fail("manifests", e.to_string());
        }
        Stop
    })
}

fn make_plan(
    loaded: Vec<manifests::Manifest>,
    discovery: &Discovery,
    ctx: &PlanContext,
    report: &mut SyncReport,
) -> Result<plan::Plan, Stop> {
    let mut the_plan = plan::plan(loaded, discovery, ctx);
    report.warnings.append(&mut the_plan.warnings);
    if the_plan.errors.is_empty() {
        return Ok(the_plan);
    }
    for e in &the_plan.errors {
        report.fail("plan", e.to_string());
    }
    Err(Stop)
}

/// The ApplySet for the length of one sync: its parent, what this sync wants it to hold, and
/// what it holds now.
struct OpenSet {
    parent: Parent,
    desired: Footprint,
    inventory: Inventory,
    /// Objects applied while opening the set (the parent's own Namespace, when Git creates it).
    first: Vec<ApplyOutcome>,
}

/// Opens the set: reads and checks the parent, creates its Namespace when Git holds it, widens
/// the parent to everything the plan can touch (deferred custom resources included) before the
/// first write, and lists what the set holds.
async fn open_set(
    clients: &Clients,
    options: &SyncOptions,
    parent: &Parent,
    discovery: &Discovery,
    the_plan: &mut plan::Plan,
    report: &mut SyncReport,
) -> Result<OpenSet, Stop> {
    let client = &clients.apply;
    let state = applyset::read_parent(&clients.parent, parent)
        .await
        .map_err(|e| stop(report, "applyset", e.to_string()))?;
    let (group_kinds, namespaces) = the_plan.footprint();
    let desired = Footprint {
        group_kinds,
        namespaces,
    };
    let widened = state.footprint.union(&desired);
    if !state.exists && !parent.is_secret() {
        return Err(stop(
            report,
            "applyset",
            format!(
                "ApplySet parent {} {}/{} does not exist",
                parent.resource.kind, parent.namespace, parent.name
            ),
        ));
    }
    let mut first = Vec::new();
    if !state.exists && !options.dry_run {
        first = create_parent_namespace(client, options, parent, the_plan, report).await?;
    }
    let outdated = !state.exists || widened != state.footprint;
    if !options.dry_run && outdated {
        applyset::write_parent(&clients.parent, parent, &widened, &options.field_manager)
            .await
            .map_err(|e| stop(report, "applyset", e.to_string()))?;
    }
    let inventory = applyset::list_inventory(
        client,
        discovery,
        &parent.id(),
        &widened,
        &parent.namespace,
        options.concurrency,
    )
    .await;
    Ok(OpenSet {
        parent: parent.clone(),
        desired,
        inventory,
        first,
    })
}

/// The parent lives in the default namespace; when Git creates that namespace, it is applied
/// before the parent is written.
async fn create_parent_namespace(
    client: &Client,
    options: &SyncOptions,
    parent: &Parent,
    the_plan: &mut plan::Plan,
    report: &mut SyncReport,
) -> Result<Vec<ApplyOutcome>, Stop> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    if matches!(namespaces.get_opt(&parent.namespace).await, Ok(Some(_))) {
        return Ok(Vec::new());
    }
    let in_git = the_plan.objects.iter().position(|o| {
        o.key.group.is_empty() && o.key.kind == "Namespace" && o.key.name == parent.namespace
    });
    let Some(i) = in_git else {
        return Err(stop(
            report,
            "applyset",
            format!(
                "namespace {} does not exist: create it, or add a Namespace object for it to Git",
                parent.namespace
            ),
        ));
    };
    let namespace = the_plan.objects.remove(i);
    let apply_options = ApplyOptions {
        concurrency: 1,
        dry_run: false,
        ..apply_options(options)
    };
    Ok(crate::apply::apply_stage(
        client,
        std::slice::from_ref(&namespace),
        &Default::default(),
        &apply_options,
    )
    .await)
}

fn apply_options(options: &SyncOptions) -> ApplyOptions {
    ApplyOptions {
        field_manager: options.field_manager.clone(),
        force_conflicts: options.force_conflicts,
        dry_run: options.dry_run,
        concurrency: options.concurrency,
        timeout: options.request_timeout,
    }
}

/// What the apply stages did, and every object this sync wants in the set.
struct Applied {
    outcomes: Vec<ApplyOutcome>,
    desired_keys: BTreeSet<ObjectKey>,
}

const APPLY_ORDER: [Stage; 7] = [
    Stage::Foundations,
    Stage::ClusterConfig,
    Stage::Config,
    Stage::Services,
    Stage::Workloads,
    Stage::Rest,
    Stage::Webhooks,
];

/// Applies the plan stage by stage; after the CRDs, their custom resources are resolved. A failed
/// object does not stop the others; it is recorded as a failure of the sync.
async fn apply_stages(
    client: &Client,
    options: &SyncOptions,
    ctx: &PlanContext,
    mut the_plan: plan::Plan,
    set: &OpenSet,
    report: &mut SyncReport,
) -> Applied {
    let apply_options = apply_options(options);
    let mut outcomes = set.first.clone();
    let mut desired_keys: BTreeSet<ObjectKey> =
        the_plan.objects.iter().map(|o| o.key.clone()).collect();
    desired_keys.extend(outcomes.iter().map(|o| o.key.clone()));
    let mut pending = std::mem::take(&mut the_plan.objects);
    let mut deferred = std::mem::take(&mut the_plan.deferred);
    for stage in APPLY_ORDER {
        let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|o| o.stage == stage);
        pending = later;
        // A dry run cannot send objects whose Namespace it only pretends to create.
        let (now, assumed): (Vec<_>, Vec<_>) = if options.dry_run {
            let created = namespaces_created(&outcomes);
            now.into_iter().partition(|o| {
                o.key
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| !created.contains(ns))
            })
        } else {
            (now, Vec::new())
        };
        outcomes.extend(assumed.iter().map(assumed_created));
        if !now.is_empty() {
            let stage_outcomes =
                crate::apply::apply_stage(client, &now, &set.inventory.objects, &apply_options)
                    .await;
            outcomes.extend(stage_outcomes);
        }
        if stage != Stage::Foundations || deferred.is_empty() {
            continue;
        }
        if options.dry_run {
            // Their CRD is only pretended in a dry run: show them as Git has them.
            for d in deferred.drain(..) {
                let o = d.assumed(ctx);
                desired_keys.insert(o.key.clone());
                outcomes.push(assumed_created(&o));
            }
            continue;
        }
        // Wait until the CRDs are Established, rediscover, resolve their custom resources.
        match wait_for_crds(client, &now, options.request_timeout).await {
            Ok(discovery) => {
                let resolved =
                    plan::resolve_deferred(std::mem::take(&mut deferred), &discovery, ctx);
                report.warnings.extend(resolved.warnings.iter().cloned());
                for e in &resolved.errors {
                    report.fail("plan", e.to_string());
                }
                desired_keys.extend(resolved.objects.iter().map(|o| o.key.clone()));
                pending.extend(resolved.objects);
            }
            Err(message) => report.fail("apply", message),
        }
    }
    let first_failure = outcomes.iter().find_map(|o| match &o.action {
        ApplyAction::Failed(r) => Some(format!("{}: {}: {}", o.origin, o.key, r)),
        _ => None,
    });
    if let Some(first) = first_failure {
        report.fail(
            "apply",
            format!("apply failed for some objects; first: {first}"),
        );
    }
    Applied {
        outcomes,
        desired_keys,
    }
}

/// One report line per applied object, the changes a dry run would make, and, with `wait`, the
/// objects that did not become healthy in time.
fn report_applied(options: &SyncOptions, outcomes: &[ApplyOutcome], report: &mut SyncReport) {
    if options.dry_run {
        for o in outcomes {
            if o.action.changes() {
                report.changes.push(Change {
                    object: o.key.to_string(),
                    before: o.before.as_ref().map(crate::apply::comparable),
                    after: o.live.as_ref().map(crate::apply::comparable),
                });
            }
        }
    }
    for o in outcomes {
        report.objects.push(ObjectReport {
            object: o.key.to_string(),
            origin: Some(o.origin.clone()),
            result: match &o.action {
                ApplyAction::Created => ObjectResult::Created,
                ApplyAction::Configured => ObjectResult::Configured,
                ApplyAction::Unchanged => ObjectResult::Unchanged,
                ApplyAction::Recreated => ObjectResult::Recreated,
                ApplyAction::Adopted => ObjectResult::Adopted,
                ApplyAction::Failed(r) => ObjectResult::Failed(format!("{}: {r}", o.origin)),
            },
            drift_corrected: o.drift_corrected,
            health: o.health.clone(),
            target: Some((o.key.clone(), o.resource.clone())),
        });
    }
    if options.wait.is_none() || options.dry_run || report.failure.is_some() {
        return;
    }
    let unhealthy: Vec<String> = report
        .objects
        .iter()
        .filter_map(|o| match &o.health {
            Some(h) if !h.is_healthy() => Some(format!("{} ({h})", o.object)),
            _ => None,
        })
        .collect();
    if !unhealthy.is_empty() {
        report.fail(
            "health",
            format!("not healthy in time: {}", unhealthy.join(", ")),
        );
    }
}

/// Prune, behind every guard, then narrow the parent to what the set now holds. Guards that stop
/// a prune are reported; a failed delete fails the sync.
async fn prune_and_close(
    clients: &Clients,
    options: &SyncOptions,
    set: &OpenSet,
    desired_keys: &BTreeSet<ObjectKey>,
    report: &mut SyncReport,
) -> Result<(), Stop> {
    if report.failure.is_some() {
        return Err(Stop);
    }
    let inventory = &set.inventory;
    if !inventory.complete() {
        let detail = inventory
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        report.prune_blocked = Some(PruneBlocked::IncompleteInventory(detail));
        return Ok(());
    }
    let candidates = prune_candidates(inventory, desired_keys);
    if !candidates.is_empty()
        && let Some(blocked) =
            prune_guard(options, inventory.objects.len(), &candidates, desired_keys)
    {
        report.prune_blocked = Some(blocked);
        return Ok(());
    }
    let remaining = if candidates.is_empty() {
        Vec::new()
    } else {
        prune_candidates_now(&clients.apply, options, inventory, candidates, report).await
    };
    finish_parent(
        &clients.parent,
        &set.parent,
        &set.desired,
        desired_keys,
        &remaining,
        options,
        report,
    )
    .await;
    Ok(())
}

/// The guards on the size of a prune: Git became empty, or too much would go.
fn prune_guard(
    options: &SyncOptions,
    managed: usize,
    candidates: &[(ObjectKey, applyset::LiveObject)],
    desired_keys: &BTreeSet<ObjectKey>,
) -> Option<PruneBlocked> {
    if desired_keys.is_empty() && !options.allow_empty {
        return Some(PruneBlocked::EmptySource);
    }
    let limit = options.max_prune.unwrap_or_else(|| (managed / 4).max(10));
    (candidates.len() > limit).then(|| {
        PruneBlocked::TooMany(format!(
            "{} objects would be deleted, the limit is {limit}",
            candidates.len()
        ))
    })
}

/// Deletes (or keeps) the candidates and reports each; returns the keys still in the set.
async fn prune_candidates_now(
    client: &Client,
    options: &SyncOptions,
    inventory: &Inventory,
    candidates: Vec<(ObjectKey, applyset::LiveObject)>,
    report: &mut SyncReport,
) -> Vec<ObjectKey> {
    let prune_options = PruneOptions {
        field_manager: options.field_manager.clone(),
        dry_run: options.dry_run,
        prune_data: options.prune_data,
        propagation: options.propagation.clone(),
        concurrency: options.concurrency,
    };
    let pruned = prune::prune(client, candidates, &prune_options).await;
    let mut remaining = Vec::new();
    for p in &pruned {
        let result = match &p.action {
            PruneAction::Pruned => {
                if options.dry_run {
                    let before = inventory
                        .objects
                        .get(&p.key)
                        .map(|l| crate::apply::comparable(&l.object));
                    report.changes.push(Change {
                        object: p.key.to_string(),
                        before,
                        after: None,
                    });
                }
                ObjectResult::Pruned
            }
            PruneAction::Kept(r) => ObjectResult::Kept(r.clone()),
            // Someone else deleted it first: it is not in the set any more, and not our prune.
            PruneAction::Gone => ObjectResult::Skipped("already deleted".into()),
            PruneAction::Skipped(r) => {
                remaining.push(p.key.clone());
                ObjectResult::Skipped(r.clone())
            }
            PruneAction::Failed(r) => {
                remaining.push(p.key.clone());
                report.fail("prune", format!("pruning {}: {r}", p.key));
                ObjectResult::Failed(r.clone())
            }
        };
        report.objects.push(ObjectReport {
            object: p.key.to_string(),
            origin: None,
            result,
            drift_corrected: false,
            health: None,
            target: None,
        });
    }
    remaining
}

fn prune_candidates(
    inventory: &Inventory,
    desired: &BTreeSet<ObjectKey>,
) -> Vec<(ObjectKey, applyset::LiveObject)> {
    inventory
        .objects
        .iter()
        .filter(|(k, _)| !desired.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Narrows the parent to what the set now holds: the desired objects plus those left in place.
async fn finish_parent(
    client: &Client,
    parent: &Parent,
    desired: &Footprint,
    desired_keys: &BTreeSet<ObjectKey>,
    remaining: &[ObjectKey],
    options: &SyncOptions,
    report: &mut SyncReport,
) {
    if options.dry_run {
        return;
    }
    let mut footprint = desired.clone();
    for key in desired_keys.iter().chain(remaining) {
        footprint.group_kinds.insert(key.group_kind());
        if let Some(ns) = &key.namespace {
            footprint.namespaces.insert(ns.clone());
        }
    }
    match applyset::read_parent(client, parent).await {
        Ok(state) if state.footprint == footprint => {}
        _ => {
            if let Err(e) =
                applyset::write_parent(client, parent, &footprint, &options.field_manager).await
            {
                report.fail("applyset", e.to_string());
            }
        }
    }
}

async fn wait_for_crds(
    client: &Client,
    applied: &[PlannedObject],
    timeout: Duration,
) -> Result<Discovery, String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Vec<&PlannedObject> = applied
        .iter()
        .filter(|o| o.key.kind == "CustomResourceDefinition")
        .collect();
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    for crd in crds {
        loop {
            let established = match api.get_opt(&crd.key.name).await {
                Ok(Some(c)) => c
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True"),
                _ => false,
            };
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{}: not Established within {timeout:?}", crd.key));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Discovery can lag behind Established by a moment.
    let mut last_error = String::new();
    for _ in 0..20 {
        match Discovery::run(client).await {
            Ok(d) => return Ok(d),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last_error)
}

/// Dry runs only: the Namespaces this dry run would create.
fn namespaces_created(outcomes: &[ApplyOutcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .filter(|o| o.key.group.is_empty() && o.key.kind == "Namespace")
        .filter(|o| o.action == ApplyAction::Created)
        .map(|o| o.key.name.clone())
        .collect()
}

/// Dry runs only: an object the server cannot check yet (its Namespace or CRD is created by the
/// same sync), reported as created with Git's content.
fn assumed_created(o: &PlannedObject) -> ApplyOutcome {
    ApplyOutcome {
        key: o.key.clone(),
        resource: o.resource.clone(),
        origin: o.origin.clone(),
        action: ApplyAction::Created,
        drift_corrected: false,
        health: None,
        live: serde_json::from_value(o.desired.clone()).ok(),
        before: None,
    }
}

/// The health of one object as the server holds it now (None when it cannot be read).
pub async fn read_health(
    client: &Client,
    key: &ObjectKey,
    resource: &kube::discovery::ApiResource,
) -> Option<Health> {
    let api = crate::kube_ext::dynamic_api(client, key.namespace.as_deref(), resource);
    let fresh = api.get(&key.name).await.ok()?;
    Some(crate::apply::health_of(key, &fresh))
}

async fn wait_for_health(client: &Client, outcomes: &mut [ApplyOutcome], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all_healthy = true;
        for o in outcomes.iter_mut() {
            if let Some(Health::Progressing(_)) = &o.health {
                all_healthy = false;
                if let Some(fresh) = read_health(client, &o.key, &o.resource).await {
                    o.health = Some(fresh);
                }
            }
        }
        if all_healthy || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn summarise(report: &mut SyncReport) {
    let mut s = Summary::default();
    for o in &report.objects {
        match &o.result {
            ObjectResult::Created => s.created += 1,
            ObjectResult::Configured => s.configured += 1,
            ObjectResult::Unchanged => s.unchanged += 1,
            ObjectResult::Recreated => s.recreated += 1,
            ObjectResult::Adopted => s.adopted += 1,
            ObjectResult::Pruned => s.pruned += 1,
            ObjectResult::Kept(_) => s.kept += 1,
            ObjectResult::Skipped(_) => {}
            ObjectResult::Failed(_) => s.failed += 1,
        }
        if o.drift_corrected {
            s.drift_corrected += 1;
        }
        if o.health.as_ref().is_some_and(|h| !h.is_healthy()) {
            s.unhealthy += 1;
        }
    }
    s.managed = s.created + s.configured + s.unchanged + s.recreated + s.adopted;
    report.summary = s;
}

/// Where the CLI keeps its git cache unless `--cache-dir` says otherwise.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kubesync")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: kind.into(),
            namespace: Some("apps".into()),
            name: name.into(),
        }
    }

    fn outcome(kind: &str, name: &str, action: ApplyAction, health: Health) -> ApplyOutcome {
        ApplyOutcome {
            key: key(kind, name),
            resource: kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(
                &(),
            ),
            origin: Origin {
                file: format!("{name}.yaml"),
                document: 0,
                item: None,
            },
            action,
            drift_corrected: false,
            health: Some(health),
            live: None,
            before: None,
        }
    }

    fn live(name: &str) -> (ObjectKey, applyset::LiveObject) {
        (
            key("ConfigMap", name),
            applyset::LiveObject {
                resource: kube::discovery::ApiResource::erase::<
                    k8s_openapi::api::core::v1::ConfigMap,
                >(&()),
                namespaced: true,
                object: kube::api::DynamicObject::new(
                    name,
                    &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(
                        &(),
                    ),
                ),
            },
        )
    }

    #[test]
    fn prune_guards_stop_an_empty_source_and_large_prunes() {
        let options = SyncOptions::new("app", "apps");
        let desired: BTreeSet<ObjectKey> = [key("ConfigMap", "keep")].into();
        let few: Vec<_> = (0..10).map(|i| live(&format!("c{i}"))).collect();
        assert_eq!(
            prune_guard(&options, 12, &few, &desired),
            None,
            "at least 10 may go"
        );
        let many: Vec<_> = (0..11).map(|i| live(&format!("c{i}"))).collect();
        assert!(matches!(
            prune_guard(&options, 12, &many, &desired),
            Some(PruneBlocked::TooMany(d)) if d.contains("11 objects") && d.contains("limit is 10")
        ));
        assert_eq!(
            prune_guard(&options, 100, &many, &desired),
            None,
            "25 % of 100 managed objects"
        );
        assert_eq!(
            prune_guard(&options, 12, &few, &BTreeSet::new()),
            Some(PruneBlocked::EmptySource)
        );
        let allowed = SyncOptions {
            allow_empty: true,
            max_prune: Some(1000),
            ..SyncOptions::new("app", "apps")
        };
        assert_eq!(prune_guard(&allowed, 12, &many, &BTreeSet::new()), None);
    }

    #[test]
    fn applied_objects_are_reported_and_unhealthy_ones_fail_a_wait() {
        let outcomes = [
            outcome("ConfigMap", "a", ApplyAction::Created, Health::Healthy),
            outcome(
                "ConfigMap",
                "b",
                ApplyAction::Recreated,
                Health::Progressing("0 of 1 replicas ready".into()),
            ),
            outcome(
                "ConfigMap",
                "c",
                ApplyAction::Unchanged,
                Health::Suspended("rollout paused".into()),
            ),
        ];
        let mut report = SyncReport::default();
        report_applied(&SyncOptions::new("app", "apps"), &outcomes, &mut report);
        assert!(report.succeeded(), "no wait: health does not fail the sync");
        summarise(&mut report);
        let s = &report.summary;
        assert_eq!(
            (s.created, s.recreated, s.unchanged, s.managed, s.unhealthy),
            (1, 1, 1, 3, 1)
        );

        let waiting = SyncOptions {
            wait: Some(Duration::from_secs(1)),
            ..SyncOptions::new("app", "apps")
        };
        let mut report = SyncReport::default();
        report_applied(&waiting, &outcomes, &mut report);
        assert_eq!(report.failure, Some("health"));
        assert_eq!(
            report.errors,
            ["not healthy in time: configmap/b -n apps (progressing: 0 of 1 replicas ready)"]
        );
    }

    #[test]
    fn a_dry_run_reports_changes_and_new_namespaces() {
        let mut namespace = outcome("Namespace", "fresh", ApplyAction::Created, Health::Healthy);
        namespace.key.namespace = None;
        let outcomes = [
            namespace,
            outcome("ConfigMap", "same", ApplyAction::Unchanged, Health::Healthy),
            outcome("ConfigMap", "new", ApplyAction::Created, Health::Healthy),
        ];
        assert_eq!(
            namespaces_created(&outcomes),
            BTreeSet::from(["fresh".to_string()])
        );
        let dry = SyncOptions {
            dry_run: true,
            ..SyncOptions::new("app", "apps")
        };
        let mut report = SyncReport::default();
        report_applied(&dry, &outcomes, &mut report);
        let changed: Vec<&str> = report.changes.iter().map(|c| c.object.as_str()).collect();
        assert_eq!(changed, ["namespace/fresh", "configmap/new -n apps"]);
    }
}
