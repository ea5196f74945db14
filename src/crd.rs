//! The `GitSync` custom resource (`gitsyncs.kubesync.dev/v1alpha1`): spec and status types. The CRD
//! YAML in `config/crd/` and in the chart is generated from these types (`kubesync crd`).
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::source::GitRef;

pub const GROUP: &str = "kubesync.dev";
pub const VERSION: &str = "v1alpha1";
/// Annotate a GitSync with a new value to sync it at once (`kubectl annotate --overwrite`).
pub const REQUESTED_AT_ANNOTATION: &str = "kubesync.dev/requestedAt";

/// Keeps the objects of a Git repository's path applied in the cluster, and prunes what leaves Git.
// Each printer column repeats `type_ = ...`; clippy takes them for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubesync.dev",
    version = "v1alpha1",
    kind = "GitSync",
    namespaced,
    doc = "GitSync keeps the objects of a path in a Git repository applied to the cluster with server-side apply, and prunes what leaves Git.",
    status = "GitSyncStatus",
    shortname = "gs",
    category = "gitops",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.shortRevision"
    ),
    printcolumn(
        name = "Objects",
        type_ = "integer",
        json_path = ".status.summary.managed"
    ),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncSpec {
    /// Repository URL: `https://`, `ssh://`, `git@host:path`, `git://` or `file://`.
    pub url: String,
    /// What to sync: exactly one of branch, tag or commit. Default: branch `main`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<GitSyncRef>,
    /// Directory or file inside the repository.
    #[serde(default = "default_path")]
    pub path: String,
    /// How often to sync (e.g. `30s`, `5m`, `1h`), with ±10 % jitter.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+[smh])+$"))]
    pub interval: String,
    /// Time limit for one sync's fetch and apply requests.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+[smh])+$"))]
    pub timeout: String,
    /// Delete objects that left Git.
    #[serde(default = "default_true")]
    pub prune: bool,
    /// Namespace for objects that set none. Default: the GitSync's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Secret with keys `identity` and `known_hosts` (SSH), or `username` and `password` (HTTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Secret with key `token`: the shared secret of push webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<LocalObjectReference>,
    /// Apply as this ServiceAccount of the GitSync's namespace (impersonation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Stop syncing.
    #[serde(default)]
    pub suspend: bool,
    /// Ready only once the applied objects are healthy.
    #[serde(default)]
    pub wait: bool,
    /// Decrypt SOPS-encrypted manifests with the age keys of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<Decryption>,
    /// Kustomize: when `path` is rendered with it, and what a kustomization may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<KustomizeSpec>,
    /// An object Git did not change but the cluster did: `correct` applies Git again (the
    /// default); `report` leaves it as it is and lists the fields that differ in
    /// `status.drift`, an Event and the `kubesync_drifted_objects` metric.
    #[serde(default, skip_serializing_if = "is_default")]
    pub drift: crate::drift::DriftPolicy,
    /// Automatic rollback: when a revision's objects are not healthy within `timeout`, the last
    /// revision that became healthy is applied again, and the bad one is not retried until a
    /// new commit, a spec change or a `kubesync.dev/requestedAt` request. Implies `wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackSpec>,
    /// GitSyncs that must be Ready, with their last attempt applied, before this one syncs
    /// (infrastructure before the apps that use it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DependencyRef>,
    /// Apply to another cluster: the kubeconfig in a Secret of the GitSync's namespace. The
    /// ApplySet parent is then a Secret `kubesync.<namespace>.<name>` in the target namespace
    /// of that cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config: Option<KubeConfigRef>,
    /// Render a Helm chart instead of reading `path`: a directory of the Git repository, or a
    /// chart of an HTTP(S) Helm repository or an OCI registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmSpec>,
    /// Where to tell people what happened: chat, push or webhook receivers, each with a Secret
    /// of this namespace holding its address and credentials. Unset: the controller's defaults
    /// (`--notify`); `[]`: nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<NotifySpec>>,
    /// Post each synced commit's status (pending, success, failure) on the Git forge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_status: Option<CommitStatusSpec>,
}

/// A receiver of notifications.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotifySpec {
    pub provider: crate::notify::payload::Provider,
    /// Secret in the GitSync's namespace: `address` (webhook, topic or server URL), and as the
    /// provider needs `token`, `channel` (Matrix room), `hmacKey` (generic).
    pub secret_ref: LocalObjectReference,
    /// What to send. Default: failed, recovered, pruneBlocked, unhealthy, stalled, rolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<crate::notify::event::EventKind>,
}

