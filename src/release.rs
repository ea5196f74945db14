//! Fields kubesync leaves to another controller: `spec.replicas` of a Deployment or StatefulSet
//! that a HorizontalPodAutoscaler or a KEDA ScaledObject scales, and the fields an object's
//! `kubesync.dev/ignore-fields` annotation names.
//!
//! Such a field is taken out of what is applied. When kubesync's field manager owned it, its
//! current value is first applied by a second field manager ([`HANDOVER_MANAGER`]), so that
//! dropping it from kubesync's apply does not remove it (server-side apply removes a field
//! only when no manager owns it any more): the hand-over the Kubernetes documentation
//! describes for autoscalers. Nothing is reset to a default on the way. When the autoscaler
//! goes, Git's value is applied again and takes the field back.
use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use crate::kube_ext::{is_apply_by, managers};
use crate::plan::{Discovery, ObjectKey, PlannedObject};

/// Per object, in Git: JSON pointers (RFC 6901) of fields another controller owns, separated by
/// commas or newlines, e.g. `/spec/replicas, /metadata/annotations/team.example~1owner`.
pub const IGNORE_FIELDS_ANNOTATION: &str = "kubesync.dev/ignore-fields";
/// The field manager that keeps a released field's value while its new owner takes it.
pub const HANDOVER_MANAGER: &str = "kubesync-handover";
const REPLICAS: &str = "/spec/replicas";
/// Workloads whose replicas an autoscaler may own.
const SCALABLE: [&str; 2] = ["Deployment", "StatefulSet"];

/// Fields of one object left to another controller, for the report and the status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Released {
    pub object: String,
    /// JSON pointers.
    pub fields: Vec<String>,
    /// Who owns them: `HorizontalPodAutoscaler/web`, `ScaledObject/web` or the annotation.
    pub to: String,
}

/// A bad `kubesync.dev/ignore-fields` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{IGNORE_FIELDS_ANNOTATION}: {pointer:?} {problem}")]
pub struct IgnoreFieldsError {
    pub pointer: String,
    pub problem: &'static str,
}

/// The pointers of an `ignore-fields` value.
pub fn parse_pointers(value: &str) -> Result<Vec<String>, IgnoreFieldsError> {
    let pointers = value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let mut parsed = Vec::new();
    for pointer in pointers {
        let problem = if !pointer.starts_with('/') {
            Some("is not a JSON pointer (it must start with /)")
        } else if pointer.split('/').skip(1).any(str::is_empty) {
            Some("has an empty segment")
        } else if pointer.starts_with("/metadata/name")
            || pointer.starts_with("/metadata/namespace")
            || pointer == "/metadata"
            || pointer == "/apiVersion"
            || pointer == "/kind"
        {
            Some("names the object's identity, which must be applied")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(IgnoreFieldsError {
                pointer: pointer.into(),
                problem,
            });
        }
        parsed.push(pointer.to_string());
    }
    Ok(parsed)
}

/// The unescaped segments of a pointer (`~1` is `/`, `~0` is `~`).
fn segments(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
}

/// Removes the field at `pointer` from `object`, through maps only; returns whether it was
/// there. Emptied parent maps are left (an empty map applies as nothing).
pub fn take(object: &mut Value, pointer: &str) -> bool {
    let segments: Vec<String> = segments(pointer).collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = object;
    for segment in parents {
        match at.get_mut(segment.as_str()) {
            Some(next @ Value::Object(_)) => at = next,
            _ => return false,
        }
    }
    at.as_object_mut()
        .is_some_and(|map| map.remove(last.as_str()).is_some())
}

/// Whether `field_manager`'s Apply entry on `live` owns the field at `pointer`.
pub fn owned_by(live: &DynamicObject, field_manager: &str, pointer: &str) -> bool {
    managers(live)
        .filter(|entry| is_apply_by(entry, field_manager) && entry.subresource.is_none())
        .any(|entry| {
            let Some(fields) = entry.fields_v1.as_ref() else {
                return false;
            };
            let mut at = &fields.0;
            for segment in segments(pointer) {
                match at.get(format!("f:{segment}")) {
                    Some(next) => at = next,
                    None => return false,
                }
            }
            true
        })
}

/// The value at `pointer` in the live object (through maps only).
fn live_value<'a>(live: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut at = live;
    for segment in segments(pointer) {
        at = at.as_object()?.get(&segment)?;
    }
    Some(at)
}

