//! The ApplySet parent: which object it is, its id, and reading and writing the labels and
//! annotations that record the set.
use base64::Engine;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::ApplySetError;
use super::footprint::Footprint;
use crate::plan::{GroupKind, ObjectKey};
use crate::run_once::{JOBS_ANNOTATION, JobMemory};

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

/// The parent as read from the cluster (None fields when it does not exist yet).
#[derive(Clone, Debug, Default)]
pub struct ParentState {
    pub exists: bool,
    pub footprint: Footprint,
    pub tooling: Option<String>,
    /// The Jobs that ran under this set (`run_once`).
    pub jobs: JobMemory,
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
    let jobs = JobMemory::parse(annotations.get(JOBS_ANNOTATION).map(String::as_str));
    Ok(ParentState {
        exists: true,
        footprint,
        tooling,
        jobs,
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
    let written = result.map_err(|source| ApplySetError::WriteParent {
        kind: parent.resource.kind.clone(),
        namespace: parent.namespace.clone(),
        name: parent.name.clone(),
        source,
    });
    written.map(drop)
}

/// Records what the set remembers of its Jobs on the parent (a merge of one annotation).
pub async fn write_jobs(
    client: &Client,
    parent: &Parent,
    jobs: &JobMemory,
    field_manager: &str,
) -> Result<(), ApplySetError> {
    let params = PatchParams {
        field_manager: Some(format!("{field_manager}-applyset")),
        ..Default::default()
    };
    let value = match jobs.0.is_empty() {
        true => serde_json::Value::Null,
        false => json!(jobs.to_annotation()),
    };
    let patch = json!({"metadata": {"annotations": {JOBS_ANNOTATION: value}}});
    (parent.api(client))
        .patch(&parent.name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|source| ApplySetError::WriteParent {
            kind: parent.resource.kind.clone(),
            namespace: parent.namespace.clone(),
            name: parent.name.clone(),
            source,
        })
        .map(drop)
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
}
