//! Why a kustomization was not rendered. Every error names the repo-relative kustomization file;
//! Kustomize's own message is kept (its first line, paths made repo-relative).
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error(
        "{path}: no kustomization.yaml, kustomization.yml or Kustomization (Kustomize is forced on)"
    )]
    NoKustomization { path: String },
    #[error(
        "{file}: {field} {reference}: remote bases and resources are off (allow them with spec.kustomize.allowRemoteBases)"
    )]
    RemoteRefused {
        file: String,
        field: &'static str,
        reference: String,
    },
    #[error("{file}: {field} {reference}: resolves outside the repository")]
    Escapes {
        file: String,
        field: &'static str,
        reference: String,
    },
    #[error("{file}: {field} {reference}: does not exist in the repository")]
    NotFound {
        file: String,
        field: &'static str,
        reference: String,
    },
    #[error(
        "{file}: {field}: {kind} is a Kustomize plugin; kubesync runs no exec, container or Go plugins"
    )]
    Plugin {
        file: String,
        field: &'static str,
        kind: String,
    },
    #[error("{file}: cannot be read: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}: invalid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: kustomize build failed: {message}")]
    Build { file: String, message: String },
    #[error("{file}: kustomize build did not finish within {timeout:?}")]
    Timeout { file: String, timeout: Duration },
    #[error("{file}: kustomize build printed more than {limit} bytes")]
    TooLarge { file: String, limit: u64 },
    #[error(
        "{file}: the render holds SOPS-encrypted values that no file listed under resources holds (kubesync decrypts SOPS files a kustomization lists as resources, not generator inputs)"
    )]
    Encrypted { file: String },
    #[error(
        "{file}: SOPS encrypted its apiVersion, kind or metadata, which Kustomize must read; encrypt only the values (encrypted_regex: ^(data|stringData)$ in .sops.yaml)"
    )]
    SealedIdentity { file: String },
    #[error("{file}: cannot decrypt: {reason}")]
    Sops {
        file: String,
        reason: crate::sops::SopsError,
    },
    #[error("kustomize binary {binary}: {reason}")]
    Binary { binary: String, reason: String },
}
