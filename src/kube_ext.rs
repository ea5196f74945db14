//! Helpers over kube's dynamic API that several stages share: the namespaced/cluster scope
//! switch, "applied by this field manager", the fields the server owns, and an API error as one
//! line.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;

/// Metadata fields the server owns: never sent, and left out of comparisons and diffs.
pub const SERVER_OWNED_METADATA: [&str; 6] = [
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
];

/// The API of `resource` in `namespace`, or cluster-wide when `namespace` is None.
pub fn dynamic_api(
    client: &Client,
    namespace: Option<&str>,
    resource: &ApiResource,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// The object's managedFields entries.
pub fn managers(object: &DynamicObject) -> impl Iterator<Item = &ManagedFieldsEntry> {
    object.metadata.managed_fields.iter().flatten()
}

/// Whether `entry` is a server-side apply of the object itself (not a subresource) by
/// `field_manager`.
pub fn is_apply_by(entry: &ManagedFieldsEntry, field_manager: &str) -> bool {
    entry.manager.as_deref() == Some(field_manager)
        && entry.operation.as_deref() == Some("Apply")
        && entry.subresource.is_none()
}

/// Whether `field_manager` has server-side applied the object.
pub fn applied_by(object: &DynamicObject, field_manager: &str) -> bool {
    managers(object).any(|m| is_apply_by(m, field_manager))
}

/// A Kubernetes client error as one short line: the API's message and code, or the transport error.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let message = status.message.trim();
            if status.reason.is_empty() {
                format!("{message} ({})", status.code)
            } else {
                format!("{message} ({} {})", status.code, status.reason)
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(managers: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "managedFields": managers},
        }))
        .expect("object")
    }

    #[test]
    fn applied_by_needs_an_apply_of_the_object_by_that_manager() {
        let ours = object(serde_json::json!([{"manager": "kubesync", "operation": "Apply"}]));
        assert!(applied_by(&ours, "kubesync"));
        assert!(!applied_by(&ours, "flux"));
        let update = object(serde_json::json!([{"manager": "kubesync", "operation": "Update"}]));
        assert!(!applied_by(&update, "kubesync"));
        let status = object(serde_json::json!([
            {"manager": "kubesync", "operation": "Apply", "subresource": "status"}
        ]));
        assert!(!applied_by(&status, "kubesync"));
    }
}
