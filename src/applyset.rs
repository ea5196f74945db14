//! ApplySet tracking (KEP-3659): the parent object, its annotations, and the live inventory of
//! objects labelled `applyset.kubernetes.io/part-of=<id>`.
//!
//! The parent records which group-kinds and namespaces the set spans. It is widened to the union of
//! old and new *before* anything is applied, so an interrupted sync never leaves an object the next
//! sync cannot find; it is narrowed only after a complete prune.
use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use futures::StreamExt;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::kube_ext::dynamic_api;
use crate::plan::{Discovery, GroupKind, ObjectKey, PART_OF_LABEL};

pub const ID_LABEL: &str = "applyset.kubernetes.io/id";
pub const TOOLING_ANNOTATION: &str = "applyset.kubernetes.io/tooling";
pub const GROUP_KINDS_ANNOTATION: &str = "applyset.kubernetes.io/contains-group-kinds";
pub const NAMESPACES_ANNOTATION: &str = "applyset.kubernetes.io/additional-namespaces";

/// The object that owns an ApplySet: a Secret for the CLI (as kubectl does), a GitSync in-cluster.
#[derive(Clone, Debug)]
pub struct Parent {
    pub resource: ApiResource,
    pub namespace: String,
    pub name: String,
}

impl Parent {
    /// The CLI's parent: a Secret named after `--name` in the default namespace.
    pub fn secret(name: &str, namespace: &str) -> Parent {
        Parent {
            resource: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "Secret".into(),
                plural: "secrets".into(),
            },
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The controller's parent: the GitSync object itself.
    pub fn git_sync(name: &str, namespace: &str) -> Parent {
        Parent {
            resource: ApiResource {
                group: crate::crd::GROUP.into(),
                version: crate::crd::VERSION.into(),
                api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
                kind: "GitSync".into(),
                plural: "gitsyncs".into(),
            },
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The parent's identity, as objects in Git are keyed.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.resource.group.clone(),
            kind: self.resource.kind.clone(),
            namespace: Some(self.namespace.clone()),
            name: self.name.clone(),
        }
    }

    pub fn is_secret(&self) -> bool {
        self.resource.kind == "Secret" && self.resource.group.is_empty()
    }

    /// `applyset-` + base64url(sha256(`<name>.<namespace>.<Kind>.<group>`)) + `-v1`.
    pub fn id(&self) -> String {
        applyset_id(
            &self.name,
            &self.namespace,
            &self.resource.kind,
            &self.resource.group,
        )
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.namespace, &self.resource)
    }
}

pub fn applyset_id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}").as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// What the parent records: group-kinds and namespaces beyond its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub group_kinds: BTreeSet<GroupKind>,
    pub namespaces: BTreeSet<String>,
}

impl Footprint {
    pub fn union(&self, other: &Footprint) -> Footprint {
        Footprint {
            group_kinds: self
                .group_kinds
                .union(&other.group_kinds)
                .cloned()
                .collect(),
            namespaces: self.namespaces.union(&other.namespaces).cloned().collect(),
        }
    }

