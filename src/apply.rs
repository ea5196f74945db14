//! Apply stage: server-side apply of each planned object under kubesync's field manager.
//!
//! An object whose live state already matches Git is not written at all: it carries the hash of
//! the desired object in an annotation, our Apply entry is in its managedFields, and every value we
//! set is still what Git says. Anything else is applied; when the hash matched but the server
//! changed the object, that is drift, corrected and reported.
use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::applyset::LiveObject;
use crate::drift::{DriftPolicy, Fingerprint, drifted_fields};
use crate::health::Health;
use crate::kube_ext::{SERVER_OWNED_METADATA, applied_by, dynamic_api, is_apply_by, managers};
use crate::manifests::Origin;
use crate::outcome::Action;
use crate::plan::{ObjectKey, PlannedObject};
use crate::release::{self, HANDOVER_MANAGER};

/// Annotation holding the hash of the desired object kubesync last applied.
pub const HASH_ANNOTATION: &str = "kubesync.dev/applied-hash";
/// `kubesync.dev/recreate: "true"`: delete and re-create when an immutable field changes.
pub const RECREATE_ANNOTATION: &str = "kubesync.dev/recreate";
/// `kubesync.dev/adopt: "true"`: take the object over from the ApplySet that holds it now.
pub const ADOPT_ANNOTATION: &str = "kubesync.dev/adopt";
/// Field managers whose ownership kubesync takes over: client-side `kubectl apply` (and the
/// entry the server makes when such an object is first server-side applied), so fields removed
/// from Git are removed from the cluster after a migration, as Flux does. Only their Update
/// entries: other managers (`kubectl edit`, `kubectl create`, `kubectl apply --server-side`,
/// `kubectl label`) keep the fields Git does not set.
pub const ADOPTED_MANAGERS: &[&str] = &["kubectl-client-side-apply", "before-first-apply"];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub field_manager: String,
    /// Take ownership of fields other managers own (Git wins). Off: conflicts are errors.
    pub force_conflicts: bool,
    /// Server-side dry run: nothing is persisted.
    pub dry_run: bool,
    pub concurrency: usize,
    pub timeout: Duration,
    /// What to do with an object Git did not change but the cluster did.
    pub drift: DriftPolicy,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            field_manager: crate::FIELD_MANAGER.into(),
            force_conflicts: true,
            dry_run: false,
            concurrency: 16,
            timeout: Duration::from_secs(30),
            drift: DriftPolicy::Correct,
        }
    }
}

/// Why one object could not be applied; the reason of its [`Action::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API refused or failed the request (described by [`describe_error`]).
    #[error("{0}")]
    Request(String),
    #[error(
        "belongs to another ApplySet ({label}={theirs}), not to this one ({ours}); an object has \
         one owner: remove it from the other set's source, or annotate it {ADOPT_ANNOTATION}: \
         \"true\" in Git to take it over",
        label = crate::plan::PART_OF_LABEL
    )]
    OtherSet { theirs: String, ours: String },
    #[error("adopting kubectl's fields: {0}")]
    Adopt(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

#[derive(Clone, Debug)]
pub struct ApplyOutcome {
    pub key: ObjectKey,
    pub resource: kube::discovery::ApiResource,
    pub origin: Origin,
    pub action: Action,
    /// Git's state was re-asserted over a change made in the cluster.
    pub drift_corrected: bool,
    /// Health of the object as the server holds it after this stage (None when the apply failed).
    pub health: Option<Health>,
    /// Its metadata as the server holds it after this stage, to tell later changes made in the
    /// cluster from this write (None when the apply failed or was a dry run).
    pub fingerprint: Option<Fingerprint>,
    /// Dry runs only (for the diff): the object as the server would hold it.
    pub live: Option<DynamicObject>,
    /// Dry runs only (for the diff): the object before, when it existed and was listed.
    pub before: Option<DynamicObject>,
}

/// Health of a live object, as `health::assess` judges it.
pub fn health_of(key: &ObjectKey, live: &DynamicObject) -> Health {
    let value = serde_json::to_value(live).unwrap_or_default();
    crate::health::assess(&key.group, &key.kind, &value)
}

/// Hash of the desired object (without the hash annotation itself), hex.
pub fn desired_hash(desired: &Value) -> String {
    let bytes = serde_json::to_vec(desired).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn with_hash(desired: &Value, hash: &str) -> Value {
    let mut object = desired.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        if let Some(a) = annotations.as_object_mut() {
            a.insert(HASH_ANNOTATION.into(), Value::String(hash.into()));
        }
    }
    object
}

/// True when every value in `desired` is present and equal in `live` (lists element by element).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            None => {
                dv.is_null()
                    || dv.as_object().is_some_and(|o| o.is_empty())
                    || dv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (d, l) => d == l,
    }
}

