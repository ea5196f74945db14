//! The apply step: the plan's objects stage by stage, custom resources once their CRDs are
//! served, and the wait for health.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::Client;

use super::error::SyncError;
use super::options::SyncOptions;
use super::report::SyncReport;
use crate::apply::{ApplyOutcome, apply_stage};
use crate::applyset::OpenSet;
use crate::health::Health;
use crate::outcome::Action;
use crate::plan::{self, DeferredObject, Discovery, ObjectKey, PlanContext, PlannedObject, Stage};

pub const APPLY_ORDER: [Stage; 9] = [
    Stage::Foundations,
    Stage::PreHooks,
    Stage::ClusterConfig,
    Stage::Config,
    Stage::Services,
    Stage::Workloads,
    Stage::Rest,
    Stage::Webhooks,
    Stage::PostHooks,
];

/// What the apply stages did, and every object this sync wants in the set.
pub struct Applied {
    pub outcomes: Vec<ApplyOutcome>,
    pub wanted: BTreeSet<ObjectKey>,
}

/// The parent lives in the default namespace; when that namespace does not exist and Git holds
/// it, it is applied (taken out of the plan) before the parent is written.
pub async fn create_parent_namespace(
    client: &Client,
    options: &SyncOptions,
    set: &OpenSet,
    the_plan: &mut plan::Plan,
) -> Result<Vec<ApplyOutcome>, SyncError> {
    let namespace = &set.parent.namespace;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    if set.existed || options.apply.dry_run {
        return Ok(Vec::new());
    }
    if matches!(namespaces.get_opt(namespace).await, Ok(Some(_))) {
        return Ok(Vec::new());
    }
    let in_git = the_plan.objects.iter().position(|o| {
        o.key.group.is_empty() && o.key.kind == "Namespace" && &o.key.name == namespace
    });
    let Some(i) = in_git else {
        return Err(SyncError::MissingNamespace(namespace.clone()));
    };
    let planned = the_plan.objects.remove(i);
    let apply_options = crate::apply::ApplyOptions {
        concurrency: 1,
        ..options.apply.clone()
    };
    Ok(apply_stage(
        client,
        std::slice::from_ref(&planned),
        &Default::default(),
        &apply_options,
    )
    .await)
}

/// Applies the plan stage by stage; after the CRDs, their custom resources are resolved. A failed
/// object does not stop the others: it fails the sync, recorded in the report.
pub async fn apply_stages(
    client: &Client,
    options: &SyncOptions,
    ctx: &PlanContext,
    mut the_plan: plan::Plan,
    set: &OpenSet,
    first: Vec<ApplyOutcome>,
    report: &mut SyncReport,
) -> Applied {
    let mut applied = Applied {
        wanted: the_plan.objects.iter().map(|o| o.key.clone()).collect(),
        outcomes: first,
    };
    applied
        .wanted
        .extend(applied.outcomes.iter().map(|o| o.key.clone()));
    let mut pending = std::mem::take(&mut the_plan.objects);
    let mut deferred = std::mem::take(&mut the_plan.deferred);
    for stage in APPLY_ORDER {
        let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|o| o.stage == stage);
        pending = later;
        let now = apply_one_stage(client, options, set, now, &mut applied).await;
        if stage == Stage::Foundations && !deferred.is_empty() {
            let resolved = resolve_deferred(client, options, ctx, &now, &mut deferred, report);
            let resolved = resolved.await;
            applied
                .wanted
                .extend(resolved.iter().map(|o| o.key.clone()));
            applied.outcomes.extend(assumed_in_dry_run(
                options,
                ctx,
                &mut deferred,
                &mut applied.wanted,
            ));
            pending.extend(resolved);
        }
    }
    let first_failure = applied.outcomes.iter().find_map(|o| match &o.action {
        Action::Failed(r) => Some(format!("{}: {}: {}", o.origin, o.key, r)),
        _ => None,
    });
    if let Some(first) = first_failure {
        report.fail(SyncError::Apply { first });
    }
    applied
}

/// Applies one stage's objects; returns them (the CRDs among them are waited for).
async fn apply_one_stage(
    client: &Client,
    options: &SyncOptions,
    set: &OpenSet,
    now: Vec<PlannedObject>,
    applied: &mut Applied,
) -> Vec<PlannedObject> {
    // A dry run cannot send objects whose Namespace it only pretends to create.
    let (now, assumed): (Vec<_>, Vec<_>) = if options.apply.dry_run {
        let created = namespaces_created(&applied.outcomes);
        now.into_iter().partition(|o| {
            o.key
                .namespace
                .as_ref()
                .is_none_or(|ns| !created.contains(ns))
        })
    } else {
        (now, Vec::new())
    };
    applied.outcomes.extend(assumed.iter().map(assumed_created));
    // A Job that ran and is gone stays gone while its manifest is unchanged (`run_once`).
    let (ran, now): (Vec<_>, Vec<_>) = now
        .into_iter()
        .partition(|o| !set.inventory.objects.contains_key(&o.key) && set.jobs.already_ran(o));
    applied.outcomes.extend(ran.iter().map(ran_once));
    if !now.is_empty() {
        let outcomes = apply_stage(client, &now, &set.inventory.objects, &options.apply).await;
        applied.outcomes.extend(outcomes);
    }
    now
}

