//! What a render needs to know: when Kustomize is used, what it may reach, where the binary is,
//! its limits and where renders are cached.
use std::path::PathBuf;
use std::time::Duration;

pub use crate::manifests::{KustomizeMode, kustomization_file};

/// Default time limit of one `kustomize build`; the controller uses the GitSync's timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Address-space limit of the subprocess (Go reserves more than it touches).
pub const DEFAULT_MEMORY_LIMIT: u64 = 2 * 1024 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct KustomizeOptions {
    pub mode: KustomizeMode,
    /// Remote bases and resources (Git or HTTP URLs) are fetched only when true.
    pub allow_remote_bases: bool,
    /// The `kustomize` executable. None: the one beside kubesync's own, then `kustomize` on PATH.
    pub binary: Option<PathBuf>,
    pub timeout: Duration,
    /// RLIMIT_AS of the subprocess, in bytes.
    pub memory_limit: u64,
    /// Where renders are kept between syncs (one per directory and options). None: not cached.
    pub cache_dir: Option<PathBuf>,
}

impl Default for KustomizeOptions {
    fn default() -> Self {
        KustomizeOptions {
            mode: KustomizeMode::Auto,
            allow_remote_bases: false,
            binary: None,
            timeout: DEFAULT_TIMEOUT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            cache_dir: None,
        }
    }
}

impl KustomizeOptions {
    /// The executable to run, as a path: the subprocess gets no PATH to look it up with.
    pub fn binary(&self) -> PathBuf {
        crate::subprocess::find(self.binary.as_deref(), "kustomize")
    }

    /// Everything besides the revision and the directory that changes a render's output.
    pub fn cache_key(&self) -> String {
        format!(
            "remote={} binary={}",
            self.allow_remote_bases,
            self.binary().display()
        )
    }
}
