//! What the controller hands the engine for one GitSync: its source and credentials, its sync
//! options, and where its repository and renders are cached.
use std::time::Duration;

use kube::ResourceExt;

use super::context::Context;
use super::credentials::{
    CredentialsError, age_keys, clients, git_auth, helm_credentials, helm_values_from,
};
use crate::applyset::Parent;
use crate::crd::GitSync;
use crate::kustomize::KustomizeOptions;
use crate::notify::forge::State;
use crate::source::SourceSpec;
use crate::sync::{RevisionHook, SyncError, SyncOptions, SyncReport};

/// Fetches credentials, builds the clients and runs the engine; `at` pins a commit (a
/// rollback's), which is then applied without waiting and pruned only if the spec allows it.
pub async fn run_sync(
    ctx: &Context,
    sync: &GitSync,
    timeout: Duration,
    at: Option<&str>,
) -> SyncReport {
    let name = sync.name_any();
    let work_dir = work_dir(ctx, sync);
    let credentials = |e| SyncError::Credentials(Box::new(e));
    let prepared = async {
        let spec = source_spec(ctx, sync, &work_dir, timeout).await?;
        let clients = clients(ctx, sync).await.map_err(credentials)?;
        let mut options = sync_options(ctx, sync, timeout);
        with_secrets(ctx, sync, &mut options)
            .await
            .map_err(credentials)?;
        Ok::<_, SyncError>((spec, clients, options))
    };
    let (mut spec, clients, mut options) = match prepared.await {
        Ok(p) => p,
        Err(e) => return SyncReport::failed(&name, e),
    };
    if at.is_none()
        && let Some(poster) = super::notifications::status_poster(ctx, sync).await
    {
        // Kept for the sync's result: the token's Secret is read once per sync.
        ctx.notifier
            .keep_poster(&super::context::key_of(sync), poster.clone());
        let pending = move |revision: &str| poster.post(revision, State::Pending, "syncing");
        options.on_revision = Some(RevisionHook(std::sync::Arc::new(pending)));
    }
    if let Some(commit) = at {
        spec.reference = crate::source::GitRef::Commit(commit.into());
        options.wait = None;
        options.prune.enabled &= sync.spec.rollback.as_ref().is_some_and(|r| r.prune);
    }
    crate::sync::sync_source(&clients, &spec, &work_dir.join("git"), &options).await
}

/// The secrets the engine's options need: SOPS age keys and the Helm repository's credentials.
pub async fn with_secrets(
    ctx: &Context,
    sync: &GitSync,
    options: &mut SyncOptions,
) -> Result<(), CredentialsError> {
    options.target.decryption = age_keys(ctx, sync).await?;
    if let Some(helm) = options.target.helm.as_mut() {
        helm.credentials = helm_credentials(ctx, sync, &work_dir(ctx, sync)).await?;
        helm.values_from = helm_values_from(ctx, sync, &work_dir(ctx, sync)).await?;
    }
    Ok(())
}

/// Where the GitSync's repository is cached.
pub fn work_dir(ctx: &Context, sync: &GitSync) -> std::path::PathBuf {
    let namespace = sync.namespace().unwrap_or_default();
    ctx.config.cache_dir.join(namespace).join(sync.name_any())
}

/// The Git source of a GitSync, with its credentials.
pub async fn source_spec(
    ctx: &Context,
    sync: &GitSync,
    work_dir: &std::path::Path,
    timeout: Duration,
) -> Result<SourceSpec, SyncError> {
    let auth = git_auth(ctx, sync, work_dir)
        .await
        .map_err(|e| SyncError::Credentials(Box::new(e)))?;
    Ok(SourceSpec {
        url: sync.spec.url.clone(),
        reference: sync.spec.git_ref().map_err(SyncError::from)?,
        auth,
        timeout,
    })
}