/// After the CRDs: waits until they are Established, rediscovers, and resolves their custom
/// resources (none in a dry run, which only pretends to create the CRDs).
async fn resolve_deferred(
    client: &Client,
    options: &SyncOptions,
    ctx: &PlanContext,
    crds: &[PlannedObject],
    deferred: &mut Vec<DeferredObject>,
    report: &mut SyncReport,
) -> Vec<PlannedObject> {
    if options.apply.dry_run {
        return Vec::new();
    }
    match wait_for_crds(client, crds, options.apply.timeout).await {
        Ok(discovery) => {
            let resolved = plan::resolve_deferred(std::mem::take(deferred), &discovery, ctx);
            report.warnings.extend(resolved.warnings.iter().cloned());
            if !resolved.errors.is_empty() {
                report.fail(SyncError::Plans(resolved.errors));
            }
            resolved.objects
        }
        Err(e) => {
            report.fail(e);
            Vec::new()
        }
    }
}

/// Dry runs only: custom resources whose CRD is only pretended, shown as Git has them.
fn assumed_in_dry_run(
    options: &SyncOptions,
    ctx: &PlanContext,
    deferred: &mut Vec<DeferredObject>,
    wanted: &mut BTreeSet<ObjectKey>,
) -> Vec<ApplyOutcome> {
    if !options.apply.dry_run {
        return Vec::new();
    }
    deferred
        .drain(..)
        .map(|d| {
            let o = d.assumed(ctx);
            wanted.insert(o.key.clone());
            assumed_created(&o)
        })
        .collect()
}

async fn crd_established(
    api: &kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
    name: &str,
) -> bool {
    match api.get_opt(name).await {
        Ok(Some(c)) => c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        _ => false,
    }
}

async fn wait_for_crds(
    client: &Client,
    applied: &[PlannedObject],
    timeout: Duration,
) -> Result<Discovery, SyncError> {
    let api = kube::Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let crds = applied
        .iter()
        .filter(|o| o.key.kind == "CustomResourceDefinition");
    for crd in crds {
        while !crd_established(&api, &crd.key.name).await {
            if Instant::now() > deadline {
                return Err(SyncError::CrdNotEstablished {
                    crd: crd.key.to_string(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Discovery can lag behind Established by a moment.
    let mut attempts = 0;
    loop {
        match Discovery::run(client).await {
            Ok(d) => return Ok(d),
            Err(e) if attempts >= 19 => return Err(SyncError::from(e)),
            Err(_) => attempts += 1,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Dry runs only: the Namespaces this dry run would create.
fn namespaces_created(outcomes: &[ApplyOutcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .filter(|o| o.key.group.is_empty() && o.key.kind == "Namespace")
        .filter(|o| o.action == Action::Created)
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
        action: Action::Created,
        drift_corrected: false,
        health: None,
        fingerprint: None,
        live: serde_json::from_value(o.desired.clone()).ok(),
        before: None,
    }
}

/// A Job not run again: it already ran as Git has it.
pub fn ran_once(o: &PlannedObject) -> ApplyOutcome {
    ApplyOutcome {
        action: Action::Skipped(crate::run_once::RAN_ONCE.into()),
        health: None,
        live: None,
        ..assumed_created(o)
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

/// Reads the objects still progressing again, once a second, until all are settled or the time
/// is up.
pub async fn wait_for_health(client: &Client, outcomes: &mut [ApplyOutcome], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all_settled = true;
        for o in outcomes.iter_mut() {
            if let Some(Health::Progressing(_)) = &o.health {
                all_settled = false;
                if let Some(fresh) = read_health(client, &o.key, &o.resource).await {
                    o.health = Some(fresh);
                }
            }
        }
        if all_settled || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::testing::outcome;

    #[test]
    fn a_dry_run_knows_the_namespaces_it_would_create() {
        let mut namespace = outcome("Namespace", "fresh", Action::Created, Health::Healthy);
        namespace.key.namespace = None;
        let mut existing = outcome("Namespace", "old", Action::Unchanged, Health::Healthy);
        existing.key.namespace = None;
        let outcomes = [
            namespace,
            existing,
            outcome("ConfigMap", "new", Action::Created, Health::Healthy),
        ];
        assert_eq!(
            namespaces_created(&outcomes),
            BTreeSet::from(["fresh".to_string()])
        );
    }
}
