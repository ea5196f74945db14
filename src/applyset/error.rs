//! Errors of reading, writing and listing an ApplySet.

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
    #[error("ApplySet parent {kind} {namespace}/{name} does not exist")]
    MissingParent {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("cannot list {group_kind}: its API group is unavailable (stale discovery)")]
    StaleGroup { group_kind: String },
}
