//! Plan stage: discovery, resolution of every manifest to its API resource and scope, namespace
//! defaulting, duplicate detection and apply ordering.
//!
//! Discovery uses the aggregated discovery document (`apidiscovery.k8s.io/v2`, Kubernetes ≥ 1.30):
//! two requests describe every group. A group-version the server marks `Stale` (an aggregated API
//! whose backend is down) is recorded; the sync may still apply what resolves, but must not prune.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use kube::Client;
use kube::discovery::ApiResource;
use serde::Deserialize;
use serde_json::Value;

use crate::helm::HookPhase;
use crate::manifests::{Manifest, Origin, group_of};

/// Group, kind: what ApplySet records in `contains-group-kinds`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    /// `Kind.group` (`Deployment.apps`), or `Kind` for the core group, as the ApplySet KEP writes it.
    pub fn applyset_form(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn parse_applyset_form(s: &str) -> Option<GroupKind> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        Some(match s.split_once('.') {
            Some((kind, group)) => GroupKind {
                group: group.into(),
                kind: kind.into(),
            },
            None => GroupKind {
                group: String::new(),
                kind: s.into(),
            },
        })
    }
}

/// Identity of an object in the cluster: group, kind, namespace (None when cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn group_kind(&self) -> GroupKind {
        GroupKind {
            group: self.group.clone(),
            kind: self.kind.clone(),
        }
    }
}

impl fmt::Display for ObjectKey {
    /// kubectl style: `deployment.apps/web`, `configmap/settings`, with ` -n ns` when namespaced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.to_ascii_lowercase();
        if self.group.is_empty() {
            write!(f, "{kind}/{}", self.name)?;
        } else {
            write!(f, "{kind}.{}/{}", self.group, self.name)?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " -n {ns}")?;
        }
        Ok(())
    }
}

/// What discovery knows about one resource.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub api_resource: ApiResource,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl ResourceInfo {
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

/// The cluster's API surface, from one aggregated discovery.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// (group, version, kind) → resource.
    by_gvk: HashMap<(String, String, String), ResourceInfo>,
    /// (group, kind) → resource at the group's preferred version that serves the kind.
    preferred: HashMap<GroupKind, ResourceInfo>,
    /// Group-versions that the server could not describe (aggregated API down).
    pub stale: BTreeSet<String>,
    /// Groups and their versions, for hints on unserved versions.
    versions: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery request {path} failed: {}", crate::kube_ext::kube_message(.source))]
    Request {
        path: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error(
        "discovery {path}: the server did not answer with aggregated discovery (Kubernetes 1.30 or newer is required)"
    )]
    NotAggregated { path: &'static str },
}

#[derive(Deserialize)]
struct GroupDiscoveryList {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    items: Vec<GroupDiscovery>,
}

#[derive(Deserialize)]
struct GroupDiscovery {
    #[serde(default)]
    metadata: NameOnly,
    #[serde(default)]
    versions: Vec<VersionDiscovery>,
}

#[derive(Deserialize, Default)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct VersionDiscovery {
    version: String,
    #[serde(default)]
    resources: Vec<ResourceDiscovery>,
    #[serde(default)]
    freshness: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceDiscovery {
    resource: String,
    #[serde(default)]
    response_kind: Option<KindRef>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    verbs: Vec<String>,
}

#[derive(Deserialize)]
struct KindRef {
    #[serde(default)]
    kind: String,
}

const AGGREGATED_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

impl Discovery {
    /// Runs aggregated discovery (two requests: `/api` and `/apis`).
    pub async fn run(client: &Client) -> Result<Discovery, DiscoveryError> {
        let mut discovery = Discovery::default();
        for path in ["/api", "/apis"] {
            let request = http::Request::get(path)
                .header(http::header::ACCEPT, AGGREGATED_ACCEPT)
                .body(Vec::new())
                .map_err(|e| DiscoveryError::Request {
                    path,
                    source: kube::Error::HttpError(e),
                })?;
            let list: GroupDiscoveryList = client
                .request(request)
                .await
                .map_err(|source| DiscoveryError::Request { path, source })?;
            if list.kind != "APIGroupDiscoveryList" {
                return Err(DiscoveryError::NotAggregated { path });
            }
            discovery.add(list);
        }
        Ok(discovery)
    }

