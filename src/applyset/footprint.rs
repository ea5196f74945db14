//! What an ApplySet parent records: the group-kinds and namespaces its objects live in.
use std::collections::BTreeSet;

use crate::plan::{GroupKind, ObjectKey, Plan};

/// What the parent records: group-kinds and namespaces beyond its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub group_kinds: BTreeSet<GroupKind>,
    pub namespaces: BTreeSet<String>,
}

impl Footprint {
    /// Adds one object's group-kind and namespace.
    pub fn add(&mut self, group_kind: GroupKind, namespace: Option<&str>) {
        self.group_kinds.insert(group_kind);
        if let Some(ns) = namespace {
            self.namespaces.insert(ns.to_string());
        }
    }

    /// Everything a plan can touch: its objects and the custom resources waiting for their CRD.
    pub fn of_plan(plan: &Plan) -> Footprint {
        let mut footprint = Footprint::default();
        for (group_kind, namespace) in plan.touches() {
            footprint.add(group_kind, namespace);
        }
        footprint
    }

    /// The footprint widened by `keys`.
    pub fn with_keys<'a>(&self, keys: impl IntoIterator<Item = &'a ObjectKey>) -> Footprint {
        let mut footprint = self.clone();
        for key in keys {
            footprint.add(key.group_kind(), key.namespace.as_deref());
        }
        footprint
    }

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

    pub(super) fn annotations(&self, parent_namespace: &str) -> (String, String) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
