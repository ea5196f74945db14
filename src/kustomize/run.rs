//! One `kustomize build`, sandboxed: checked first (see `sandbox`), then run in the checkout with
//! an empty environment (no credentials, no PATH: no `git`, no helm, no plugins), no plugin flags,
//! `LoadRestrictionsRootOnly`, a time limit (killed when reached) and an address-space limit.
use std::path::Path;
use std::time::{Duration, Instant};

use super::cache::Entry;
use super::error::RenderError;
use super::options::{KustomizeOptions, kustomization_file};
use super::sandbox;
use super::unseal::{check_readable, holds_ciphertext, unseal};
use crate::sops::Keys;
use crate::subprocess::{self, Ended};

/// Largest render accepted (the manifests stage's total limit).
const MAX_OUTPUT_BYTES: u64 = crate::manifests::MAX_TOTAL_BYTES;
/// Kustomize's messages kept (only the first line is reported).
const MAX_STDERR_BYTES: u64 = 64 * 1024;

/// The YAML Kustomize printed for one kustomization.
#[derive(Debug)]
pub struct Rendered {
    /// The repo-relative kustomization file: the `file` of the rendered objects' origins.
    pub file: String,
    pub yaml: Vec<u8>,
    /// How long `kustomize build` ran; None when the render came from the cache.
    pub duration: Option<Duration>,
}

/// Renders the kustomization in `dir` (repo-relative) of the checkout at `root`, at `revision`;
/// SOPS files it lists as resources are decrypted with `keys`.
pub async fn render(
    root: &Path,
    dir: &str,
    revision: &str,
    options: &KustomizeOptions,
    keys: &Keys,
) -> Result<Rendered, RenderError> {
    let full = root.join(dir);
    let name = kustomization_file(&full)
        .ok_or_else(|| RenderError::NoKustomization { path: dir.into() })?;
    let file = match dir {
        "" | "." => name.to_string(),
        _ => format!("{}/{name}", dir.trim_end_matches('/')),
    };
    let entry = (options.cache_dir.as_deref())
        .map(|cache| Entry::new(cache, dir, &options.cache_key(), revision));
    let (yaml, resource_files, duration) = match entry.as_ref().and_then(Entry::read) {
        Some(yaml) => (yaml, None, None),
        None => {
            let files = sandbox::check(root, dir, options.allow_remote_bases)?;
            check_readable(root, &files)?;
            let started = Instant::now();
            let yaml = build(root, dir, &file, options).await?;
            if let Some(entry) = &entry {
                entry.write(&yaml);
            }
            (yaml, Some(files), Some(started.elapsed()))
        }
    };
    let yaml = match holds_ciphertext(&yaml) {
        false => yaml,
        true => {
            let files = match resource_files {
                Some(files) => files,
                None => sandbox::check(root, dir, options.allow_remote_bases)?,
            };
            unseal(&file, &yaml, root, &files, keys)?
        }
    };
    Ok(Rendered {
        file,
        yaml,
        duration,
    })
}

/// Kustomize over rendered YAML (a Helm chart's): `patches` and `images` of `fragment` applied
/// to `yaml` by a kustomization written next to it in a scratch directory under `scratch`.
/// Patches must be inline (a `path` would name a file of the scratch directory only).
pub async fn post_render(
    yaml: &[u8],
    fragment: &serde_json::Value,
    scratch: &Path,
    origin: &str,
    options: &KustomizeOptions,
) -> Result<Vec<u8>, RenderError> {
    let file = format!("{origin} (postRender)");
    let io = |e: std::io::Error| RenderError::Unreadable {
        file: file.clone(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(scratch).map_err(io)?;
    let mut kustomization = serde_json::json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["rendered.yaml"],
    });
    for field in ["patches", "images"] {
        if let Some(value) = fragment.get(field).filter(|v| !v.is_null()) {
            kustomization[field] = value.clone();
        }
    }
    std::fs::write(scratch.join("rendered.yaml"), yaml).map_err(io)?;
    // JSON is YAML: kustomize reads it as its kustomization file.
    std::fs::write(
        scratch.join("kustomization.yaml"),
        kustomization.to_string(),
    )
    .map_err(io)?;
    let result = build(scratch, ".", &file, options).await;
    let _ = std::fs::remove_dir_all(scratch);
    result
}

async fn build(
    root: &Path,
    dir: &str,
    file: &str,
    options: &KustomizeOptions,
) -> Result<Vec<u8>, RenderError> {
    let binary = options.binary();
    let mut command = tokio::process::Command::new(&binary);
    command
        .arg("build")
        .arg(if dir.is_empty() { "." } else { dir })
        .args(["--load-restrictor", "LoadRestrictionsRootOnly"])
        .current_dir(root)
        .env_clear()
        .env("HOME", "/nonexistent")
        .env(
            "GOMEMLIMIT",
            format!("{}MiB", options.memory_limit / 2 / 1024 / 1024),
        );
    let limits = subprocess::Limits {
        timeout: options.timeout,
        memory: options.memory_limit,
        max_stdout: MAX_OUTPUT_BYTES,
        max_stderr: MAX_STDERR_BYTES,
    };
    let ended = subprocess::run(command, limits)
        .await
        .map_err(|e| RenderError::Binary {
            binary: binary.display().to_string(),
            reason: e.to_string(),
        })?;
    let (status, stdout, stderr) = match ended {
        Ended::Exited {
            status,
            stdout,
            stderr,
        } => (status, stdout, stderr),
        Ended::TimedOut => {
            return Err(RenderError::Timeout {
                file: file.into(),
                timeout: options.timeout,
            });
        }
    };
    if !status.success() {
        return Err(RenderError::Build {
            file: file.into(),
            message: subprocess::message(&stderr, root, &status),
        });
    }
    if stdout.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(RenderError::TooLarge {
            file: file.into(),
            limit: MAX_OUTPUT_BYTES,
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in executable for the subprocess handling only (Kustomize itself is tested on
    /// the testbed): a shell script.
    fn script(dir: &Path, body: &str) -> KustomizeOptions {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-kustomize");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        KustomizeOptions {
            binary: Some(path),
            timeout: Duration::from_millis(500),
            ..KustomizeOptions::default()
        }
    }

    #[tokio::test]
    async fn the_subprocess_gets_no_environment_and_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = script(dir.path(), "env");
        let out = build(dir.path(), ".", "kustomization.yaml", &options)
            .await
            .expect("env");
        let names: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            .filter(|k| k != "PWD" && k != "SHLVL" && k != "_")
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"HOME".into()) && names.contains(&"GOMEMLIMIT".into()));

        let options = script(dir.path(), "sleep 30");
        let started = Instant::now();
        let err = build(dir.path(), ".", "a/kustomization.yaml", &options)
            .await
            .expect_err("slow");
        assert!(matches!(err, RenderError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let options = script(dir.path(), "echo 'Error: broken' >&2; exit 1");
        let err = build(dir.path(), ".", "a/kustomization.yaml", &options)
            .await
            .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "a/kustomization.yaml: kustomize build failed: broken"
        );
    }
}