    fn add(&mut self, list: GroupDiscoveryList) {
        for group in list.items {
            let group_name = group.metadata.name;
            for version in group.versions {
                let gv = if group_name.is_empty() {
                    version.version.clone()
                } else {
                    format!("{group_name}/{}", version.version)
                };
                self.versions
                    .entry(group_name.clone())
                    .or_default()
                    .push(version.version.clone());
                if version.freshness.as_deref() == Some("Stale") {
                    self.stale.insert(gv);
                    continue;
                }
                for resource in version.resources {
                    let Some(kind) = resource
                        .response_kind
                        .map(|k| k.kind)
                        .filter(|k| !k.is_empty())
                    else {
                        continue;
                    };
                    let info = ResourceInfo {
                        api_resource: ApiResource {
                            group: group_name.clone(),
                            version: version.version.clone(),
                            api_version: gv.clone(),
                            kind: kind.clone(),
                            plural: resource.resource.clone(),
                        },
                        namespaced: resource.scope == "Namespaced",
                        verbs: resource.verbs,
                    };
                    // Versions come in preference order: the first that serves a kind wins.
                    self.preferred
                        .entry(GroupKind {
                            group: group_name.clone(),
                            kind: kind.clone(),
                        })
                        .or_insert_with(|| info.clone());
                    self.by_gvk
                        .insert((group_name.clone(), version.version.clone(), kind), info);
                }
            }
        }
    }

    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&ResourceInfo> {
        let group = group_of(api_version).to_string();
        let version = api_version
            .rsplit('/')
            .next()
            .unwrap_or(api_version)
            .to_string();
        self.by_gvk.get(&(group, version, kind.to_string()))
    }

