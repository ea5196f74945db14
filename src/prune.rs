//! Prune stage: delete what left Git, and only what kubesync provably owns.
//!
//! Candidates are live objects of the ApplySet (by label) that are not in this sync's desired set.
//! Each is deleted only if it has an Apply entry of our field manager, no controller owner, and no
//! `kubesync.dev/prune: disabled` annotation. Namespaces, PVCs, PVs and CRDs are kept unless
//! annotated `kubesync.dev/prune: enabled` or `--prune-data` is given; kept objects are released
//! from the set (label removed) so they are not reported again. Deletes carry a uid precondition.
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::applyset::LiveObject;
use crate::kube_ext::{applied_by, dynamic_api};
use crate::plan::{ObjectKey, PART_OF_LABEL};

pub const PRUNE_ANNOTATION: &str = "kubesync.dev/prune";

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub field_manager: String,
    pub dry_run: bool,
    /// Also delete Namespaces, PVCs, PVs and CRDs.
    pub prune_data: bool,
    pub propagation: PropagationPolicy,
    /// Deletes in flight at once within one stage.
    pub concurrency: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "action", content = "reason")]
pub enum PruneAction {
    Pruned,
    /// Left in the cluster and released from the set.
    Kept(String),
    /// Left alone: not provably ours.
    Skipped(String),
    /// Already deleted by someone else between the inventory and the delete (404).
    Gone,
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct PruneOutcome {
    pub key: ObjectKey,
    pub action: PruneAction,
}

/// Kinds that hold data or everything else: never deleted by default.
pub fn is_protected_kind(key: &ObjectKey) -> bool {
    matches!(
        (key.group.as_str(), key.kind.as_str()),
        (
            "",
            "Namespace" | "PersistentVolumeClaim" | "PersistentVolume"
        ) | ("apiextensions.k8s.io", "CustomResourceDefinition")
    )
}

/// Decision for one candidate, without any request.
pub fn decide(
    key: &ObjectKey,
    object: &DynamicObject,
    options: &PruneOptions,
) -> Result<(), PruneAction> {
    if !applied_by(object, &options.field_manager) {
        return Err(PruneAction::Skipped(format!(
            "carries the ApplySet label but was not applied by field manager {}",
            options.field_manager
        )));
    }
    if let Some(owner) = object
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        return Err(PruneAction::Skipped(format!(
            "controlled by {}/{}",
            owner.kind, owner.name
        )));
    }
    let annotation = object
        .annotations()
        .get(PRUNE_ANNOTATION)
        .map(String::as_str);
    if annotation == Some("disabled") {
        return Err(PruneAction::Kept(format!("{PRUNE_ANNOTATION}: disabled")));
    }
    if is_protected_kind(key) && !options.prune_data && annotation != Some("enabled") {
        return Err(PruneAction::Kept(format!(
            "protected kind; annotate {PRUNE_ANNOTATION}: enabled or pass --prune-data to delete it"
        )));
    }
    Ok(())
}

fn api_for(client: &Client, live: &LiveObject) -> Api<DynamicObject> {
    let namespace = live.object.namespace().filter(|_| live.namespaced);
    dynamic_api(client, namespace.as_deref(), &live.resource)
}

/// The order to delete in: the reverse of the apply order, so the contents of a Namespace go
/// before the Namespace, custom resources before their CRD, workloads before their config.
pub fn prune_order(candidates: &mut [(ObjectKey, LiveObject)]) {
    candidates.sort_by(|(a, _), (b, _)| {
        let stage = |k: &ObjectKey| crate::plan::stage_of(&k.group, &k.kind);
        stage(b).cmp(&stage(a)).then_with(|| a.cmp(b))
    });
}

/// Deletes (or keeps) each candidate, in [`prune_order`]: one stage after another, the objects
/// of one stage concurrently (at most `options.concurrency` at once), reported in order.
pub async fn prune(
    client: &Client,
    mut candidates: Vec<(ObjectKey, LiveObject)>,
    options: &PruneOptions,
) -> Vec<PruneOutcome> {
    use futures::StreamExt;
    prune_order(&mut candidates);
    let mut outcomes = Vec::with_capacity(candidates.len());
    let mut rest = candidates.into_iter().peekable();
    while let Some(first) = rest.next() {
        let stage = crate::plan::stage_of(&first.0.group, &first.0.kind);
        let mut group = vec![first];
        while let Some(next) =
            rest.next_if(|(k, _)| crate::plan::stage_of(&k.group, &k.kind) == stage)
        {
            group.push(next);
        }
        let mut done: Vec<PruneOutcome> = futures::stream::iter(
            group
                .into_iter()
                .map(|(key, live)| prune_one(client, key, live, options)),
        )
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
        done.sort_by(|a, b| a.key.cmp(&b.key));
        outcomes.extend(done);
    }
    outcomes
}