/// What [`HANDOVER_MANAGER`] applies: the object's identity and the live values of `pointers`.
/// None when none of them has a value.
pub fn handover(desired: &Value, live: &DynamicObject, pointers: &[String]) -> Option<Value> {
    let live = serde_json::to_value(live).ok()?;
    let mut metadata = Map::new();
    for key in ["name", "namespace"] {
        if let Some(v) = desired["metadata"].get(key) {
            metadata.insert(key.into(), v.clone());
        }
    }
    let mut object = json!({
        "apiVersion": desired["apiVersion"], "kind": desired["kind"], "metadata": metadata,
    });
    let mut any = false;
    for pointer in pointers {
        let Some(value) = live_value(&live, pointer) else {
            continue;
        };
        let segments: Vec<String> = segments(pointer).collect();
        let Some((last, parents)) = segments.split_last() else {
            continue;
        };
        let mut at = &mut object;
        for segment in parents {
            let map = at.as_object_mut()?;
            at = map.entry(segment.clone()).or_insert_with(|| json!({}));
        }
        at.as_object_mut()?.insert(last.clone(), value.clone());
        any = true;
    }
    any.then_some(object)
}

/// The workloads autoscalers scale: (namespace, group, kind, name) → `Kind/name` of the
/// autoscaler.
#[derive(Debug, Default)]
pub struct Autoscalers {
    targets: BTreeMap<(String, String, String, String), String>,
}

impl Autoscalers {
    /// Records one autoscaler (an HPA or a ScaledObject) from its JSON.
    fn add(&mut self, autoscaler: &Value, kind: &str, default_target: Option<&str>) {
        let namespace = autoscaler["metadata"]["namespace"].as_str();
        let name = autoscaler["metadata"]["name"].as_str();
        let target = &autoscaler["spec"]["scaleTargetRef"];
        let target_kind = target["kind"].as_str().or(default_target);
        let (Some(namespace), Some(name), Some(target_kind), Some(target_name)) =
            (namespace, name, target_kind, target["name"].as_str())
        else {
            return;
        };
        let api_version = target["apiVersion"].as_str().unwrap_or("apps/v1");
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let key = (
            namespace.to_string(),
            group.to_string(),
            target_kind.to_string(),
            target_name.to_string(),
        );
        self.targets.entry(key).or_insert(format!("{kind}/{name}"));
    }

    /// The autoscaler of `key`, if any.
    pub fn of(&self, key: &ObjectKey) -> Option<&str> {
        let namespace = key.namespace.clone()?;
        let lookup = (
            namespace,
            key.group.clone(),
            key.kind.clone(),
            key.name.clone(),
        );
        self.targets.get(&lookup).map(String::as_str)
    }

    /// Finds the autoscalers of the planned workloads: those in Git (not created yet on a first
    /// sync) and those in the cluster, in the workloads' namespaces, except those of the set
    /// `pruning` (its id, when this sync prunes) that left Git: they are about to go. A list
    /// that fails is a warning (Git's replicas are then applied), not a failed sync.
    pub async fn find(
        client: &kube::Client,
        discovery: &Discovery,
        objects: &[PlannedObject],
        pruning: Option<&str>,
    ) -> (Autoscalers, Vec<String>) {
        let mut found = Autoscalers::default();
        let mut warnings = Vec::new();
        let namespaces: BTreeSet<&str> = (objects.iter())
            .filter(|o| o.key.group == "apps" && SCALABLE.contains(&o.key.kind.as_str()))
            .filter_map(|o| o.key.namespace.as_deref())
            .collect();
        if namespaces.is_empty() {
            return (found, warnings);
        }
        let kinds = [
            ("autoscaling/v2", "HorizontalPodAutoscaler", None),
            ("keda.sh/v1alpha1", "ScaledObject", Some("Deployment")),
        ];
        for (api_version, kind, default_target) in kinds {
            let in_git = objects
                .iter()
                .filter(|o| o.key.kind == kind && o.resource.api_version == api_version);
            for o in in_git {
                found.add(&o.desired, kind, default_target);
            }
            let Some(info) = discovery.resolve(api_version, kind) else {
                continue;
            };
            for namespace in &namespaces {
                let api = crate::kube_ext::dynamic_api(client, Some(namespace), &info.api_resource);
                match api.list(&Default::default()).await {
                    Ok(list) => {
                        for item in list.items {
                            let part_of = item.labels().get(crate::plan::PART_OF_LABEL);
                            if pruning.is_some() && part_of.map(String::as_str) == pruning {
                                // Ours: in Git (added above) or leaving with this sync's prune.
                                continue;
                            }
                            let mut value = serde_json::to_value(&item).unwrap_or_default();
                            value["metadata"]["namespace"] = json!(namespace);
                            found.add(&value, kind, default_target);
                        }
                    }
                    Err(e) => warnings.push(format!(
                        "could not list {kind}s in namespace {namespace} ({}): replicas of its \
                         workloads are applied from Git",
                        crate::kube_ext::kube_message(&e)
                    )),
                }
            }
        }
        (found, warnings)
    }
}