fn is_adoptable(
    entry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
) -> bool {
    entry.subresource.is_none()
        && entry.operation.as_deref() == Some("Update")
        && entry
            .manager
            .as_deref()
            .is_some_and(|name| ADOPTED_MANAGERS.contains(&name))
}

fn has_adoptable_managers(object: &DynamicObject) -> bool {
    managers(object).any(is_adoptable)
}

/// The ApplySet the live object belongs to, when it is not the one `desired` is labelled with.
fn foreign_set<'a>(live: &'a DynamicObject, desired: &Value) -> Option<&'a str> {
    let ours = desired["metadata"]["labels"][crate::plan::PART_OF_LABEL].as_str();
    live.labels()
        .get(crate::plan::PART_OF_LABEL)
        .map(String::as_str)
        .filter(|theirs| Some(*theirs) != ours)
}

fn wants_adopt(desired: &Value) -> bool {
    desired["metadata"]["annotations"][ADOPT_ANNOTATION].as_str() == Some("true")
}

/// Whether this set may write the object: Ok(true) when it takes it over from another set
/// (`kubesync.dev/adopt`), Ok(false) when it is ours or nobody's, Err naming both sets otherwise.
fn ownership(live: Option<&DynamicObject>, desired: &Value) -> Result<bool, ApplyError> {
    let Some(theirs) = live.and_then(|live| foreign_set(live, desired)) else {
        return Ok(false);
    };
    if wants_adopt(desired) {
        return Ok(true);
    }
    let ours = desired["metadata"]["labels"][crate::plan::PART_OF_LABEL]
        .as_str()
        .unwrap_or_default();
    Err(ApplyError::OtherSet {
        theirs: theirs.into(),
        ours: ours.into(),
    })
}

/// Decides, without a request, whether the live object already is what Git says.
pub fn is_unchanged(
    live: &DynamicObject,
    desired_with_hash: &Value,
    hash: &str,
    field_manager: &str,
) -> bool {
    if live.annotations().get(HASH_ANNOTATION).map(String::as_str) != Some(hash) {
        return false;
    }
    if !applied_by(live, field_manager) || has_adoptable_managers(live) {
        return false;
    }
    // Compare part by part: only the metadata is serialised, the rest is already JSON.
    let Some(desired) = desired_with_hash.as_object() else {
        return false;
    };
    desired.iter().all(|(key, value)| match key.as_str() {
        "apiVersion" | "kind" => true,
        "metadata" => serde_json::to_value(&live.metadata).is_ok_and(|m| is_subset(value, &m)),
        _ => match live.data.get(key) {
            Some(l) => is_subset(value, l),
            None => {
                value.is_null()
                    || value.as_object().is_some_and(|o| o.is_empty())
                    || value.as_array().is_some_and(|a| a.is_empty())
            }
        },
    })
}

fn api_for(client: &Client, planned: &PlannedObject) -> Api<DynamicObject> {
    dynamic_api(client, planned.key.namespace.as_deref(), &planned.resource)
}

/// Applies the objects of one stage concurrently.
pub async fn apply_stage(
    client: &Client,
    objects: &[PlannedObject],
    live: &BTreeMap<ObjectKey, LiveObject>,
    options: &ApplyOptions,
) -> Vec<ApplyOutcome> {
    use futures::StreamExt;
    // Indices, not references, go through the closure: a closure taking `&PlannedObject` makes the
    // stream's future not provably Send (rustc's higher-ranked lifetime limitation).
    let mut outcomes: Vec<ApplyOutcome> = futures::stream::iter((0..objects.len()).map(|i| {
        let planned = &objects[i];
        // Borrowed, not cloned: with thousands of objects, copies of the inventory add up.
        let before = live.get(&planned.key).map(|l| &l.object);
        async move {
            let result =
                tokio::time::timeout(options.timeout, apply_one(client, planned, before, options))
                    .await;
            match result {
                Ok(outcome) => outcome,
                Err(_) => ApplyOutcome {
                    key: planned.key.clone(),
                    resource: planned.resource.clone(),
                    origin: planned.origin.clone(),
                    action: Action::Failed(ApplyError::Timeout(options.timeout).to_string()),
                    drift_corrected: false,
                    health: None,
                    fingerprint: None,
                    live: None,
                    before: before.filter(|_| options.dry_run).cloned(),
                },
            }
        }
    }))
    .buffer_unordered(options.concurrency.max(1))
    .collect()
    .await;
    outcomes.sort_by(|a, b| a.key.cmp(&b.key));
    outcomes
}

