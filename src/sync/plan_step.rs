//! The steps before the cluster is written: the checkout's manifests loaded, kustomizations
//! rendered, everything decrypted, then resolved against discovery into a plan.
use std::time::Duration;

use super::error::SyncError;
use super::options::SyncOptions;
use super::report::{ChartVersion, SyncReport};
use crate::kustomize;
use crate::manifests::{self, Manifest};
use crate::plan::{self, Discovery, PlanContext};
use crate::release;
use crate::source::Checkout;

/// The manifests of a checkout, plain and rendered.
pub struct Loaded {
    pub manifests: Vec<Manifest>,
    /// Time spent in `kustomize build` or `helm`; None when nothing was rendered afresh.
    pub render_duration: Option<Duration>,
    /// The Helm chart's resolved version and digest (repository charts).
    pub chart: Option<ChartVersion>,
}

/// The manifests of the sync: the Helm chart's render when the target has one (helm sees the
/// target cluster's version and APIs), else the checkout's files and kustomizations.
pub async fn load_all(
    client: &kube::Client,
    checkout: &Checkout,
    options: &SyncOptions,
    discovery: &Discovery,
) -> Result<Loaded, SyncError> {
    let Some(chart) = &options.target.helm else {
        return load(checkout, options).await;
    };
    let kube_version = (client.apiserver_version().await.ok()).map(|info| info.git_version);
    let capabilities = crate::helm::Capabilities {
        kube_version,
        api_versions: discovery.api_versions(),
    };
    let mut rendered = crate::helm::render(&checkout.dir, chart, &capabilities).await?;
    if let Some(fragment) = &chart.post_render {
        let scratch = chart.scratch_path("post-render");
        rendered.yaml = (kustomize::post_render(
            &rendered.yaml,
            fragment,
            &scratch,
            &rendered.origin,
            &options.target.kustomize,
        )
        .await)
            .map_err(|e| SyncError::Renders(vec![e]))?;
    }
    let keys = &options.target.decryption;
    let mut manifests = manifests::parse_file_with_keys(&rendered.origin, &rendered.yaml, keys)
        .map_err(SyncError::Manifests)?;
    // Hooks of delete and rollback only: a sync never deletes or rolls a release back.
    manifests.retain(|m| crate::helm::hook_phase(&m.object) != Some(crate::helm::HookPhase::Never));
    let chart = (rendered.version.zip(rendered.digest))
        .map(|(version, digest)| ChartVersion { version, digest });
    Ok(Loaded {
        manifests,
        render_duration: Some(rendered.duration),
        chart,
    })
}

/// Manifests: any error fails the sync before anything is applied. A kustomization that fails
/// to render fails the sync in the render step; every failing one is reported.
pub async fn load(checkout: &Checkout, options: &SyncOptions) -> Result<Loaded, SyncError> {
    let target = &options.target;
    let tree = manifests::load_tree(
        &checkout.dir,
        &target.paths,
        &target.decryption,
        target.kustomize.mode,
    )
    .map_err(|e| SyncError::Manifests(e.0))?;
    let mut loaded = Loaded {
        manifests: tree.manifests,
        render_duration: None,
        chart: None,
    };
    let mut render_errors = Vec::new();
    let mut manifest_errors = Vec::new();
    for dir in &tree.kustomizations {
        match kustomize::render(
            &checkout.dir,
            dir,
            &checkout.revision,
            &target.kustomize,
            &target.decryption,
        )
        .await
        {
            Ok(rendered) => {
                if let Some(took) = rendered.duration {
                    *loaded.render_duration.get_or_insert_default() += took;
                }
                match manifests::parse_file_with_keys(
                    &rendered.file,
                    &rendered.yaml,
                    &target.decryption,
                ) {
                    Ok(mut objects) => loaded.manifests.append(&mut objects),
                    Err(mut errors) => manifest_errors.append(&mut errors),
                }
            }
            Err(e) => render_errors.push(e),
        }
    }
    match (render_errors.is_empty(), manifest_errors.is_empty()) {
        (false, _) => Err(SyncError::Renders(render_errors)),
        (true, false) => Err(SyncError::Manifests(manifest_errors)),
        (true, true) => Ok(loaded),
    }
}

/// Resolves every object against the API; its warnings go to the report.
pub fn make_plan(
    manifests: Vec<Manifest>,
    discovery: &Discovery,
    ctx: &PlanContext,
    wait_for_crds: bool,
    report: &mut SyncReport,
) -> Result<plan::Plan, SyncError> {
    let mut the_plan = plan::plan(manifests, discovery, ctx);
    report.warnings.append(&mut the_plan.warnings);
    if wait_for_crds {
        let (waiting, errors) = std::mem::take(&mut the_plan.errors)
            .into_iter()
            .partition(|e| e.awaits_crd());
        the_plan.errors = errors;
        report.waiting_for_crd = (waiting.iter())
            .map(|e: &plan::PlanError| e.to_string())
            .collect();
    }
    match the_plan.errors.is_empty() {
        true => Ok(the_plan),
        false => Err(SyncError::Plans(std::mem::take(&mut the_plan.errors))),
    }
}

/// Takes out of the plan the fields other controllers own: replicas of autoscaled workloads and
/// what `kubesync.dev/ignore-fields` names; records them in the report. A bad annotation fails
/// the sync before anything is applied.
pub async fn release_fields(
    client: &kube::Client,
    discovery: &Discovery,
    options: &SyncOptions,
    the_plan: &mut plan::Plan,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let applyset_id = options.target.parent().id();
    let pruning = options.prune.enabled.then_some(applyset_id.as_str());
    let (autoscalers, warnings) =
        release::Autoscalers::find(client, discovery, &the_plan.objects, pruning).await;
    report.warnings.extend(warnings);
    let (released, errors) = release::release(&mut the_plan.objects, &autoscalers);
    report.released = released;
    match errors.is_empty() {
        true => Ok(()),
        false => Err(SyncError::IgnoreFields(errors.join("; "))),
    }
}
