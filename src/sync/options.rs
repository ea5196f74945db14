//! What a sync does and to what: the target (name, namespaces, paths, ApplySet parent), the
//! apply stage's options, the prune policy and the wait. Built once, by the CLI from its flags
//! and by the controller from a GitSync.
use std::time::Duration;

use kube::Client;

use crate::apply::ApplyOptions;
use crate::applyset::Parent;
use crate::kustomize::KustomizeOptions;
use crate::plan::PlanContext;
use crate::prune::PrunePolicy;
use crate::sops::Keys;

/// What a sync applies and where its set is recorded.
#[derive(Clone, Debug)]
pub struct Target {
    /// Name of the sync (the ApplySet parent's name).
    pub name: String,
    /// Namespace of objects that set none, and of the parent.
    pub default_namespace: String,
    /// Directories or files inside the checkout.
    pub paths: Vec<String>,
    /// The ApplySet parent. None: a Secret named `name` in the default namespace (the CLI's).
    pub parent: Option<Parent>,
    /// Age keys for SOPS-encrypted files.
    pub decryption: Keys,
    /// When and how kustomizations are rendered.
    pub kustomize: KustomizeOptions,
    /// A Helm chart rendered instead of the files under `paths`.
    pub helm: Option<crate::helm::HelmOptions>,
    /// Every object must be in this namespace (the controller's tenancy lockdown); others,
    /// cluster-scoped ones included, are refused before anything is applied.
    pub confined_to: Option<String>,
}

impl Target {
    /// The ApplySet parent this sync records its set on.
    pub fn parent(&self) -> Parent {
        self.parent
            .clone()
            .unwrap_or_else(|| Parent::secret(&self.name, &self.default_namespace))
    }

    /// What the plan needs to know of the target.
    pub fn plan_context(&self) -> PlanContext {
        let parent = self.parent();
        PlanContext {
            default_namespace: self.default_namespace.clone(),
            applyset_id: parent.id(),
            parent: Some(parent.key()),
            confined_to: self.confined_to.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub target: Target,
    pub apply: ApplyOptions,
    pub prune: PrunePolicy,
    /// Wait for health, at most this long.
    pub wait: Option<Duration>,
    /// Objects of a custom kind whose API group the cluster does not serve yet (its CRD comes
    /// from another sync) are reported as waiting instead of failing the sync (the controller's
    /// choice; the CLI fails them).
    pub wait_for_crds: bool,
    /// Set to true to stop the sync at the next step boundary before apply. Once apply has
    /// begun, the sync runs through prune, so a stop never leaves a half-pruned set.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Called with the revision as soon as the fetch has found it (the controller marks the
    /// commit pending on its forge); must not block.
    pub on_revision: Option<RevisionHook>,
}

/// See [`SyncOptions::on_revision`].
#[derive(Clone)]
pub struct RevisionHook(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for RevisionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevisionHook")
    }
}

impl SyncOptions {
    /// The defaults: the whole checkout, force conflicts, prune behind the default guards.
    pub fn new(name: &str, default_namespace: &str) -> Self {
        SyncOptions {
            target: Target {
                name: name.into(),
                default_namespace: default_namespace.into(),
                paths: vec![".".into()],
                parent: None,
                decryption: Keys::default(),
                kustomize: KustomizeOptions::default(),
                helm: None,
                confined_to: None,
            },
            apply: ApplyOptions::default(),
            prune: PrunePolicy::default(),
            wait: None,
            wait_for_crds: false,
            stop: None,
            on_revision: None,
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

/// The clients of one sync: `apply` reads and changes the managed objects (in the controller, it
/// impersonates the GitSync's ServiceAccount); `parent` reads and writes the ApplySet parent.
#[derive(Clone)]
pub struct Clients {
    pub apply: Client,
    pub parent: Client,
}

impl From<&Client> for Clients {
    /// One client for both.
    fn from(client: &Client) -> Clients {
        Clients {
            apply: client.clone(),
            parent: client.clone(),
        }
    }
}
