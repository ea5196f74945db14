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

use crate::apply::ApplyOptions;
use crate::applyset::LiveObject;
use crate::kube_ext::{applied_by, dynamic_api};
use crate::outcome::Action;
use crate::plan::{ObjectKey, PART_OF_LABEL};

pub const PRUNE_ANNOTATION: &str = "kubesync.dev/prune";

/// What the user allows a prune to do.
#[derive(Clone, Debug)]
pub struct PrunePolicy {
    /// Delete what left Git at all (`--no-prune`, `spec.prune: false`).
    pub enabled: bool,
    /// Refuse to prune more than this many objects (None: 25 % of managed, at least 10).
    pub max: Option<usize>,
    /// Allow a prune when Git holds no objects at all.
    pub allow_empty: bool,
    /// Also delete Namespaces, PVCs, PVs and CRDs.
    pub prune_data: bool,
    pub propagation: PropagationPolicy,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy {
            enabled: true,
            max: None,
            allow_empty: false,
            prune_data: false,
            propagation: PropagationPolicy::Background,
        }
    }
}

impl PrunePolicy {
    /// The guards on the size of a prune: Git became empty, or too much would go. `managed`:
    /// objects in the set now; `leaving`: objects that left Git; `wanted`: objects Git holds.
    pub fn guard(&self, managed: usize, leaving: usize, wanted: usize) -> Option<PruneBlocked> {
        if leaving == 0 {
            return None;
        }
        if wanted == 0 && !self.allow_empty {
            return Some(PruneBlocked::EmptySource);
        }
        let limit = self.max.unwrap_or_else(|| (managed / 4).max(10));
        (leaving > limit).then(|| {
            PruneBlocked::TooMany(format!(
                "{leaving} objects would be deleted, the limit is {limit}"
            ))
        })
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
    /// Some objects wait for their CRD: the set is not complete yet.
    WaitingForCrd,
}

impl PruneBlocked {
    /// Every value of [`PruneBlocked::category`].
    pub const CATEGORIES: [&'static str; 6] = [
        "disabled",
        "failure",
        "incomplete_inventory",
        "empty_source",
        "too_many",
        "waiting_for_crd",
    ];