/// Takes the released fields out of each planned object: `spec.replicas` of autoscaled
/// workloads, and what `kubesync.dev/ignore-fields` names. Returns what was released, and the
/// errors of bad annotations (one per object, naming it).
pub fn release(
    objects: &mut [PlannedObject],
    autoscalers: &Autoscalers,
) -> (Vec<Released>, Vec<String>) {
    let mut released = Vec::new();
    let mut errors = Vec::new();
    for o in objects.iter_mut() {
        if let Some(by) = autoscalers.of(&o.key)
            && SCALABLE.contains(&o.key.kind.as_str())
            && take(&mut o.desired, REPLICAS)
        {
            o.released.push(REPLICAS.into());
            released.push(Released {
                object: o.key.to_string(),
                fields: vec![REPLICAS.into()],
                to: by.into(),
            });
        }
        let annotation = o.desired["metadata"]["annotations"][IGNORE_FIELDS_ANNOTATION].as_str();
        let Some(annotation) = annotation.map(str::to_string) else {
            continue;
        };
        let pointers = match parse_pointers(&annotation) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{}: {}: {e}", o.origin, o.key));
                continue;
            }
        };
        let taken: Vec<String> = (pointers.into_iter())
            .filter(|p| take(&mut o.desired, p))
            .collect();
        if !taken.is_empty() {
            o.released.extend(taken.iter().cloned());
            released.push(Released {
                object: o.key.to_string(),
                fields: taken,
                to: format!("annotation {IGNORE_FIELDS_ANNOTATION}"),
            });
        }
    }
    (released, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_pointers("/spec/replicas, /metadata/annotations/a~1b\n").expect("ok"),
            ["/spec/replicas", "/metadata/annotations/a~1b"]
        );
        let e = parse_pointers("spec.replicas").expect_err("not a pointer");
        assert!(e.to_string().contains("\"spec.replicas\""), "{e}");
        assert!(parse_pointers("/spec//x").is_err());
        assert!(parse_pointers("/metadata/name").is_err());
    }

    #[test]
    fn take_removes_through_maps_only() {
        let mut object = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a"}]}}},
            "metadata": {"annotations": {"a/b": "x"}}});
        assert!(take(&mut object, "/spec/replicas"));
        assert!(!take(&mut object, "/spec/replicas"), "already gone");
        assert!(take(&mut object, "/metadata/annotations/a~1b"));
        assert!(!take(&mut object, "/spec/template/spec/containers/0/name"));
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"][0]["name"],
            "a"
        );
        assert_eq!(object["metadata"]["annotations"], json!({}));
    }

    fn live(fields: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", "managedFields": [
                {"manager": "kubesync", "operation": "Apply", "apiVersion": "apps/v1",
                 "fieldsType": "FieldsV1", "fieldsV1": fields},
                {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
                 "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:paused": {}}}}
            ]},
            "spec": {"replicas": 4, "paused": false}
        }))
        .expect("object")
    }

    #[test]
    fn ownership_is_read_from_the_apply_entry_of_the_manager() {
        let ours = live(json!({"f:spec": {"f:replicas": {}}}));
        assert!(owned_by(&ours, "kubesync", "/spec/replicas"));
        assert!(!owned_by(&ours, "other", "/spec/replicas"));
        assert!(!owned_by(&ours, "kubesync", "/spec/paused"));
        let theirs = live(json!({"f:spec": {"f:template": {}}}));
        assert!(!owned_by(&theirs, "kubesync", "/spec/replicas"));
    }

    #[test]
    fn the_handover_carries_identity_and_live_values() {
        let desired = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", "labels": {"x": "y"}}, "spec": {}});
        let object = live(json!({}));
        let patch = handover(&desired, &object, &["/spec/replicas".into()]).expect("patch");
        assert_eq!(
            patch,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "apps"}, "spec": {"replicas": 4}})
        );
        assert_eq!(handover(&desired, &object, &["/spec/absent".into()]), None);
    }

    #[test]
    fn autoscalers_match_their_targets_by_namespace_group_kind_and_name() {
        let mut found = Autoscalers::default();
        found.add(
            &json!({"metadata": {"name": "web-hpa", "namespace": "apps"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}),
            "HorizontalPodAutoscaler",
            None,
        );
        found.add(
            &json!({"metadata": {"name": "worker", "namespace": "apps"},
                "spec": {"scaleTargetRef": {"name": "worker"}}}),
            "ScaledObject",
            Some("Deployment"),
        );
        let key = |name: &str, ns: &str| ObjectKey {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: Some(ns.into()),
            name: name.into(),
        };
        assert_eq!(
            found.of(&key("web", "apps")),
            Some("HorizontalPodAutoscaler/web-hpa")
        );
        assert_eq!(
            found.of(&key("worker", "apps")),
            Some("ScaledObject/worker")
        );
        assert_eq!(found.of(&key("web", "other")), None);
    }
}