    fn annotations(&self, parent_namespace: &str) -> (String, String) {
        let mut gks = self
            .group_kinds
            .iter()
            .map(GroupKind::applyset_form)
            .collect::<Vec<_>>();
        gks.sort();
        let gks = gks.join(",");
        let namespaces = self
            .namespaces
            .iter()
            .filter(|ns| ns.as_str() != parent_namespace)
            .cloned()
            .collect::<Vec<_>>()
            .join(",");
        (gks, namespaces)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplySetError {
    #[error("reading ApplySet parent {kind} {namespace}/{name}: {}", crate::kube_ext::kube_message(.source))]
    ReadParent {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ApplySet parent {kind} {namespace}/{name} belongs to another ApplySet or tool ({detail})"
    )]
    ForeignParent {
        kind: String,
        namespace: String,
        name: String,
        detail: String,
    },
    #[error("updating ApplySet parent {kind} {namespace}/{name}: {}", crate::kube_ext::kube_message(.source))]
    WriteParent {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {resource} in {scope}: {}", crate::kube_ext::kube_message(.source))]
    List {
        resource: String,
        scope: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot list {group_kind}: its API group is unavailable (stale discovery)")]
    StaleGroup { group_kind: String },
}

/// The parent as read from the cluster (None fields when it does not exist yet).
#[derive(Clone, Debug, Default)]
pub struct ParentState {
    pub exists: bool,
    pub footprint: Footprint,
    pub tooling: Option<String>,
}

pub async fn read_parent(client: &Client, parent: &Parent) -> Result<ParentState, ApplySetError> {
    let err = |source| ApplySetError::ReadParent {
        kind: parent.resource.kind.clone(),
        namespace: parent.namespace.clone(),
        name: parent.name.clone(),
        source,
    };
    let Some(obj) = parent
        .api(client)
        .get_opt(&parent.name)
        .await
        .map_err(err)?
    else {
        return Ok(ParentState::default());
    };
    let annotations = obj.annotations();
    let tooling = annotations.get(TOOLING_ANNOTATION).cloned();
    if let Some(detail) = foreign_parent(
        parent,
        obj.labels().get(ID_LABEL).map(String::as_str),
        tooling.as_deref(),
    ) {
        return Err(ApplySetError::ForeignParent {
            kind: parent.resource.kind.clone(),
            namespace: parent.namespace.clone(),
            name: parent.name.clone(),
            detail,
        });
    }
    let footprint = Footprint {
        group_kinds: annotations
            .get(GROUP_KINDS_ANNOTATION)
            .map(|s| {
                s.split(',')
                    .filter_map(GroupKind::parse_applyset_form)
                    .collect()
            })
            .unwrap_or_default(),
        namespaces: annotations
            .get(NAMESPACES_ANNOTATION)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(ParentState {
        exists: true,
        footprint,
        tooling,
    })
}

/// Why an existing object cannot serve as this parent, if it cannot. A Secret parent is created by
/// kubesync, so an existing Secret must already carry kubesync's tooling annotation and this set's
/// id: anything else is somebody's data (`kubectl create secret … userdata`), never stamped over.
/// A GitSync is the user's own object and becomes a parent at its first sync, so it may carry
/// neither yet; when it carries them, they must be ours.
fn foreign_parent(parent: &Parent, id: Option<&str>, tooling: Option<&str>) -> Option<String> {
    let expected = parent.id();
    match (id, tooling) {
        (Some(id), _) if id != expected => Some(format!("its {ID_LABEL} is {id}, not {expected}")),
        (_, Some(t)) if !t.starts_with("kubesync/") => Some(format!("managed by {t}")),
        (Some(_), Some(_)) => None,
        _ if !parent.is_secret() => None,
        _ => Some(format!(
            "it exists without kubesync's {TOOLING_ANNOTATION} annotation and {ID_LABEL} label, \
             so it is not an ApplySet parent kubesync made; choose another --name"
        )),
    }
}

/// Writes the parent's labels and annotations (server-side apply; creates a Secret parent).
pub async fn write_parent(
    client: &Client,
    parent: &Parent,
    footprint: &Footprint,
    field_manager: &str,
) -> Result<(), ApplySetError> {
    let (gks, namespaces) = footprint.annotations(&parent.namespace);
    let mut body = json!({
        "apiVersion": parent.resource.api_version,
        "kind": parent.resource.kind,
        "metadata": {
            "name": parent.name,
            "namespace": parent.namespace,
            "labels": {ID_LABEL: parent.id()},
            "annotations": {
                TOOLING_ANNOTATION: format!("kubesync/v{}", crate::VERSION),
                GROUP_KINDS_ANNOTATION: gks,
                NAMESPACES_ANNOTATION: namespaces,
            }
        }
    });
    if parent.is_secret() {
        body["type"] = json!("Opaque");
    }
    let manager = format!("{field_manager}-applyset");
    // A Secret parent is created by the first sync (server-side apply). Any other parent (a
    // GitSync) is the user's object: it is only merged into, so a parent deleted during a sync
    // fails the write instead of being re-created empty.
    let result = if parent.is_secret() {
        let params = PatchParams::apply(&manager).force();
        parent
            .api(client)
            .patch(&parent.name, &params, &Patch::Apply(&body))
            .await
    } else {
        let params = PatchParams {
            field_manager: Some(manager),
            ..Default::default()
        };
        let metadata = json!({"metadata": body["metadata"].clone()});
        parent
            .api(client)
            .patch(&parent.name, &params, &Patch::Merge(&metadata))
            .await
    };
    result.map_err(|source| ApplySetError::WriteParent {
        kind: parent.resource.kind.clone(),
        namespace: parent.namespace.clone(),
        name: parent.name.clone(),
        source,
    })?;
    Ok(())
}

/// One labelled object found in the cluster.
#[derive(Clone, Debug)]
pub struct LiveObject {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub object: DynamicObject,
}

/// Live objects of the set, by identity. `complete` is false when some group-kind could not be
/// listed; then nothing may be pruned.
#[derive(Debug, Default)]
pub struct Inventory {
    pub objects: BTreeMap<ObjectKey, LiveObject>,
    pub errors: Vec<ApplySetError>,
}

impl Inventory {
    pub fn complete(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Drops what no stage reads from a listed object: the field sets of managedFields entries (only
/// managers and operations are consulted; adoption works on the apply response). They are often
/// the largest part of an object.
fn trim(mut object: DynamicObject) -> DynamicObject {
    for entry in object.metadata.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
    object
}

/// Lists every group-kind of the footprint in each namespace of the footprint (plus the parent's)
/// by the part-of label. Kinds the cluster no longer serves (CRD deleted) have no objects left.
pub async fn list_inventory(
    client: &Client,
    discovery: &Discovery,
    id: &str,
    footprint: &Footprint,
    parent_namespace: &str,
    concurrency: usize,
) -> Inventory {
    let mut namespaces = footprint.namespaces.clone();
    namespaces.insert(parent_namespace.to_string());
    let mut inventory = Inventory::default();
    let mut requests = Vec::new();
    for gk in &footprint.group_kinds {
        let Some(info) = discovery.preferred(gk) else {
            let group_stale = discovery
                .stale
                .iter()
                .any(|gv| crate::manifests::group_of(gv) == gk.group && gv.contains('/'));
            if group_stale {
                inventory.errors.push(ApplySetError::StaleGroup {
                    group_kind: gk.applyset_form(),
                });
            }
            continue;
        };
        if !info.supports("list") {
            continue;
        }
        if info.namespaced {
            for ns in &namespaces {
                requests.push((info.clone(), Some(ns.clone())));
            }
        } else {
            requests.push((info.clone(), None));
        }
    }
    let selector = format!("{PART_OF_LABEL}={id}");
    let results = futures::stream::iter(requests.into_iter().map(|(info, ns)| {
        let client = client.clone();
        let selector = selector.clone();
        async move {
            let api = dynamic_api(&client, ns.as_deref(), &info.api_resource);
            // Pages of 500 keep the largest response small; each page is trimmed before the next.
            let mut items = Vec::new();
            let mut params = ListParams::default().labels(&selector).limit(500);
            let list = loop {
                match api.list(&params).await {
                    Ok(page) => {
                        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
                        items.extend(page.items.into_iter().map(trim));
                        match next {
                            Some(token) => params = params.continue_token(&token),
                            None => break Ok(items),
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            (info, ns, list)
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    for (info, ns, list) in results {
        match list {
            Ok(items) => {
                for mut object in items {
                    // List items omit apiVersion/kind; restore them for the object we keep.
                    object.types = Some(kube::api::TypeMeta {
                        api_version: info.api_resource.api_version.clone(),
                        kind: info.api_resource.kind.clone(),
                    });
                    let key = ObjectKey {
                        group: info.api_resource.group.clone(),
                        kind: info.api_resource.kind.clone(),
                        namespace: object.namespace(),
                        name: object.name_any(),
                    };
                    inventory.objects.insert(
                        key,
                        LiveObject {
                            resource: info.api_resource.clone(),
                            namespaced: info.namespaced,
                            object,
                        },
                    );
                }
            }
            // A namespace that does not exist yet holds no objects.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => inventory.errors.push(ApplySetError::List {
                resource: info.api_resource.plural.clone(),
                scope: ns
                    .map(|n| format!("namespace {n}"))
                    .unwrap_or_else(|| "the cluster".into()),
                source,
            }),
        }
    }
    inventory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_parents_are_used() {
        let secret = Parent::secret("app", "ns");
        let id = secret.id();
        let ours = Some("kubesync/v0.1.0");
        assert_eq!(foreign_parent(&secret, Some(&id), ours), None);
        let unlabelled = foreign_parent(&secret, None, None).expect("a plain Secret is refused");
        assert!(unlabelled.contains("choose another --name"), "{unlabelled}");
        assert!(foreign_parent(&secret, Some(&id), None).is_some());
        assert!(foreign_parent(&secret, Some("applyset-other-v1"), ours).is_some());
        assert!(foreign_parent(&secret, Some(&id), Some("kubectl/v1.36")).is_some());
        let gitsync = Parent::git_sync("app", "ns");
        assert_eq!(
            foreign_parent(&gitsync, None, None),
            None,
            "a GitSync becomes a parent at its first sync"
        );
        assert!(
            foreign_parent(&gitsync, Some(&id), ours).is_some(),
            "another set's id"
        );
    }

    #[test]
    fn id_matches_the_kep_formula() {
        // sha256("example.default.Secret.") in base64url without padding, as kubectl computes it.
        let id = applyset_id("example", "default", "Secret", "");
        assert!(id.starts_with("applyset-") && id.ends_with("-v1"), "{id}");
        let digest = Sha256::digest(b"example.default.Secret.");
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(id, format!("applyset-{expected}-v1"));
        assert_eq!(id.len(), "applyset-".len() + 43 + "-v1".len());
        assert_ne!(id, applyset_id("example", "other", "Secret", ""));
        assert_eq!(Parent::secret("example", "default").id(), id);
    }

    #[test]
    fn footprint_annotations_leave_out_the_parent_namespace() {
        let fp = Footprint {
            group_kinds: ["Deployment.apps", "ConfigMap"]
                .iter()
                .filter_map(|s| GroupKind::parse_applyset_form(s))
                .collect(),
            namespaces: ["default", "web", "batch"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let (gks, namespaces) = fp.annotations("default");
        assert_eq!(gks, "ConfigMap,Deployment.apps");
        let fp = Footprint {
            group_kinds: ["Service", "Deployment.apps", "ConfigMap"]
                .iter()
                .filter_map(|s| GroupKind::parse_applyset_form(s))
                .collect(),
            namespaces: Default::default(),
        };
        assert_eq!(
            fp.annotations("default").0,
            "ConfigMap,Deployment.apps,Service",
            "sorted as written"
        );
        assert_eq!(namespaces, "batch,web");
    }
}