    /// Fixed label value for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            PruneBlocked::Disabled => "disabled",
            PruneBlocked::Failure => "failure",
            PruneBlocked::IncompleteInventory(_) => "incomplete_inventory",
            PruneBlocked::EmptySource => "empty_source",
            PruneBlocked::TooMany(_) => "too_many",
            PruneBlocked::WaitingForCrd => "waiting_for_crd",
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
            PruneBlocked::WaitingForCrd => {
                write!(f, "not pruning: some objects wait for their CRD")
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct PruneOutcome {
    pub key: ObjectKey,
    pub action: Action,
    /// The object is still in the set afterwards (skipped as not ours, or the delete failed).
    pub left_in_set: bool,
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
    policy: &PrunePolicy,
    field_manager: &str,
) -> Result<(), Action> {
    if !applied_by(object, field_manager) {
        return Err(Action::Skipped(format!(
            "carries the ApplySet label but was not applied by field manager {field_manager}"
        )));
    }
    if let Some(owner) = object
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        return Err(Action::Skipped(format!(
            "controlled by {}/{}",
            owner.kind, owner.name
        )));
    }
    let annotation = object
        .annotations()
        .get(PRUNE_ANNOTATION)
        .map(String::as_str);
    if annotation == Some("disabled") {
        return Err(Action::Kept(format!("{PRUNE_ANNOTATION}: disabled")));
    }
    if is_protected_kind(key) && !policy.prune_data && annotation != Some("enabled") {
        return Err(Action::Kept(format!(
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

/// Deletes in flight per unit of `apply.concurrency`: a delete costs the API server far less than
/// an apply, and one round of deletes per stage keeps the ordered prune close to an unordered one.
pub const DELETES_PER_APPLY: usize = 4;

/// Deletes (or keeps) each candidate, in [`prune_order`]: one stage after another, the objects
/// of one stage concurrently (at most [`DELETES_PER_APPLY`] × `apply.concurrency` at once),
/// reported in order. Deletes are dry runs when `apply.dry_run` is.
pub async fn prune(
    client: &Client,
    mut candidates: Vec<(ObjectKey, LiveObject)>,
    policy: &PrunePolicy,
    apply: &ApplyOptions,
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
                .map(|(key, live)| prune_one(client, key, live, policy, apply)),
        )
        .buffer_unordered(apply.concurrency.max(1).saturating_mul(DELETES_PER_APPLY))
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
    policy: &PrunePolicy,
    apply: &ApplyOptions,
) -> PruneOutcome {
    let api = api_for(client, &live);
    let name = live.object.name_any();
    let (action, left_in_set) = match decide(&key, &live.object, policy, &apply.field_manager) {
        Err(Action::Kept(reason)) if !apply.dry_run => {
            match release(&api, &name, &apply.field_manager).await {
                Ok(()) => (Action::Kept(reason), false),
                Err(e) => (
                    Action::Failed(format!(
                        "releasing from the set: {}",
                        crate::kube_ext::kube_message(&e)
                    )),
                    true,
                ),
            }
        }
        Err(Action::Kept(reason)) => (Action::Kept(reason), false),
        Err(other) => (other, true),
        Ok(()) => delete(&api, &name, &live, policy, apply.dry_run).await,
    };
    PruneOutcome {
        key,
        action,
        left_in_set,
    }
}

/// Deletes one object, if it is still the one listed (uid precondition).
async fn delete(
    api: &Api<DynamicObject>,
    name: &str,
    live: &LiveObject,
    policy: &PrunePolicy,
    dry_run: bool,
) -> (Action, bool) {
    let mut dp = DeleteParams {
        propagation_policy: Some(policy.propagation.clone()),
        ..Default::default()
    };
    dp.dry_run = dry_run;
    dp.preconditions = Some(Preconditions {
        uid: live.object.uid(),
        resource_version: None,
    });
    match api.delete(name, &dp).await {
        Ok(_) => (Action::Pruned, false),
        // Someone else deleted it first: it is not in the set any more, and not our prune.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            (Action::Skipped("already deleted".into()), false)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => (
            Action::Skipped("replaced by another object with the same name (uid changed)".into()),
            true,
        ),
        Err(e) => (Action::Failed(crate::kube_ext::kube_message(&e)), true),
    }
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

    fn options() -> PrunePolicy {
        PrunePolicy::default()
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
            decide(
                &key("ConfigMap"),
                &object(json!({}), "kubesync"),
                &o,
                "kubesync"
            ),
            Ok(())
        );
        assert!(matches!(
            decide(
                &key("ConfigMap"),
                &object(json!({}), "kubectl"),
                &o,
                "kubesync"
            ),
            Err(Action::Skipped(_))
        ));
        let owned = object(
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]}),
            "kubesync",
        );
        assert!(
            matches!(decide(&key("ConfigMap"), &owned, &o, "kubesync"), Err(Action::Skipped(r)) if r.contains("ReplicaSet/rs"))
        );
        let disabled = object(
            json!({"annotations": {PRUNE_ANNOTATION: "disabled"}}),
            "kubesync",
        );
        assert!(matches!(
            decide(&key("ConfigMap"), &disabled, &o, "kubesync"),
            Err(Action::Kept(_))
        ));
        assert!(matches!(
            decide(
                &key("Namespace"),
                &object(json!({}), "kubesync"),
                &o,
                "kubesync"
            ),
            Err(Action::Kept(_))
        ));
        let enabled = object(
            json!({"annotations": {PRUNE_ANNOTATION: "enabled"}}),
            "kubesync",
        );
        assert_eq!(
            decide(&key("PersistentVolumeClaim"), &enabled, &o, "kubesync"),
            Ok(())
        );
        let data = PrunePolicy {
            prune_data: true,
            ..options()
        };
        assert_eq!(
            decide(
                &key("Namespace"),
                &object(json!({}), "kubesync"),
                &data,
                "kubesync"
            ),
            Ok(())
        );
    }

    #[test]
    fn prune_guards_stop_an_empty_source_and_large_prunes() {
        let policy = PrunePolicy::default();
        assert_eq!(policy.guard(12, 10, 1), None, "at least 10 may go");
        assert!(matches!(
            policy.guard(12, 11, 1),
            Some(PruneBlocked::TooMany(d)) if d.contains("11 objects") && d.contains("limit is 10")
        ));
        assert_eq!(
            policy.guard(100, 11, 1),
            None,
            "25 % of 100 managed objects"
        );
        assert_eq!(policy.guard(12, 10, 0), Some(PruneBlocked::EmptySource));
        assert_eq!(
            policy.guard(12, 0, 0),
            None,
            "nothing to prune, nothing to stop"
        );
        let allowed = PrunePolicy {
            allow_empty: true,
            max: Some(1000),
            ..PrunePolicy::default()
        };
        assert_eq!(allowed.guard(12, 11, 0), None);
    }
}