    /// Every served group-version (`v1`, `apps/v1`) and group-version-kind (`apps/v1/Deployment`),
    /// sorted: what Helm's `.Capabilities.APIVersions` holds.
    pub fn api_versions(&self) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for (group, version, kind) in self.by_gvk.keys() {
            let gv = match group.as_str() {
                "" => version.clone(),
                _ => format!("{group}/{version}"),
            };
            out.insert(format!("{gv}/{kind}"));
            out.insert(gv);
        }
        out.into_iter().collect()
    }

    pub fn preferred(&self, gk: &GroupKind) -> Option<&ResourceInfo> {
        self.preferred.get(gk)
    }

    /// True when the group-version is known to be unavailable (stale).
    pub fn is_stale(&self, api_version: &str) -> bool {
        self.stale.contains(api_version)
    }

    /// A hint for an unserved apiVersion: where else the kind is served.
    fn served_elsewhere(&self, kind: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_gvk
            .iter()
            .filter(|((_, _, k), _)| k == kind)
            .map(|(_, info)| info.api_resource.api_version.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Apply order. Objects in one stage are applied concurrently; stages run one after another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Stage {
    /// Namespaces and CustomResourceDefinitions (then: wait until CRDs are Established).
    Foundations,
    /// Helm `pre-install`/`pre-upgrade` hooks, before the chart's other objects.
    PreHooks,
    /// Cluster-wide configuration and RBAC.
    ClusterConfig,
    /// ServiceAccounts, Secrets, ConfigMaps, PVCs and other configuration a workload reads.
    Config,
    /// Services and other networking.
    Services,
    /// Workloads.
    Workloads,
    /// Everything else (including custom resources).
    Rest,
    /// Admission webhooks and APIServices, last, so they cannot block the objects above.
    Webhooks,
    /// Helm `post-install`/`post-upgrade` hooks, after everything else.
    PostHooks,
}

/// The stage of an object: a Helm hook's phase, else its kind's.
fn stage_for(object: &Value, key: &ObjectKey) -> Stage {
    match crate::helm::hook_phase(object) {
        Some(HookPhase::Before) => Stage::PreHooks,
        Some(HookPhase::After) => Stage::PostHooks,
        _ => stage_of(&key.group, &key.kind),
    }
}

pub fn stage_of(group: &str, kind: &str) -> Stage {
    match (group, kind) {
        ("", "Namespace") | ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            Stage::Foundations
        }
        ("rbac.authorization.k8s.io", _)
        | ("storage.k8s.io", "StorageClass" | "CSIDriver" | "VolumeAttributesClass")
        | ("scheduling.k8s.io", "PriorityClass")
        | ("networking.k8s.io", "IngressClass")
        | ("node.k8s.io", "RuntimeClass")
        | ("", "PersistentVolume")
        | ("flowcontrol.apiserver.k8s.io", _) => Stage::ClusterConfig,
        (
            "",
            "ServiceAccount"
            | "Secret"
            | "ConfigMap"
            | "PersistentVolumeClaim"
            | "LimitRange"
            | "ResourceQuota",
        )
        | ("policy", "PodDisruptionBudget") => Stage::Config,
        ("", "Service" | "Endpoints") | ("discovery.k8s.io", "EndpointSlice") => Stage::Services,
        ("apps", _) | ("batch", _) | ("", "Pod" | "ReplicationController") => Stage::Workloads,
        ("admissionregistration.k8s.io", _) | ("apiregistration.k8s.io", "APIService") => {
            Stage::Webhooks
        }
        _ => Stage::Rest,
    }
}

/// One object ready to apply.
#[derive(Clone, Debug)]
pub struct PlannedObject {
    pub key: ObjectKey,
    pub origin: Origin,
    pub resource: ApiResource,
    pub namespaced: bool,
    pub stage: Stage,
    /// The object as it will be sent: namespace defaulted, tracking label added.
    pub desired: Value,
    /// JSON pointers of fields taken out of `desired` because another controller owns them
    /// (`release`): handed over before the apply when kubesync owned them.
    pub released: Vec<String>,
}

/// An object whose kind is defined by a CRD in the same sync: resolved after the CRD is Established.
#[derive(Clone, Debug)]
pub struct DeferredObject {
    pub manifest: Manifest,
    /// Where it will live (from the CRD's scope in the same sync), for the ApplySet footprint.
    pub namespace: Option<String>,
}

impl DeferredObject {
    pub fn group_kind(&self) -> GroupKind {
        GroupKind {
            group: self.manifest.group().into(),
            kind: self.manifest.kind.clone(),
        }
    }

    /// The object as it will be sent once its CRD is served, assuming what the CRD in the same
    /// sync says about it (for `render`, and for dry runs, which cannot create the CRD).
    pub fn assumed(&self, ctx: &PlanContext) -> PlannedObject {
        let m = &self.manifest;
        let key = ObjectKey {
            group: m.group().into(),
            kind: m.kind.clone(),
            namespace: self.namespace.clone(),
            name: m.name.clone(),
        };
        PlannedObject {
            stage: stage_for(&m.object, &key),
            origin: m.origin.clone(),
            resource: ApiResource {
                group: key.group.clone(),
                version: m.api_version.rsplit('/').next().unwrap_or_default().into(),
                api_version: m.api_version.clone(),
                kind: m.kind.clone(),
                plural: String::new(),
            },
            namespaced: self.namespace.is_some(),
            desired: desired_object(m, self.namespace.as_deref(), &ctx.applyset_id),
            released: Vec::new(),
            key,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PlanError {
    #[error("{origin}: {object}: apiVersion {api_version} is not served by the cluster{hint}")]
    VersionNotServed {
        origin: Origin,
        object: String,
        api_version: String,
        hint: String,
        /// The cluster serves some version of the API group.
        group_served: bool,
    },
    #[error(
        "{origin}: {object}: the cluster has no kind {kind} in {api_version} (is its CRD installed?)"
    )]
    UnknownKind {
        origin: Origin,
        object: String,
        kind: String,
        api_version: String,
    },
    #[error(
        "{origin}: {object}: API {api_version} is unavailable (its aggregated API server does not answer)"
    )]
    StaleApi {
        origin: Origin,
        object: String,
        api_version: String,
    },
    #[error("{object} is defined twice: in {first} and in {second}")]
    Duplicate {
        object: String,
        first: Origin,
        second: Origin,
    },
    #[error("{origin}: {object}: {kind} cannot be applied (the server does not allow patch)")]
    NotPatchable {
        origin: Origin,
        object: String,
        kind: String,
    },
    #[error(
        "{origin}: {object}: carries the label {label}, which only the tool that tracks the set may set; remove it from Git"
    )]
    ApplySetLabel {
        origin: Origin,
        object: String,
        label: String,
    },
    #[error(
        "{origin}: {object}: is this sync's own ApplySet parent; an object cannot be a member of the set it records (rename the object, or the sync)"
    )]
    IsParent { origin: Origin, object: String },
    #[error(
        "{origin}: {object}: forbidden: {outside}, and a GitSync in namespace {own} may only manage objects of its own namespace (tenancy lockdown; {own} is not a trusted namespace)"
    )]
    OutsideNamespace {
        origin: Origin,
        object: String,
        outside: String,
        own: String,
    },
}