/// The engine's options for a GitSync.
pub fn sync_options(ctx: &Context, sync: &GitSync, timeout: Duration) -> SyncOptions {
    let namespace = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    let target_namespace = sync.spec.target_namespace.as_deref().unwrap_or(&namespace);
    let mut options = SyncOptions::new(&name, target_namespace);
    options.target.paths = vec![sync.spec.path.clone()];
    options.target.parent = Some(parent_of(sync));
    options.target.confined_to = ctx.config.tenancy.confines(sync);
    options.target.kustomize = kustomize_options(ctx, sync, timeout);
    options.target.helm = helm_options(ctx, sync, target_namespace, timeout);
    options.apply.field_manager = ctx.config.field_manager.clone();
    options.apply.timeout = timeout.min(Duration::from_secs(60));
    options.apply.drift = sync.spec.drift;
    options.prune.enabled = sync.spec.prune;
    options.wait = (sync.spec.wait || sync.spec.rolls_back()).then_some(timeout);
    options.wait_for_crds = waits_for_crds(sync, k8s_openapi::jiff::Timestamp::now());
    options.stop = Some(ctx.stop.clone());
    options
}

/// The ApplySet parent of a GitSync: the GitSync itself; for a remote cluster
/// (`spec.kubeConfig`), a Secret `kubesync.<namespace>.<name>` in the target namespace there, so
/// that the set can be read and pruned in the cluster that holds it.
pub fn parent_of(sync: &GitSync) -> Parent {
    let namespace = sync.namespace().unwrap_or_default();
    let name = sync.name_any();
    match &sync.spec.kube_config {
        None => Parent::git_sync(&name, &namespace),
        Some(_) => {
            let target = sync.spec.target_namespace.as_deref().unwrap_or(&namespace);
            Parent::secret(&format!("kubesync.{namespace}.{name}"), target)
        }
    }
}

/// The GitSync's Helm chart, if it has one (credentials are added by [`with_secrets`]).
fn helm_options(
    ctx: &Context,
    sync: &GitSync,
    namespace: &str,
    timeout: Duration,
) -> Option<crate::helm::HelmOptions> {
    use crate::helm::{ChartSource, HelmOptions};
    let spec = sync.spec.helm.as_ref()?;
    let source = match &spec.repo_url {
        None => ChartSource::Path(spec.chart.clone()),
        Some(url) => ChartSource::Repository {
            url: url.clone(),
            chart: spec.chart.clone(),
            version: spec.version.clone(),
        },
    };
    Some(HelmOptions {
        source,
        release_name: (spec.release_name.clone()).unwrap_or_else(|| sync.name_any()),
        namespace: namespace.into(),
        values: spec.values.clone(),
        values_files: spec.values_files.clone(),
        values_from: Vec::new(),
        include_crds: spec.include_crds,
        skip_tests: spec.skip_tests,
        post_render: (spec.post_render.as_ref())
            .map(|p| serde_json::json!({"patches": p.patches, "images": p.images})),
        credentials: Default::default(),
        binary: ctx.config.helm_binary.clone(),
        timeout,
        cache_dir: ctx.config.cache_dir.join("helm"),
    })
}

/// Kustomize as the GitSync asks, renders cached beside its repository, killed at its timeout.
fn kustomize_options(ctx: &Context, sync: &GitSync, timeout: Duration) -> KustomizeOptions {
    let spec = sync.spec.kustomize.clone().unwrap_or_default();
    KustomizeOptions {
        mode: spec.mode(),
        allow_remote_bases: spec.allow_remote_bases,
        binary: ctx.config.kustomize_binary.clone(),
        timeout,
        cache_dir: Some(work_dir(ctx, sync).join("render")),
        ..KustomizeOptions::default()
    }
}

/// How long objects may wait for their CRD before a sync fails on them (and alerts).
pub const CRD_WAIT_LIMIT: Duration = Duration::from_secs(600);

/// Whether objects may still wait for their CRD: not yet, or for less than [`CRD_WAIT_LIMIT`].
pub fn waits_for_crds(sync: &GitSync, now: k8s_openapi::jiff::Timestamp) -> bool {
    let since = (sync.status.as_ref()).and_then(|s| s.waiting_for_crd_since.as_ref());
    since.is_none_or(|since| {
        let waited: Duration = now.duration_since(since.0).try_into().unwrap_or_default();
        waited < CRD_WAIT_LIMIT
    })
}
