//! Kustomize: which directories are kustomizations, and their rendering by the pinned upstream
//! `kustomize` binary, run as a sandboxed subprocess (as Argo CD does). The rendered YAML goes to
//! the manifests stage like any file, so ordering, ApplySet labels, prune, drift and health are
//! the same for rendered and plain manifests.
mod cache;
mod error;
mod options;
mod run;
mod sandbox;
mod unseal;

pub use error::RenderError;
pub use options::{KustomizeMode, KustomizeOptions, kustomization_file};
pub use run::{Rendered, post_render, render};
pub use sandbox::check;