/// Inputs of planning that do not come from Git.
#[derive(Clone, Debug)]
pub struct PlanContext {
    /// Namespace for namespaced objects that set none.
    pub default_namespace: String,
    /// Label value identifying this ApplySet (`applyset.kubernetes.io/part-of`).
    pub applyset_id: String,
    /// The ApplySet parent, which Git may not hold.
    pub parent: Option<ObjectKey>,
    /// Objects outside this namespace (cluster-scoped ones included) are refused.
    pub confined_to: Option<String>,
}

/// The result of planning: objects to apply now, objects waiting for CRDs, and errors.
#[derive(Debug, Default)]
pub struct Plan {
    pub objects: Vec<PlannedObject>,
    pub deferred: Vec<DeferredObject>,
    pub errors: Vec<PlanError>,
    /// Problems that do not stop the sync.
    pub warnings: Vec<String>,
}

impl Plan {
    /// Group-kinds and namespaces of everything planned (deferred objects included), for the
    /// ApplySet parent.
    /// The group-kind and namespace of every object the plan can touch, deferred custom resources
    /// included (the ApplySet footprint is built from these).
    pub fn touches(&self) -> impl Iterator<Item = (GroupKind, Option<&str>)> {
        let planned = self
            .objects
            .iter()
            .map(|o| (o.key.group_kind(), o.key.namespace.as_deref()));
        let deferred = self
            .deferred
            .iter()
            .map(|d| (d.group_kind(), d.namespace.as_deref()));
        planned.chain(deferred)
    }
}

/// Label every applied object carries.
pub const PART_OF_LABEL: &str = "applyset.kubernetes.io/part-of";

/// Kinds defined by CRDs in this set of manifests: (group, kind) → namespaced.
fn crd_kinds(manifests: &[Manifest]) -> HashMap<(String, String), bool> {
    let mut out = HashMap::new();
    for m in manifests {
        if m.kind != "CustomResourceDefinition" || m.group() != "apiextensions.k8s.io" {
            continue;
        }
        let spec = &m.object["spec"];
        if let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str())
        {
            out.insert(
                (group.to_string(), kind.to_string()),
                spec["scope"].as_str() != Some("Cluster"),
            );
        }
    }
    out
}

/// Resolves manifests against discovery. Objects whose kind a CRD in the same set defines, but which
/// the cluster does not serve yet, are deferred. Duplicates are reported (naming both files).
pub fn plan(manifests: Vec<Manifest>, discovery: &Discovery, ctx: &PlanContext) -> Plan {
    let crds = crd_kinds(&manifests);
    let mut plan = Plan::default();
    let mut seen: HashMap<ObjectKey, Origin> = HashMap::new();
    for manifest in manifests {
        if let Err(e) = plan_one(manifest, discovery, &crds, ctx, &mut seen, &mut plan) {
            plan.errors.push(e);
        }
    }
    plan.objects
        .sort_by(|a, b| (a.stage, &a.key).cmp(&(b.stage, &b.key)));
    plan
}

