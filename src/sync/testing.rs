//! Builders for the sync's unit tests.
use crate::apply::ApplyOutcome;
use crate::health::Health;
use crate::manifests::Origin;
use crate::outcome::Action;
use crate::plan::ObjectKey;

pub fn outcome(kind: &str, name: &str, action: Action, health: Health) -> ApplyOutcome {
    ApplyOutcome {
        key: ObjectKey {
            group: String::new(),
            kind: kind.into(),
            namespace: Some("apps".into()),
            name: name.into(),
        },
        resource: kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        origin: Origin {
            file: format!("{name}.yaml"),
            document: 0,
            item: None,
        },
        action,
        drift_corrected: false,
        health: Some(health),
        fingerprint: None,
        live: None,
        before: None,
    }
}