impl NotifySpec {
    /// The events asked for (the default set when none are named).
    pub fn events(&self) -> Vec<crate::notify::event::EventKind> {
        match self.events.is_empty() {
            true => crate::notify::event::EventKind::DEFAULT.to_vec(),
            false => self.events.clone(),
        }
    }
}

/// The commit status posted on the forge.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitStatusSpec {
    /// gitea (also Forgejo), github or gitlab. Default: from the URL (github.com, a host named
    /// gitlab…, else gitea).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<crate::notify::forge::Forge>,
    /// The forge's API token; key default `token`.
    pub secret_ref: SecretKeyRef,
    /// The API's root URL when it is not where the repository URL suggests (an SSH remote on
    /// another host or port, GitHub Enterprise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The status's name on the commit. Default: `kubesync/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// A Helm chart and how it is rendered (`helm template`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmSpec {
    /// The chart: a directory of the Git repository holding `Chart.yaml`, or with `repoURL`
    /// the chart's name there.
    pub chart: String,
    /// An HTTP(S) Helm repository (`https://…`) or an OCI registry (`oci://host/path`).
    #[serde(default, rename = "repoURL", skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// Version or semver range (`^1.2`, `>=1.0 <2`) of a repository's chart; default: the
    /// latest. The resolved version is in `status.helmChart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Default: the GitSync's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// Values files of the Git repository, in order (later ones win).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Values from Secrets and ConfigMaps of the GitSync's namespace, in order, applied after
    /// the files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,
    /// Values, applied last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub values: Option<serde_json::Value>,
    /// Apply the chart's CRDs (its `crds/` directory). Default: true.
    #[serde(default = "default_true", rename = "includeCRDs")]
    pub include_crds: bool,
    /// Leave out the chart's test hooks. Default: true.
    #[serde(default = "default_true")]
    pub skip_tests: bool,
    /// Secret with `username` and `password`, and/or `ca.crt`, for the repository or registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Kustomize over the chart's output ("helm + patches"), run by the same kustomize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_render: Option<PostRender>,
}

/// What Kustomize changes in a chart's output: its `patches` (inline: `patch` and `target`)
/// and `images` entries, as in a kustomization file.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PostRender {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub patches: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub images: Vec<serde_json::Value>,
}

/// A list of objects of any fields (Kustomize entries).
fn any_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// A key of a Secret or ConfigMap holding Helm values (YAML).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    pub kind: ValuesKind,
    pub name: String,
    /// Default: `values.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_key: Option<String>,
    /// A missing object or key is skipped instead of failing the sync.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ValuesKind {
    Secret,
    ConfigMap,
}

/// An object of any fields (Helm values).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// The Helm chart version a sync rendered.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct HelmChartStatus {
    pub version: String,
    /// sha256 of the chart archive.
    pub digest: String,
}

/// Where a remote cluster's kubeconfig is.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeConfigRef {
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the GitSync's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    /// Default: `value` (as Flux names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Another GitSync this one waits for.
#[derive(
    Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub struct DependencyRef {
    pub name: String,
    /// Default: this GitSync's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// When and how a GitSync rolls back.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    /// Roll back automatically. Default: off.
    #[serde(default)]
    pub enabled: bool,
    /// Let the rollback prune what the bad revision added. Default: those objects are left in
    /// place (and stay in the set, for the next sync to prune).
    #[serde(default)]
    pub prune: bool,
}

impl GitSyncSpec {
    /// Whether an unhealthy revision is rolled back.
    pub fn rolls_back(&self) -> bool {
        self.rollback.as_ref().is_some_and(|r| r.enabled)
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// When and how the path is rendered with Kustomize.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KustomizeSpec {
    /// Unset: a directory holding a kustomization file is rendered, others are read as plain
    /// manifests. `true`: `path` must be a kustomization. `false`: never rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Let kustomizations fetch remote bases and resources (Git or HTTP URLs). Default: refused.
    #[serde(default)]
    pub allow_remote_bases: bool,
}

impl KustomizeSpec {
    pub fn mode(&self) -> crate::kustomize::KustomizeMode {
        use crate::kustomize::KustomizeMode;
        match self.enabled {
            None => KustomizeMode::Auto,
            Some(true) => KustomizeMode::Always,
            Some(false) => KustomizeMode::Never,
        }
    }
}

/// How encrypted manifests are decrypted.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decryption {
    /// `sops` (the only provider).
    #[schemars(regex(pattern = r"^sops$"))]
    pub provider: String,
    /// Secret in the GitSync's namespace whose keys ending in `.agekey` hold age secret keys.
    pub secret_ref: LocalObjectReference,
}