/// Resolves one manifest into `plan`: planned, deferred until its CRD is served, or refused.
fn plan_one(
    manifest: Manifest,
    discovery: &Discovery,
    crds: &HashMap<(String, String), bool>,
    ctx: &PlanContext,
    seen: &mut HashMap<ObjectKey, Origin>,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let object = manifest.describe();
    let resolved = discovery
        .resolve(&manifest.api_version, &manifest.kind)
        .cloned();
    let crd_scope = crds.get(&(manifest.group().to_string(), manifest.kind.clone()));
    let namespaced = match (&resolved, crd_scope) {
        (Some(info), _) => info.namespaced,
        (None, Some(namespaced)) => *namespaced,
        (None, None) => return Err(unresolved_error(&manifest, discovery)),
    };
    no_applyset_label(&manifest)?;
    if !namespaced && let Some(ns) = &manifest.namespace {
        // The API server ignores it too; say so rather than fail the sync.
        let (origin, kind) = (&manifest.origin, &manifest.kind);
        let warning = format!(
            "{origin}: {object}: {kind} is cluster-scoped; metadata.namespace {ns} is not sent"
        );
        plan.warnings.push(warning);
    }
    let namespace = namespaced
        .then(|| (manifest.namespace.clone()).unwrap_or_else(|| ctx.default_namespace.clone()));
    let key = ObjectKey {
        group: manifest.group().to_string(),
        kind: manifest.kind.clone(),
        namespace: namespace.clone(),
        name: manifest.name.clone(),
    };
    confined(ctx, &manifest, namespace.as_deref())?;
    if ctx.parent.as_ref() == Some(&key) {
        let origin = manifest.origin;
        return Err(PlanError::IsParent { origin, object });
    }
    if let Some(first) = seen.get(&key) {
        return Err(PlanError::Duplicate {
            object: key.to_string(),
            first: first.clone(),
            second: manifest.origin,
        });
    }
    seen.insert(key.clone(), manifest.origin.clone());
    let Some(info) = resolved else {
        plan.deferred.push(DeferredObject {
            manifest,
            namespace,
        });
        return Ok(());
    };
    if !info.supports("patch") {
        let (origin, kind) = (manifest.origin, manifest.kind);
        return Err(PlanError::NotPatchable {
            origin,
            object,
            kind,
        });
    }
    plan.objects.push(PlannedObject {
        stage: stage_for(&manifest.object, &key),
        key,
        desired: desired_object(&manifest, namespace.as_deref(), &ctx.applyset_id),
        origin: manifest.origin,
        resource: info.api_resource,
        namespaced,
        released: Vec::new(),
    });
    Ok(())
}

/// Refuses an object outside the namespace the plan is confined to (tenancy lockdown).
fn confined(
    ctx: &PlanContext,
    manifest: &Manifest,
    namespace: Option<&str>,
) -> Result<(), PlanError> {
    let Some(own) = &ctx.confined_to else {
        return Ok(());
    };
    let outside = match namespace {
        Some(ns) if ns == own => return Ok(()),
        Some(other) => format!("it is in namespace {other}"),
        None => format!("{} is cluster-scoped", manifest.kind),
    };
    Err(PlanError::OutsideNamespace {
        origin: manifest.origin.clone(),
        object: manifest.describe(),
        outside,
        own: own.clone(),
    })
}

/// Refuses a manifest that sets an `applyset.kubernetes.io/…` label itself, but for
/// `is-parent-type` on a CustomResourceDefinition, which KEP-3659 has the CRD's author set (the
/// GitSync CRD carries it).
fn no_applyset_label(manifest: &Manifest) -> Result<(), PlanError> {
    let labels = manifest.object["metadata"]["labels"].as_object();
    let is_crd = manifest.kind == "CustomResourceDefinition";
    let allowed = |k: &str| is_crd && k == "applyset.kubernetes.io/is-parent-type";
    let set = labels.and_then(|l| {
        l.keys()
            .find(|k| k.starts_with("applyset.kubernetes.io/") && !allowed(k))
    });
    match set {
        None => Ok(()),
        Some(label) => Err(PlanError::ApplySetLabel {
            origin: manifest.origin.clone(),
            object: manifest.describe(),
            label: label.clone(),
        }),
    }
}