async fn prune_one(
    client: &Client,
    key: ObjectKey,
    live: LiveObject,
    options: &PruneOptions,
) -> PruneOutcome {
    let api = api_for(client, &live);
    let name = live.object.name_any();
    let action = match decide(&key, &live.object, options) {
        Err(PruneAction::Kept(reason)) if !options.dry_run => {
            match release(&api, &name, &options.field_manager).await {
                Ok(()) => PruneAction::Kept(reason),
                Err(e) => PruneAction::Failed(format!(
                    "releasing from the set: {}",
                    crate::kube_ext::kube_message(&e)
                )),
            }
        }
        Err(other) => other,
        Ok(()) => {
            let mut dp = DeleteParams {
                propagation_policy: Some(options.propagation.clone()),
                ..Default::default()
            };
            dp.dry_run = options.dry_run;
            dp.preconditions = Some(Preconditions {
                uid: live.object.uid(),
                resource_version: None,
            });
            match api.delete(&name, &dp).await {
                Ok(_) => PruneAction::Pruned,
                Err(kube::Error::Api(s)) if s.code == 404 => PruneAction::Gone,
                Err(kube::Error::Api(s)) if s.code == 409 => PruneAction::Skipped(
                    "replaced by another object with the same name (uid changed)".into(),
                ),
                Err(e) => PruneAction::Failed(crate::kube_ext::kube_message(&e)),
            }
        }
    };
    PruneOutcome { key, action }
}

/// Removes the part-of label so a kept object leaves the set.
async fn release(
    api: &Api<DynamicObject>,
    name: &str,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"labels": {PART_OF_LABEL: null}}});
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(field_manager.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PruneOptions {
        PruneOptions {
            field_manager: "kubesync".into(),
            dry_run: false,
            prune_data: false,
            propagation: PropagationPolicy::Background,
            concurrency: 4,
        }
    }

    fn object(extra_metadata: serde_json::Value, manager: &str) -> DynamicObject {
        let mut metadata = json!({"name": "x", "managedFields": [{"manager": manager, "operation": "Apply", "apiVersion": "v1"}]});
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_metadata.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}),
        )
        .expect("object")
    }

    fn key(kind: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: kind.into(),
            namespace: None,
            name: "x".into(),
        }
    }

    #[test]
    fn contents_go_before_their_namespace_and_resources_before_their_crd() {
        let live = |group: &str, kind: &str, name: &str| {
            (
                ObjectKey {
                    group: group.into(),
                    kind: kind.into(),
                    namespace: None,
                    name: name.into(),
                },
                LiveObject {
                    resource: kube::discovery::ApiResource::erase::<
                        k8s_openapi::api::core::v1::ConfigMap,
                    >(&()),
                    namespaced: false,
                    object: object(json!({}), "kubesync"),
                },
            )
        };
        let mut candidates = vec![
            live("", "Namespace", "team"),
            live(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "widgets.example.io",
            ),
            live("", "ConfigMap", "settings"),
            live("example.io", "Widget", "w"),
            live("apps", "Deployment", "web"),
        ];
        prune_order(&mut candidates);
        let order: Vec<&str> = candidates.iter().map(|(k, _)| k.kind.as_str()).collect();
        assert_eq!(
            order,
            [
                "Widget",
                "Deployment",
                "ConfigMap",
                "Namespace",
                "CustomResourceDefinition"
            ]
        );
    }

    #[test]
    fn only_our_unowned_unprotected_objects_are_pruned() {
        let o = options();
        assert_eq!(
            decide(&key("ConfigMap"), &object(json!({}), "kubesync"), &o),
            Ok(())
        );
        assert!(matches!(
            decide(&key("ConfigMap"), &object(json!({}), "kubectl"), &o),
            Err(PruneAction::Skipped(_))
        ));
        let owned = object(
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]}),
            "kubesync",
        );
        assert!(
            matches!(decide(&key("ConfigMap"), &owned, &o), Err(PruneAction::Skipped(r)) if r.contains("ReplicaSet/rs"))
        );
        let disabled = object(
            json!({"annotations": {PRUNE_ANNOTATION: "disabled"}}),
            "kubesync",
        );
        assert!(matches!(
            decide(&key("ConfigMap"), &disabled, &o),
            Err(PruneAction::Kept(_))
        ));
        assert!(matches!(
            decide(&key("Namespace"), &object(json!({}), "kubesync"), &o),
            Err(PruneAction::Kept(_))
        ));
        let enabled = object(
            json!({"annotations": {PRUNE_ANNOTATION: "enabled"}}),
            "kubesync",
        );
        assert_eq!(decide(&key("PersistentVolumeClaim"), &enabled, &o), Ok(()));
        let data = PruneOptions {
            prune_data: true,
            ..options()
        };
        assert_eq!(
            decide(&key("Namespace"), &object(json!({}), "kubesync"), &data),
            Ok(())
        );
    }
}