/// Exactly one of `branch`, `tag` or `commit`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct GitSyncRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A full 40-hex commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{40}$"))]
    pub commit: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LocalObjectReference {
    pub name: String,
}

fn default_path() -> String {
    ".".into()
}
fn default_interval() -> String {
    "5m".into()
}
fn default_timeout() -> String {
    "3m".into()
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSyncStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled` (kstatus conventions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last revision applied without error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The revision of the last sync, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// First 12 characters of lastAppliedRevision (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_revision: Option<String>,
    /// When the last sync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// The `kubesync.dev/requestedAt` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SyncSummary>,
    /// The last 5 syncs, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<SyncHistoryEntry>,
    /// The last sync's first error, shortened; names the file and object at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// With `drift: report`: objects changed in the cluster and left so, and the fields that
    /// differ from Git (at most 20 objects; values are never shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftedObject>,
    /// Fields kubesync leaves to other controllers: `spec.replicas` of workloads an autoscaler
    /// scales, and what `kubesync.dev/ignore-fields` annotations name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released_fields: Vec<ReleasedFields>,
    /// The last revision whose objects became healthy (syncs that wait for health only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_healthy_revision: Option<String>,
    /// Objects of the last sync that wait for their CRD (another GitSync installs it), at most
    /// 20; nothing is pruned while any wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_crd: Vec<String>,
    /// Since when objects wait for their CRD; after 10 minutes a sync fails on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_crd_since: Option<Time>,
    /// The Helm chart last rendered from a repository or registry: resolved version and digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_chart: Option<HelmChartStatus>,
    /// The last automatic rollback, until a revision syncs successfully again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,
}

/// A rollback: the revision that was not healthy, and the one applied again in its place.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    /// Not healthy in time; not retried until a new commit, a spec change or a request.
    pub from: String,
    /// The last healthy revision, applied again.
    pub to: String,
    pub time: Option<Time>,
    /// The spec generation and `kubesync.dev/requestedAt` value when it happened: a change of
    /// either retries `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
}

/// Fields of one object that another controller owns.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ReleasedFields {
    /// `kind/name -n namespace`.
    pub object: String,
    /// JSON pointers, comma-separated.
    pub fields: String,
    /// Who owns them: `HorizontalPodAutoscaler/<name>`, `ScaledObject/<name>`, or the annotation.
    pub to: String,
}

/// An object that differs from Git and was left so.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DriftedObject {
    /// `kind/name -n namespace`.
    pub object: String,
    /// The paths that differ, comma-separated.
    pub fields: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSummary {
    /// Objects in the set after the sync.
    pub managed: i64,
    /// Objects created or changed.
    pub applied: i64,
    pub pruned: i64,
    pub failed: i64,
    pub drift_corrected: i64,
    /// Objects that differ from Git and were left so (`drift: report`).
    #[serde(default)]
    pub drifted: i64,
    pub unhealthy: i64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncHistoryEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `Succeeded`, `Failed`, or `Interrupted` (started and never finished: its controller stopped).
    pub result: String,
    /// Seconds the sync took.
    pub duration_seconds: f64,
    pub time: Time,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("spec.ref: set exactly one of branch, tag or commit")]
    Ref,
    #[error("spec.{field}: {message}")]
    Duration {
        field: &'static str,
        message: String,
    },
    #[error("spec.url: must not be empty")]
    Url,
    #[error("spec.decryption.provider: {0:?} is not supported (only sops)")]
    Provider(String),
}

impl GitSyncSpec {
    pub fn git_ref(&self) -> Result<GitRef, SpecError> {
        let Some(r) = &self.reference else {
            return Ok(GitRef::default());
        };
        match (&r.branch, &r.tag, &r.commit) {
            (Some(b), None, None) => Ok(GitRef::Branch(b.clone())),
            (None, Some(t), None) => Ok(GitRef::Tag(t.clone())),
            (None, None, Some(c)) => Ok(GitRef::Commit(c.to_ascii_lowercase())),
            _ => Err(SpecError::Ref),
        }
    }