fn unresolved_error(manifest: &Manifest, discovery: &Discovery) -> PlanError {
    let object = manifest.describe();
    if discovery.is_stale(&manifest.api_version) {
        return PlanError::StaleApi {
            origin: manifest.origin.clone(),
            object,
            api_version: manifest.api_version.clone(),
        };
    }
    let group = manifest.group();
    let version = manifest.api_version.rsplit('/').next().unwrap_or_default();
    let version_served = discovery
        .versions
        .get(group)
        .is_some_and(|vs| vs.iter().any(|v| v == version));
    if version_served {
        return PlanError::UnknownKind {
            origin: manifest.origin.clone(),
            object,
            kind: manifest.kind.clone(),
            api_version: manifest.api_version.clone(),
        };
    }
    let elsewhere = discovery.served_elsewhere(&manifest.kind);
    let hint = if elsewhere.is_empty() {
        " (removed API version, or a CRD that is not installed)".to_string()
    } else {
        format!(" ({} is served as {})", manifest.kind, elsewhere.join(", "))
    };
    PlanError::VersionNotServed {
        origin: manifest.origin.clone(),
        object,
        api_version: manifest.api_version.clone(),
        hint,
        group_served: discovery.versions.contains_key(group),
    }
}

impl PlanError {
    /// An object of a custom kind whose API group the cluster does not serve at all: its CRD is
    /// not installed yet (or never will be). Built-in groups (no dot, or `*.k8s.io`) never
    /// qualify: an unserved version there is a removed API.
    pub fn awaits_crd(&self) -> bool {
        let PlanError::VersionNotServed {
            api_version,
            group_served: false,
            ..
        } = self
        else {
            return false;
        };
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        group.contains('.') && !group.ends_with(".k8s.io")
    }
}

/// Resolves deferred objects after CRDs were applied and discovery refreshed.
pub fn resolve_deferred(
    deferred: Vec<DeferredObject>,
    discovery: &Discovery,
    ctx: &PlanContext,
) -> Plan {
    let manifests = deferred.into_iter().map(|d| d.manifest).collect::<Vec<_>>();
    let mut plan = plan(manifests, discovery, ctx);
    // Still unresolved now means the CRD did not make the kind available.
    for d in std::mem::take(&mut plan.deferred) {
        plan.errors.push(PlanError::UnknownKind {
            origin: d.manifest.origin.clone(),
            object: d.manifest.describe(),
            kind: d.manifest.kind.clone(),
            api_version: d.manifest.api_version.clone(),
        });
    }
    plan
}