async fn apply_one(
    client: &Client,
    planned: &PlannedObject,
    in_set: Option<&DynamicObject>,
    options: &ApplyOptions,
) -> ApplyOutcome {
    let hash = desired_hash(&planned.desired);
    let desired = with_hash(&planned.desired, &hash);
    let api = api_for(client, planned);
    // Not in this set's inventory: it may still exist, in another set or outside any.
    let fetched = match in_set {
        Some(_) => Ok(None),
        None => api.get_opt(&planned.key.name).await,
    };
    let before = in_set.or(fetched.as_ref().ok().and_then(Option::as_ref));
    let outcome = |action, drift_corrected, live: Option<&DynamicObject>| ApplyOutcome {
        key: planned.key.clone(),
        resource: planned.resource.clone(),
        origin: planned.origin.clone(),
        action,
        drift_corrected,
        health: live.map(|l| health_of(&planned.key, l)),
        fingerprint: live
            .filter(|_| !options.dry_run)
            .map(|l| Fingerprint::of(&l.metadata)),
        live: live.filter(|_| options.dry_run).cloned(),
        before: before.filter(|_| options.dry_run).cloned(),
    };
    let failed = |e: ApplyError| outcome(Action::Failed(e.to_string()), false, None);
    if let Err(e) = &fetched {
        return failed(ApplyError::Request(describe_error(e, planned)));
    }
    if let Some(live) = before
        && is_unchanged(live, &desired, &hash, &options.field_manager)
    {
        return outcome(Action::Unchanged, false, Some(live));
    }
    if let Some(live) = before.filter(|_| options.drift == DriftPolicy::Report)
        && live.annotations().get(HASH_ANNOTATION) == Some(&hash)
    {
        // Git did not change since kubesync applied it; the cluster did. Leave it, say where.
        return outcome(
            Action::Drifted(drift_report(live, &desired)),
            false,
            Some(live),
        );
    }
    let written = match ownership(before, &planned.desired) {
        Ok(adopting) => write(&api, planned, before, &desired, options)
            .await
            .map(|w| (adopting, w)),
        Err(e) => Err(e),
    };
    let (adopting, (applied, recreated)) = match written {
        Ok(w) => w,
        Err(e) => return failed(e),
    };
    let action = match before {
        _ if recreated => Action::Recreated,
        Some(_) if adopting => Action::Adopted,
        Some(b) => configured_or_unchanged(b, &applied, options.dry_run),
        None if looks_created(&applied, &options.field_manager) => Action::Created,
        None => Action::Configured,
    };
    // Git's hash was already there, yet the object changed: someone edited it in the cluster.
    let drift_corrected = before.is_some_and(|b| {
        b.annotations().get(HASH_ANNOTATION) == Some(&hash) && action == Action::Configured
    });
    outcome(action, drift_corrected, Some(&applied))
}

/// The fields of a drifted object that differ from Git, as one line.
fn drift_report(live: &DynamicObject, desired: &Value) -> String {
    let live = serde_json::to_value(live).unwrap_or_default();
    let fields = drifted_fields(desired, &live);
    match fields.is_empty() {
        true => "field ownership changed".into(),
        false => fields.join(", "),
    }
}

/// Whether an apply to an existing object changed it.
fn configured_or_unchanged(
    before: &DynamicObject,
    applied: &DynamicObject,
    dry_run: bool,
) -> Action {
    // A dry run never bumps resourceVersion: compare the content instead.
    let same = if dry_run {
        comparable(before) == comparable(applied)
    } else {
        before.resource_version() == applied.resource_version()
    };
    if same {
        Action::Unchanged
    } else {
        Action::Configured
    }
}