    pub fn interval(&self) -> Result<Duration, SpecError> {
        parse_positive("interval", &self.interval)
    }

    pub fn timeout(&self) -> Result<Duration, SpecError> {
        parse_positive("timeout", &self.timeout)
    }

    /// Checks everything that would make every sync fail the same way.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.url.trim().is_empty() {
            return Err(SpecError::Url);
        }
        self.git_ref()?;
        self.interval()?;
        self.timeout()?;
        if let Some(d) = self.decryption.as_ref().filter(|d| d.provider != "sops") {
            return Err(SpecError::Provider(d.provider.clone()));
        }
        Ok(())
    }
}

fn parse_positive(field: &'static str, value: &str) -> Result<Duration, SpecError> {
    match crate::duration::parse_duration(value) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err(SpecError::Duration {
            field,
            message: "must be at least 1s".into(),
        }),
        Err(e) => Err(SpecError::Duration {
            field,
            message: e.to_string(),
        }),
    }
}

/// The first 12 characters of a commit id or of a directory's content hash.
pub fn short_revision(revision: &str) -> &str {
    let r = revision.strip_prefix("sha256:").unwrap_or(revision);
    match r.char_indices().nth(12) {
        Some((end, _)) => &r[..end],
        None => r,
    }
}

/// The CRD, labelled as an ApplySet parent type (KEP-3659).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = GitSync::crd();
    crd.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(
            "applyset.kubernetes.io/is-parent-type".into(),
            "true".into(),
        );
    crd
}

/// The CRD as the YAML kept in `config/crd/` and the chart.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(&crd())?;
    Ok(format!(
        "# Generated by `kubesync crd` from src/crd.rs. Do not edit.\n---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> GitSyncSpec {
        serde_json::from_value(serde_saphyr::from_str::<serde_json::Value>(yaml).expect("yaml"))
            .expect("spec")
    }

    #[test]
    fn defaults_fill_an_url_only_spec() {
        let s = spec("url: https://example.org/r.git\n");
        assert_eq!(s.path, ".");
        assert_eq!(s.interval().expect("interval"), Duration::from_secs(300));
        assert_eq!(s.timeout().expect("timeout"), Duration::from_secs(180));
        assert!(s.prune && !s.suspend && !s.wait);
        assert_eq!(s.git_ref().expect("ref"), GitRef::Branch("main".into()));
    }

    #[test]
    fn ref_takes_exactly_one_kind() {
        let s = spec("url: x\nref: {tag: v1}\n");
        assert_eq!(s.git_ref().expect("ref"), GitRef::Tag("v1".into()));
        let s = spec("url: x\nref: {branch: a, tag: v1}\n");
        assert_eq!(s.validate(), Err(SpecError::Ref));
        let s = spec("url: x\nref: {}\n");
        assert_eq!(s.validate(), Err(SpecError::Ref));
    }

    #[test]
    fn bad_durations_name_the_field() {
        let s = spec("url: x\ninterval: 0s\n");
        assert!(
            s.validate()
                .expect_err("0s")
                .to_string()
                .contains("interval")
        );
        let s = spec("url: x\ntimeout: soon\n");
        assert!(
            s.validate()
                .expect_err("soon")
                .to_string()
                .contains("timeout")
        );
    }

    #[test]
    fn crd_is_an_applyset_parent_type_with_printer_columns() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("gitsyncs.kubesync.dev"));
        let labels = crd.metadata.labels.expect("labels");
        assert_eq!(labels["applyset.kubernetes.io/is-parent-type"], "true");
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .expect("columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Revision", "Objects", "Last Sync", "Age"]
        );
        assert!(
            version
                .subresources
                .as_ref()
                .expect("subresources")
                .status
                .is_some()
        );
    }

    /// The YAML copies in config/ and the chart are generated; regenerate with
    /// `kubesync crd > config/crd/gitsyncs.yaml` (and the chart's crds/ copy).
    #[test]
    fn generated_crd_copies_match_the_code() {
        let expected = crd_yaml().expect("yaml");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for copy in [
            "config/crd/gitsyncs.yaml",
            "charts/kubesync/crds/gitsyncs.yaml",
        ] {
            let actual =
                std::fs::read_to_string(root.join(copy)).unwrap_or_else(|e| panic!("{copy}: {e}"));
            assert!(
                actual == expected,
                "{copy} differs from `kubesync crd`: regenerate it with `cargo run -- crd > {copy}`"
            );
        }
    }
}
