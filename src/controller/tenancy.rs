//! Tenancy lockdown: what a GitSync may reach when people who may create GitSyncs in their own
//! namespace must not gain more through the controller than their own RBAC gives them.
//!
//! Outside the trusted namespaces (the cluster admin's), a GitSync that names no ServiceAccount
//! impersonates `--default-service-account` of its namespace, and with
//! `--no-cross-namespace-refs` it may name nothing in another namespace (dependsOn,
//! targetNamespace) and may manage only objects of its own namespace. GitSyncs in a trusted
//! namespace act with the controller's own rights, as without lockdown.
use kube::ResourceExt;

use crate::crd::GitSync;

/// The lockdown flags of the controller. The default locks nothing down.
#[derive(Clone, Debug, Default)]
pub struct Tenancy {
    /// The ServiceAccount (of the GitSync's own namespace) of GitSyncs that name none.
    pub default_service_account: Option<String>,
    /// References and objects only in the GitSync's own namespace.
    pub no_cross_namespace_refs: bool,
    /// Namespaces whose GitSyncs the lockdown does not restrict.
    pub trusted_namespaces: Vec<String>,
}

impl Tenancy {
    pub fn trusts(&self, namespace: &str) -> bool {
        self.trusted_namespaces.iter().any(|t| t == namespace)
    }

    fn locks(&self, sync: &GitSync) -> bool {
        !self.trusts(&sync.namespace().unwrap_or_default())
    }

    /// The ServiceAccount the GitSync's objects are applied as: its own, else the default one
    /// outside the trusted namespaces. None: the controller's own identity.
    pub fn service_account<'a>(&'a self, sync: &'a GitSync) -> Option<&'a str> {
        (sync.spec.service_account_name.as_deref()).or(self
            .default_service_account
            .as_deref()
            .filter(|_| self.locks(sync)))
    }

    /// The one namespace the GitSync's objects must be in, when it is confined to its own.
    pub fn confines(&self, sync: &GitSync) -> Option<String> {
        (self.no_cross_namespace_refs && self.locks(sync))
            .then(|| sync.namespace().unwrap_or_default())
    }

    /// Why the spec names something in another namespace that the lockdown forbids, if it does.
    pub fn refused_reference(&self, sync: &GitSync) -> Option<String> {
        let own = self.confines(sync)?;
        let why = |what: String| {
            format!(
                "{what} is in another namespace; a GitSync in namespace {own} may only refer to its \
                 own namespace (--no-cross-namespace-refs; {own} is not a trusted namespace)"
            )
        };
        if let Some(target) = &sync.spec.target_namespace
            && *target != own
        {
            return Some(why(format!("spec.targetNamespace {target}")));
        }
        let deps = sync.spec.depends_on.iter().enumerate();
        deps.filter_map(|(i, d)| {
            let namespace = d.namespace.as_deref().filter(|n| **n != own)?;
            Some(why(format!("spec.dependsOn[{i}] {namespace}/{}", d.name)))
        })
        .next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DependencyRef, GitSyncSpec};

    fn sync_in(namespace: &str, spec: serde_json::Value) -> GitSync {
        let mut spec_json = serde_json::json!({"url": "file:///repo"});
        if let (Some(base), Some(extra)) = (spec_json.as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        let spec: GitSyncSpec = serde_json::from_value(spec_json).expect("spec");
        let mut sync = GitSync::new("app", spec);
        sync.metadata.namespace = Some(namespace.into());
        sync
    }

    fn lockdown() -> Tenancy {
        Tenancy {
            default_service_account: Some("tenant".into()),
            no_cross_namespace_refs: true,
            trusted_namespaces: vec!["kubesync".into()],
        }
    }

    #[test]
    fn the_default_locks_nothing_down() {
        let open = Tenancy::default();
        let sync = sync_in("team-a", serde_json::json!({"targetNamespace": "other"}));
        assert_eq!(open.service_account(&sync), None);
        assert_eq!(open.confines(&sync), None);
        assert_eq!(open.refused_reference(&sync), None);
    }

    #[test]
    fn a_tenant_impersonates_the_default_account_unless_it_names_its_own() {
        let tenancy = lockdown();
        let plain = sync_in("team-a", serde_json::json!({}));
        assert_eq!(tenancy.service_account(&plain), Some("tenant"));
        let own = sync_in(
            "team-a",
            serde_json::json!({"serviceAccountName": "deployer"}),
        );
        assert_eq!(tenancy.service_account(&own), Some("deployer"));
        let admin = sync_in("kubesync", serde_json::json!({}));
        assert_eq!(tenancy.service_account(&admin), None, "trusted");
    }

    #[test]
    fn a_tenant_is_confined_to_its_namespace_and_a_trusted_one_is_not() {
        let tenancy = lockdown();
        let tenant = sync_in("team-a", serde_json::json!({}));
        assert_eq!(tenancy.confines(&tenant).as_deref(), Some("team-a"));
        assert_eq!(
            tenancy.confines(&sync_in("kubesync", serde_json::json!({}))),
            None
        );
        let only_account = Tenancy {
            no_cross_namespace_refs: false,
            ..lockdown()
        };
        assert_eq!(only_account.confines(&tenant), None);
    }

    #[test]
    fn references_to_other_namespaces_are_refused_and_named() {
        let tenancy = lockdown();
        let target = sync_in("team-a", serde_json::json!({"targetNamespace": "team-b"}));
        let why = tenancy.refused_reference(&target).expect("refused");
        assert!(why.contains("spec.targetNamespace team-b"), "{why}");
        assert!(why.contains("namespace team-a"), "{why}");
        let mut dependent = sync_in("team-a", serde_json::json!({"targetNamespace": "team-a"}));
        dependent.spec.depends_on = vec![
            DependencyRef {
                name: "infra".into(),
                namespace: Some("team-a".into()),
            },
            DependencyRef {
                name: "infra".into(),
                namespace: Some("kubesync".into()),
            },
        ];
        let why = tenancy.refused_reference(&dependent).expect("refused");
        assert!(why.contains("spec.dependsOn[1] kubesync/infra"), "{why}");
        dependent.spec.depends_on.pop();
        assert_eq!(tenancy.refused_reference(&dependent), None);
        let mut trusted = target.clone();
        trusted.metadata.namespace = Some("kubesync".into());
        assert_eq!(tenancy.refused_reference(&trusted), None);
    }
}