/// Server-side applies the object; re-creates it when an immutable field changed and it is
/// annotated so; takes over kubectl's fields and applies again. Returns the object as the server
/// holds it and whether it was re-created.
async fn write(
    api: &Api<DynamicObject>,
    planned: &PlannedObject,
    before: Option<&DynamicObject>,
    desired: &Value,
    options: &ApplyOptions,
) -> Result<(DynamicObject, bool), ApplyError> {
    let refused = |e: kube::Error| ApplyError::Request(describe_error(&e, planned));
    let mut params = PatchParams::apply(&options.field_manager);
    params.force = options.force_conflicts;
    params.dry_run = options.dry_run;
    let name = &planned.key.name;
    if before.is_some() && !options.dry_run {
        hand_over(api, planned, &options.field_manager)
            .await
            .map_err(refused)?;
    }
    let mut result = api.patch(name, &params, &Patch::Apply(desired)).await;
    let mut recreated = false;
    if let Err(kube::Error::Api(status)) = &result
        && is_immutable_error(status)
        && wants_recreate(&planned.desired, before)
        && !options.dry_run
    {
        result = recreate(api, name, before, (&params, desired)).await;
        recreated = result.is_ok();
    }
    let applied = result.map_err(refused)?;
    if options.dry_run || !has_adoptable_managers(&applied) {
        return Ok((applied, recreated));
    }
    // Created or edited with kubectl: take over its fields, then apply again so that fields
    // that left Git are removed.
    adopt(api, planned, &applied, &options.field_manager)
        .await
        .map_err(|e| ApplyError::Adopt(describe_error(&e, planned)))?;
    let applied = api
        .patch(name, &params, &Patch::Apply(desired))
        .await
        .map_err(refused)?;
    Ok((applied, recreated))
}

/// Before fields another controller owns leave kubesync's apply: those kubesync owns are applied
/// with their live values by [`HANDOVER_MANAGER`], so that they keep their values when kubesync
/// stops applying them (see `release`).
async fn hand_over(
    api: &Api<DynamicObject>,
    planned: &PlannedObject,
    field_manager: &str,
) -> Result<(), kube::Error> {
    if planned.released.is_empty() {
        return Ok(());
    }
    // Read afresh: listed objects carry no field sets (see `inventory::trim`).
    let Some(live) = api.get_opt(&planned.key.name).await? else {
        return Ok(());
    };
    let live = &live;
    let owned: Vec<String> = (planned.released.iter())
        .filter(|p| release::owned_by(live, field_manager, p))
        .cloned()
        .collect();
    if owned.is_empty() {
        return Ok(());
    }
    let Some(patch) = release::handover(&planned.desired, live, &owned) else {
        return Ok(());
    };
    let mut params = PatchParams::apply(HANDOVER_MANAGER);
    params.force = true;
    api.patch(&planned.key.name, &params, &Patch::Apply(&patch))
        .await?;
    tracing::info!(object = %planned.key, fields = ?owned, "fields handed over before release");
    Ok(())
}

/// The object without the fields every write changes, for comparisons and diffs.
pub fn comparable(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in SERVER_OWNED_METADATA {
            metadata.remove(key);
        }
    }
    value
}

/// New objects carry only our own managedFields entry (and, in dry run, no uid history).
fn looks_created(applied: &DynamicObject, field_manager: &str) -> bool {
    let entries: Vec<_> = managers(applied)
        .filter(|m| m.subresource.is_none())
        .collect();
    applied.metadata.generation.unwrap_or(1) <= 1
        && !entries.is_empty()
        && entries
            .iter()
            .all(|m| m.manager.as_deref() == Some(field_manager))
        && !applied.annotations().contains_key(LAST_APPLIED)
}

/// Phrases the API server uses when a field cannot be updated in place: "field is immutable",
/// "may not change once set" (a Service's clusterIP), "Forbidden: updates to statefulset spec for
/// fields other than …", "spec is immutable after creation" (a PVC), and the like.
const IMMUTABLE_PHRASES: &[&str] = &[
    "immutable",
    "may not change once set",
    "updates to statefulset spec for fields other than",
];

fn is_immutable_text(text: &str) -> bool {
    IMMUTABLE_PHRASES.iter().any(|p| text.contains(p))
}

