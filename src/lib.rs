//! kubesync: keep a Kubernetes cluster in step with manifests in Git.
//!
//! A sync is a pipeline of stages, each in its own module, shared by the CLI and the controller:
//! source (git) → manifests (parse, validate) → plan (discovery, order) → apply → prune → report.
pub mod apply;
pub mod applyset;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod drift;
pub mod duration;
pub mod health;
pub mod helm;
pub mod http;
pub mod kube_ext;
pub mod kustomize;
pub mod lease;
pub mod manifests;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod plan;
pub mod prune;
pub mod release;
pub mod review;
pub mod run_once;
pub mod shard;
pub mod sops;
pub mod source;
pub mod subprocess;
pub mod sync;
pub mod telemetry;

/// The field manager kubesync applies with unless `--field-manager` says otherwise.
pub const FIELD_MANAGER: &str = "kubesync";
/// The version reported by `--version` and in `applyset.kubernetes.io/tooling`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