/// The object as sent: namespace set (or removed for cluster-scoped kinds), part-of label added.
fn desired_object(manifest: &Manifest, namespace: Option<&str>, applyset_id: &str) -> Value {
    let mut object = manifest.object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        match namespace {
            Some(ns) => {
                metadata.insert("namespace".into(), Value::String(ns.into()));
            }
            None => {
                metadata.remove("namespace");
            }
        }
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if !labels.is_object() {
            *labels = Value::Object(Default::default());
        }
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(PART_OF_LABEL.into(), Value::String(applyset_id.into()));
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_file;
    use serde_json::json;

    fn discovery() -> Discovery {
        let mut d = Discovery::default();
        let core: GroupDiscoveryList = serde_json::from_value(json!({
            "kind": "APIGroupDiscoveryList",
            "items": [{"metadata": {"name": ""}, "versions": [{"version": "v1", "resources": [
                {"resource": "configmaps", "responseKind": {"kind": "ConfigMap"}, "scope": "Namespaced", "verbs": ["get","list","patch","delete"]},
                {"resource": "namespaces", "responseKind": {"kind": "Namespace"}, "scope": "Cluster", "verbs": ["get","list","patch","delete"]}
            ]}]}]
        }))
        .expect("core");
        let apis: GroupDiscoveryList = serde_json::from_value(json!({
            "kind": "APIGroupDiscoveryList",
            "items": [
                {"metadata": {"name": "apps"}, "versions": [{"version": "v1", "resources": [
                    {"resource": "deployments", "responseKind": {"kind": "Deployment"}, "scope": "Namespaced", "verbs": ["get","list","patch","delete"]},
                    {"resource": "daemonsets", "responseKind": {"kind": "DaemonSet"}, "scope": "Namespaced", "verbs": ["get","list","patch","delete"]}
                ]}]},
                {"metadata": {"name": "apiextensions.k8s.io"}, "versions": [{"version": "v1", "resources": [
                    {"resource": "customresourcedefinitions", "responseKind": {"kind": "CustomResourceDefinition"}, "scope": "Cluster", "verbs": ["get","list","patch","delete"]}
                ]}]},
                {"metadata": {"name": "metrics.example.io"}, "versions": [{"version": "v1beta1", "freshness": "Stale"}]}
            ]
        }))
        .expect("apis");
        d.add(core);
        d.add(apis);
        d
    }

    fn ctx() -> PlanContext {
        PlanContext {
            default_namespace: "team".into(),
            applyset_id: "applyset-abc-v1".into(),
            parent: Some(ObjectKey {
                group: String::new(),
                kind: "Secret".into(),
                namespace: Some("team".into()),
                name: "set".into(),
            }),
            confined_to: None,
        }
    }

    #[test]
    fn a_confined_plan_refuses_other_namespaces_and_cluster_scoped_objects() {
        let confined = PlanContext {
            confined_to: Some("team".into()),
            ..ctx()
        };
        let plan = plan(
            manifests(
                "tenant.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: theirs, namespace: other}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: mine}\n",
            ),
            &discovery(),
            &confined,
        );
        let messages: Vec<String> = plan.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].contains("tenant.yaml")
                && messages[0].contains("ConfigMap/other/theirs")
                && messages[0].contains("forbidden: it is in namespace other"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("Namespace is cluster-scoped")
                && messages[1].contains("namespace team may only manage"),
            "{}",
            messages[1]
        );
        assert_eq!(plan.objects.len(), 1, "its own namespace is fine");
        assert_eq!(plan.objects[0].key.name, "mine");
    }

    fn manifests(file: &str, text: &str) -> Vec<Manifest> {
        parse_file(file, text.as_bytes()).expect("valid manifests")
    }

    #[test]
    fn namespaces_are_defaulted_and_labels_added() {
        let plan = plan(
            manifests(
                "a.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
            ),
            &discovery(),
            &ctx(),
        );
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(
            plan.objects[0].key.kind, "Namespace",
            "namespaces come first"
        );
        assert_eq!(plan.objects[0].key.namespace, None);
        let cm = &plan.objects[1];
        assert_eq!(cm.key.namespace.as_deref(), Some("team"));
        assert_eq!(cm.desired["metadata"]["namespace"], "team");
        assert_eq!(
            cm.desired["metadata"]["labels"][PART_OF_LABEL],
            "applyset-abc-v1"
        );
        assert_eq!(cm.resource.plural, "configmaps");
    }

    #[test]
    fn duplicates_name_both_files() {
        let mut m = manifests(
            "one.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        );
        m.extend(manifests(
            "two.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: team}\n",
        ));
        let plan = plan(m, &discovery(), &ctx());
        let message = plan.errors[0].to_string();
        assert!(
            message.contains("one.yaml") && message.contains("two.yaml"),
            "{message}"
        );
        assert!(
            message.starts_with("configmap/c -n team is defined twice"),
            "{message}"
        );
    }

    #[test]
    fn unserved_versions_and_unknown_kinds_are_explained() {
        let plan = plan(
            manifests(
                "old.yaml",
                "apiVersion: extensions/v1beta1\nkind: DaemonSet\nmetadata: {name: d}\n---\napiVersion: v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: metrics.example.io/v1beta1\nkind: Metric\nmetadata: {name: m}\n",
            ),
            &discovery(),
            &ctx(),
        );
        let messages: Vec<String> = plan.errors.iter().map(ToString::to_string).collect();
        assert!(
            messages[0].contains("extensions/v1beta1 is not served")
                && messages[0].contains("apps/v1"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("no kind Widget in v1"),
            "{}",
            messages[1]
        );
        assert!(messages[2].contains("unavailable"), "{}", messages[2]);
        assert!(discovery().is_stale("metrics.example.io/v1beta1"));
    }

    #[test]
    fn only_custom_groups_the_cluster_does_not_serve_await_a_crd() {
        let plan = plan(
            manifests(
                "mixed.yaml",
                "apiVersion: widgets.example.dev/v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: extensions/v1beta1\nkind: DaemonSet\nmetadata: {name: d}\n---\napiVersion: other.k8s.io/v1\nkind: Thing\nmetadata: {name: t}\n",
            ),
            &discovery(),
            &ctx(),
        );
        let awaiting: Vec<bool> = plan.errors.iter().map(PlanError::awaits_crd).collect();
        assert_eq!(awaiting, [true, false, false], "{:?}", plan.errors);
    }

    #[test]
    fn cluster_scoped_objects_are_sent_without_a_namespace() {
        let plan = plan(
            manifests(
                "ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: other}\n",
            ),
            &discovery(),
            &ctx(),
        );
        assert!(plan.errors.is_empty());
        assert!(
            plan.warnings[0].contains("cluster-scoped"),
            "{:?}",
            plan.warnings
        );
        assert_eq!(plan.objects[0].key.namespace, None);
        assert!(
            plan.objects[0].desired["metadata"]
                .get("namespace")
                .is_none()
        );
    }

    #[test]
    fn deferred_custom_resources_widen_the_footprint_with_their_namespace() {
        let plan = plan(
            manifests(
                "crd.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.io}\nspec:\n  group: example.io\n  scope: Namespaced\n  names: {kind: Gadget, plural: gadgets}\n---\napiVersion: example.io/v1\nkind: Gadget\nmetadata: {name: g, namespace: lonely}\n",
            ),
            &discovery(),
            &ctx(),
        );
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(plan.deferred[0].namespace.as_deref(), Some("lonely"));
        let namespaces: BTreeSet<&str> = plan.touches().filter_map(|(_, ns)| ns).collect();
        assert!(namespaces.contains("lonely"), "{namespaces:?}");
    }

    #[test]
    fn applyset_labels_and_the_parent_itself_are_refused() {
        let plan = plan(
            manifests(
                "bad.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {applyset.kubernetes.io/part-of: applyset-other-v1}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: set}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n",
            ),
            &discovery_with_secrets(),
            &ctx(),
        );
        let messages: Vec<String> = plan.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].contains("bad.yaml")
                && messages[0].contains("applyset.kubernetes.io/part-of"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("Secret/set") && messages[1].contains("own ApplySet parent"),
            "{}",
            messages[1]
        );
        assert_eq!(plan.objects.len(), 1);
    }

    #[test]
    fn a_crd_may_declare_its_kind_an_applyset_parent_type() {
        let plan = plan(
            manifests(
                "crds.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gitsyncs.kubesync.dev\n  labels: {applyset.kubernetes.io/is-parent-type: \"true\"}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {applyset.kubernetes.io/is-parent-type: \"true\"}\n",
            ),
            &discovery(),
            &ctx(),
        );
        let messages: Vec<String> = plan.errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("ConfigMap"), "{}", messages[0]);
        assert_eq!(plan.objects[0].key.kind, "CustomResourceDefinition");
    }

    fn discovery_with_secrets() -> Discovery {
        let mut d = discovery();
        let core: GroupDiscoveryList = serde_json::from_value(json!({
            "kind": "APIGroupDiscoveryList",
            "items": [{"metadata": {"name": ""}, "versions": [{"version": "v1", "resources": [
                {"resource": "secrets", "responseKind": {"kind": "Secret"}, "scope": "Namespaced", "verbs": ["get","list","patch","delete"]}
            ]}]}]
        }))
        .expect("core");
        d.add(core);
        d
    }

    #[test]
    fn custom_resources_wait_for_their_crd() {
        let plan = plan(
            manifests(
                "crd.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.io}\nspec:\n  group: example.io\n  scope: Cluster\n  names: {kind: Widget, plural: widgets}\n---\napiVersion: example.io/v1\nkind: Widget\nmetadata: {name: w}\n",
            ),
            &discovery(),
            &ctx(),
        );
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(plan.objects.len(), 1);
        assert_eq!(plan.deferred.len(), 1);
        let gks: BTreeSet<GroupKind> = plan.touches().map(|(gk, _)| gk).collect();
        assert!(gks.contains(&GroupKind {
            group: "example.io".into(),
            kind: "Widget".into()
        }));
    }

    #[test]
    fn group_kind_round_trips_applyset_form() {
        for s in ["Deployment.apps", "ConfigMap", "Widget.example.io"] {
            assert_eq!(
                GroupKind::parse_applyset_form(s)
                    .expect("parses")
                    .applyset_form(),
                s
            );
        }
        assert_eq!(stage_of("apps", "Deployment"), Stage::Workloads);
        assert!(stage_of("", "Namespace") < stage_of("", "ConfigMap"));
        assert!(
            stage_of(
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration"
            ) > stage_of("example.io", "Widget")
        );
    }
}