/// A 422 Invalid whose message or causes say a field cannot be updated in place.
pub fn is_immutable_error(status: &kube::core::Status) -> bool {
    status.code == 422
        && (is_immutable_text(&status.message)
            || status
                .details
                .iter()
                .flat_map(|d| &d.causes)
                .any(|c| is_immutable_text(&c.message)))
}

/// The fields an immutable-update error names (its causes), or an empty list.
fn immutable_fields(status: &kube::core::Status) -> Vec<String> {
    let mut fields: Vec<String> = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| is_immutable_text(&c.message) && !c.field.is_empty())
        .map(|c| c.field.clone())
        .collect();
    fields.dedup();
    fields
}

/// Annotated `kubesync.dev/recreate` (in Git or in the cluster), or a Job: a changed Job
/// manifest runs the Job again (`run_once`).
fn wants_recreate(desired: &Value, before: Option<&DynamicObject>) -> bool {
    let is_job = desired["kind"] == "Job"
        && desired["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("batch/"));
    let in_git =
        is_job || desired["metadata"]["annotations"][RECREATE_ANNOTATION].as_str() == Some("true");
    let live = before
        .and_then(|b| b.annotations().get(RECREATE_ANNOTATION).cloned())
        .as_deref()
        == Some("true");
    in_git || live
}

/// Deletes the object (foreground, if it is still the one read) and applies it anew.
async fn recreate(
    api: &Api<DynamicObject>,
    name: &str,
    before: Option<&DynamicObject>,
    apply: (&PatchParams, &Value),
) -> Result<DynamicObject, kube::Error> {
    let (params, desired) = apply;
    let current = match before {
        Some(b) => b.clone(),
        None => api.get(name).await?,
    };
    let mut dp = DeleteParams::foreground();
    dp.preconditions = Some(Preconditions {
        uid: current.uid(),
        resource_version: None,
    });
    api.delete(name, &dp).await?;
    // Wait until the old object is gone (foreground deletion removes dependents first).
    for _ in 0..240 {
        match api.get_opt(name).await? {
            Some(o) if o.uid() == current.uid() => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            _ => break,
        }
    }
    api.patch(name, params, &Patch::Apply(desired)).await
}

/// Moves the fields owned by kubectl's managers into kubesync's Apply entry (as Flux does).
async fn adopt(
    api: &Api<DynamicObject>,
    planned: &PlannedObject,
    applied: &DynamicObject,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let mut entries: Vec<Value> = Vec::new();
    let mut merged: Option<Value> = None;
    let mut ours_index = None;
    for entry in managers(applied) {
        let value = serde_json::to_value(entry).unwrap_or(Value::Null);
        if is_adoptable(entry) {
            let fields = value.get("fieldsV1").cloned().unwrap_or(json!({}));
            merged = Some(match merged.take() {
                Some(m) => merge_fields(m, fields),
                None => fields,
            });
            continue;
        }
        if is_apply_by(entry, field_manager) {
            ours_index = Some(entries.len());
        }
        entries.push(value);
    }
    let Some(merged) = merged else { return Ok(()) };
    match ours_index {
        Some(i) => {
            let fields = entries[i].get("fieldsV1").cloned().unwrap_or(json!({}));
            entries[i]["fieldsV1"] = merge_fields(fields, merged);
        }
        None => entries.push(json!({
            "manager": field_manager, "operation": "Apply", "apiVersion": planned.resource.api_version,
            "fieldsType": "FieldsV1", "fieldsV1": merged,
        })),
    }
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": applied.resource_version()},
        {"op": "replace", "path": "/metadata/managedFields", "value": entries},
    ]);
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    api.patch(
        &planned.key.name,
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

/// Union of two fieldsV1 trees.
fn merge_fields(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, bv) in b {
                let merged = match a.remove(&k) {
                    Some(av) => merge_fields(av, bv),
                    None => bv,
                };
                a.insert(k, merged);
            }
            Value::Object(a)
        }
        (a, _) => a,
    }
}

/// A short error naming the object; for conflicts, the other managers and fields.
pub fn describe_error(e: &kube::Error, planned: &PlannedObject) -> String {
    match e {
        kube::Error::Api(status) => {
            let message = status.message.trim();
            match status.code {
                409 if status.reason == "Conflict" => format!(
                    "conflict with another field manager (use --force-conflicts to let Git win): {message}"
                ),
                422 if is_immutable_error(status) => {
                    let fields = immutable_fields(status);
                    let which = if fields.is_empty() {
                        "a field that cannot change in place".to_string()
                    } else {
                        format!("{} cannot change in place", fields.join(", "))
                    };
                    format!(
                        "{which}: {message} (annotate the object {RECREATE_ANNOTATION}: \"true\" in Git to let kubesync delete and re-create it)"
                    )
                }
                403 => format!("forbidden: {message}"),
                _ => crate::kube_ext::kube_message(e),
            }
        }
        other => format!(
            "request for {} failed: {}",
            planned.key,
            crate::kube_ext::kube_message(other)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_compares_values_and_list_lengths() {
        let live = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]}}});
        assert!(is_subset(&json!({"spec": {"replicas": 2}}), &live));
        assert!(is_subset(
            &json!({"spec": {"template": {"containers": [{"name": "a"}]}}}),
            &live
        ));
        assert!(!is_subset(&json!({"spec": {"replicas": 3}}), &live));
        assert!(!is_subset(
            &json!({"spec": {"template": {"containers": [{"name": "a"}, {"name": "b"}]}}}),
            &live
        ));
        assert!(!is_subset(&json!({"data": {"k": "v"}}), &live));
        assert!(
            is_subset(&json!({"data": {}}), &live),
            "an empty map is the same as absent"
        );
        assert!(is_subset(&json!({"n": 1.0}), &json!({"n": 1})));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = json!({"kind": "ConfigMap", "data": {"a": "1", "b": "2"}});
        let b = json!({"data": {"b": "2", "a": "1"}, "kind": "ConfigMap"});
        assert_eq!(
            desired_hash(&a),
            desired_hash(&b),
            "key order does not matter"
        );
        assert_ne!(
            desired_hash(&a),
            desired_hash(&json!({"kind": "ConfigMap", "data": {"a": "1"}}))
        );
        assert_eq!(desired_hash(&a).len(), 32);
    }

    #[test]
    fn unchanged_needs_hash_entry_and_values() {
        let desired = with_hash(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}),
            "h1",
        );
        let live: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {HASH_ANNOTATION: "h1"}, "managedFields": [
                {"manager": "kubesync", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {}}
            ]},
            "data": {"k": "v"}
        }))
        .expect("object");
        assert!(is_unchanged(&live, &desired, "h1", "kubesync"));
        assert!(
            !is_unchanged(&live, &desired, "h2", "kubesync"),
            "a new hash means Git changed"
        );
        assert!(!is_unchanged(&live, &desired, "h1", "other-manager"));
        let mut drifted = live.clone();
        drifted.data["data"]["k"] = json!("edited");
        assert!(
            !is_unchanged(&drifted, &desired, "h1", "kubesync"),
            "a changed value is drift"
        );
    }

    #[test]
    fn an_object_of_another_set_is_refused_unless_adopted() {
        let desired = |annotations: Value| {
            json!({"metadata": {"name": "c", "annotations": annotations,
                "labels": {crate::plan::PART_OF_LABEL: "applyset-ours-v1"}}})
        };
        let live = |set: &str| -> DynamicObject {
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "labels": {crate::plan::PART_OF_LABEL: set}}}))
            .expect("object")
        };
        let plain = desired(json!({}));
        assert_eq!(ownership(None, &plain).ok(), Some(false), "new object");
        assert_eq!(
            ownership(Some(&live("applyset-ours-v1")), &plain).ok(),
            Some(false)
        );
        let refused = ownership(Some(&live("applyset-theirs-v1")), &plain)
            .expect_err("refused")
            .to_string();
        assert!(
            refused.contains("applyset-theirs-v1") && refused.contains("applyset-ours-v1"),
            "{refused}"
        );
        let adopting = desired(json!({ADOPT_ANNOTATION: "true"}));
        assert_eq!(
            ownership(Some(&live("applyset-theirs-v1")), &adopting).ok(),
            Some(true)
        );
    }

    #[test]
    fn fields_merge_as_a_union() {
        let merged = merge_fields(
            json!({"f:data": {"f:a": {}}}),
            json!({"f:data": {"f:b": {}}, "f:metadata": {}}),
        );
        assert_eq!(
            merged,
            json!({"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {}})
        );
    }
}
