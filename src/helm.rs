//! Helm charts, rendered by the pinned upstream `helm` binary (`helm template`, as Argo CD does)
//! as a subprocess under the same limits as Kustomize. A chart comes from a directory of the Git
//! checkout, from an HTTP(S) Helm repository or from an OCI registry (`helm pull`, cached by
//! repository, chart and resolved version). `.Capabilities` are the target cluster's: its version
//! and every API version discovery found. The rendered YAML then goes through the same plan,
//! apply, prune, drift and health as any manifest.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::subprocess::{self, Ended, Limits};

/// Largest render accepted (the manifests stage's total limit).
const MAX_OUTPUT_BYTES: u64 = crate::manifests::MAX_TOTAL_BYTES;
const MAX_STDERR_BYTES: u64 = 64 * 1024;
/// Largest chart archive accepted from a repository or registry.
const MAX_CHART_BYTES: u64 = 32 * 1024 * 1024;
/// Address-space limit of the subprocess (Go reserves more than it touches).
const MEMORY_LIMIT: u64 = 2 * 1024 * 1024 * 1024;

/// The annotation naming the Helm hooks an object is.
pub const HOOK_ANNOTATION: &str = "helm.sh/hook";

/// When a sync applies a Helm hook: a sync installs or upgrades, so `pre-install`/`pre-upgrade`
/// hooks go before the chart's other objects and `post-install`/`post-upgrade` after them;
/// hooks only of delete or rollback are never applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPhase {
    Before,
    After,
    Never,
}

/// The phase of an object that is a Helm hook; None: not a hook, or a test hook (kept only when
/// `skipTests` is off, then applied as an ordinary object).
pub fn hook_phase(object: &serde_json::Value) -> Option<HookPhase> {
    let hooks = object["metadata"]["annotations"][HOOK_ANNOTATION].as_str()?;
    let hooks: Vec<&str> = hooks.split(',').map(str::trim).collect();
    let any = |names: &[&str]| hooks.iter().any(|h| names.contains(h));
    if any(&["pre-install", "pre-upgrade"]) {
        Some(HookPhase::Before)
    } else if any(&["post-install", "post-upgrade"]) {
        Some(HookPhase::After)
    } else if hooks.iter().any(|h| h.starts_with("test")) {
        None
    } else {
        Some(HookPhase::Never)
    }
}

/// Where the chart is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChartSource {
    /// A directory of the checkout holding `Chart.yaml`.
    Path(String),
    /// A chart of an HTTP(S) Helm repository or an OCI registry (`oci://…`), at a version or a
    /// semver range (None: the latest).
    Repository {
        url: String,
        chart: String,
        version: Option<String>,
    },
}

/// Credentials of a repository or registry: never in a message.
#[derive(Clone, Default)]
pub struct RepoCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    /// A private CA's certificate (PEM file).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RepoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct HelmOptions {
    pub source: ChartSource,
    pub release_name: String,
    pub namespace: String,
    /// Inline values, applied after the files.
    pub values: Option<serde_json::Value>,
    /// Values files in the checkout, in order.
    pub values_files: Vec<String>,
    /// Values files from outside the checkout (the controller's copies of `valuesFrom`), after
    /// the checkout's.
    pub values_from: Vec<PathBuf>,
    pub include_crds: bool,
    pub skip_tests: bool,
    /// Kustomize `patches` and `images` over the output (`{"patches": […], "images": […]}`).
    pub post_render: Option<serde_json::Value>,
    pub credentials: RepoCredentials,
    /// The `helm` executable. None: the one beside kubesync's own, then `helm` on PATH.
    pub binary: Option<PathBuf>,
    pub timeout: Duration,
    /// Where pulled charts and helm's scratch directories are kept.
    pub cache_dir: PathBuf,
}

/// The target cluster as `.Capabilities` shows it.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// `v1.36.3`; None: helm's default.
    pub kube_version: Option<String>,
    pub api_versions: Vec<String>,
}

/// What was rendered and from which chart.
#[derive(Debug)]
pub struct Rendered {
    /// What errors and origins name: `helm chart <path>` or `helm chart <repo> <chart>`.
    pub origin: String,
    pub yaml: Vec<u8>,
    /// The chart's resolved version and the sha256 of its archive (repository charts).
    pub version: Option<String>,
    pub digest: Option<String>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelmError {
    #[error("{origin}: no Chart.yaml there")]
    NoChart { origin: String },
    #[error("{origin}: {field} {path} resolves outside the repository")]
    Escapes {
        origin: String,
        field: &'static str,
        path: String,
    },
    #[error("{origin}: values file {path} does not exist in the repository")]
    NoValuesFile { origin: String, path: String },
    #[error("{origin}: values file {path} is not a YAML mapping: {message}")]
    BadValuesFile {
        origin: String,
        path: String,
        message: String,
    },
    #[error("{origin}: helm pull failed: {message}")]
    Pull { origin: String, message: String },
    #[error("{origin}: helm template failed: {message}")]
    Template { origin: String, message: String },
    #[error("{origin}: helm did not finish within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("{origin}: helm template printed more than {limit} bytes")]
    TooLarge { origin: String, limit: u64 },
    #[error("{origin}: {message}")]
    Scratch { origin: String, message: String },
    #[error("helm binary {binary}: {reason}")]
    Binary { binary: String, reason: String },
}

impl HelmOptions {
    /// A fresh scratch directory under the cache, for a post-render.
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (self.cache_dir).join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn origin(&self) -> String {
        match &self.source {
            ChartSource::Path(path) => format!("helm chart {path}"),
            ChartSource::Repository { url, chart, .. } => format!("helm chart {chart} of {url}"),
        }
    }

    fn binary(&self) -> PathBuf {
        subprocess::find(self.binary.as_deref(), "helm")
    }

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.timeout,
            memory: MEMORY_LIMIT,
            max_stdout: MAX_OUTPUT_BYTES,
            max_stderr: MAX_STDERR_BYTES,
        }
    }

    /// helm with an empty environment but for its own directories, under the cache.
    fn command(&self, scratch: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.binary());
        command
            .env_clear()
            .env("HOME", scratch)
            .env("HELM_CACHE_HOME", scratch.join("cache"))
            .env("HELM_CONFIG_HOME", scratch.join("config"))
            .env("HELM_DATA_HOME", scratch.join("data"))
            .env(
                "GOMEMLIMIT",
                format!("{}MiB", MEMORY_LIMIT / 2 / 1024 / 1024),
            )
            .current_dir(scratch);
        command
    }
}

/// Renders the chart of `options` for the checkout at `root`.
pub async fn render(
    root: &Path,
    options: &HelmOptions,
    capabilities: &Capabilities,
) -> Result<Rendered, HelmError> {
    let origin = options.origin();
    let started = Instant::now();
    let scratch = scratch_dir(options, &origin)?;
    let (chart, version, digest) = match &options.source {
        ChartSource::Path(path) => (inside(root, path, "chart", &origin)?, None, None),
        ChartSource::Repository { .. } => {
            let pulled = pull(options, &scratch.path, &origin).await?;
            (pulled.archive, Some(pulled.version), Some(pulled.digest))
        }
    };
    if chart.is_dir() && !chart.join("Chart.yaml").is_file() {
        return Err(HelmError::NoChart { origin });
    }
    let mut command = options.command(&scratch.path);
    command
        .arg("template")
        .arg(&options.release_name)
        .arg(&chart)
        .args(["--namespace", &options.namespace]);
    if let Some(kube_version) = &capabilities.kube_version {
        command.args(["--kube-version", kube_version]);
    }
    if !capabilities.api_versions.is_empty() {
        command.args(["--api-versions", &capabilities.api_versions.join(",")]);
    }
    if options.include_crds {
        command.arg("--include-crds");
    }
    if options.skip_tests {
        command.arg("--skip-tests");
    }
    for file in values_files(root, options, &scratch.path, &origin)? {
        command.arg("--values").arg(file);
    }
    let yaml = run(command, options, root, &origin, |origin, message| {
        HelmError::Template { origin, message }
    })
    .await?;
    Ok(Rendered {
        origin,
        yaml,
        version,
        digest,
        duration: started.elapsed(),
    })
}

/// A scratch directory for one helm run (its HOME), removed afterwards.
struct Scratch {
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn scratch_dir(options: &HelmOptions, origin: &str) -> Result<Scratch, HelmError> {
    let path = options.scratch_path("helm-run");
    std::fs::create_dir_all(&path).map_err(|e| HelmError::Scratch {
        origin: origin.into(),
        message: format!("creating {}: {e}", path.display()),
    })?;
    Ok(Scratch { path })
}

/// `path` of the checkout, refused when it resolves outside it (`..`, symlinks).
fn inside(
    root: &Path,
    path: &str,
    field: &'static str,
    origin: &str,
) -> Result<PathBuf, HelmError> {
    let escapes = || HelmError::Escapes {
        origin: origin.into(),
        field,
        path: path.into(),
    };
    let root = root.canonicalize().map_err(|_| escapes())?;
    match root.join(path).canonicalize() {
        Ok(full) if full.starts_with(&root) => Ok(full),
        Ok(_) => Err(escapes()),
        Err(_) if field == "chart" => Err(HelmError::NoChart {
            origin: origin.into(),
        }),
        Err(_) => Err(HelmError::NoValuesFile {
            origin: origin.into(),
            path: path.into(),
        }),
    }
}

/// The values files in order, checked to be YAML mappings (so a broken one is named), then
/// the inline values written beside them.
fn values_files(
    root: &Path,
    options: &HelmOptions,
    scratch: &Path,
    origin: &str,
) -> Result<Vec<PathBuf>, HelmError> {
    let mut files = Vec::new();
    for path in &options.values_files {
        let full = inside(root, path, "values file", origin)?;
        let bad = |message: String| HelmError::BadValuesFile {
            origin: origin.into(),
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&full).map_err(|e| bad(e.to_string()))?;
        let parsed: Result<serde_json::Value, _> = serde_saphyr::from_str(&text);
        match parsed {
            Ok(serde_json::Value::Object(_) | serde_json::Value::Null) => {}
            Ok(_) => return Err(bad("its top level is not a mapping".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
        files.push(full);
    }
    files.extend(options.values_from.iter().cloned());
    if let Some(values) = &options.values {
        let inline = scratch.join("inline-values.json");
        std::fs::write(&inline, values.to_string()).map_err(|e| HelmError::Scratch {
            origin: origin.into(),
            message: format!("writing the inline values: {e}"),
        })?;
        files.push(inline);
    }
    Ok(files)
}

/// A chart pulled from a repository or registry.
struct Pulled {
    archive: PathBuf,
    version: String,
    digest: String,
}

/// `helm pull`s the chart into the cache: an exact version already there is not pulled again;
/// a range is resolved by the repository at every sync.
async fn pull(options: &HelmOptions, scratch: &Path, origin: &str) -> Result<Pulled, HelmError> {
    let ChartSource::Repository {
        url,
        chart,
        version,
    } = &options.source
    else {
        return Err(HelmError::NoChart {
            origin: origin.into(),
        });
    };
    let store = options.cache_dir.join("charts").join(sanitize(url));
    if let Some(exact) = version.as_deref().filter(|v| is_exact(v)) {
        let cached = store.join(format!("{}-{exact}.tgz", chart_name(chart)));
        if let Some(digest) = sha256_file(&cached) {
            return Ok(Pulled {
                archive: cached,
                version: exact.trim_start_matches('v').into(),
                digest,
            });
        }
    }
    let into = scratch.join("pulled");
    std::fs::create_dir_all(&into).map_err(|e| HelmError::Scratch {
        origin: origin.into(),
        message: format!("creating {}: {e}", into.display()),
    })?;
    let command = pull_command(options, scratch, &into);
    let scrub = options.credentials.password.clone();
    run(command, options, scratch, origin, move |origin, message| {
        let message = match &scrub {
            Some(p) if !p.is_empty() => message.replace(p.as_str(), "<redacted>"),
            _ => message,
        };
        HelmError::Pull { origin, message }
    })
    .await?;
    let archive = std::fs::read_dir(&into)
        .ok()
        .and_then(|mut entries| entries.find_map(|e| e.ok().map(|e| e.path())))
        .ok_or_else(|| HelmError::Pull {
            origin: origin.into(),
            message: "helm pull wrote no chart archive".into(),
        })?;
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    if size > MAX_CHART_BYTES {
        return Err(HelmError::Pull {
            origin: origin.into(),
            message: format!("the chart archive is {size} bytes, more than {MAX_CHART_BYTES}"),
        });
    }
    let file_name = archive
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let resolved = (file_name.strip_suffix(".tgz"))
        .and_then(|stem| stem.strip_prefix(&format!("{}-", chart_name(chart))))
        .unwrap_or_default()
        .to_string();
    let kept = store.join(&file_name);
    let stored = std::fs::create_dir_all(&store).and_then(|()| std::fs::rename(&archive, &kept));
    let archive = if stored.is_ok() { kept } else { archive };
    let digest = sha256_file(&archive).unwrap_or_default();
    Ok(Pulled {
        archive,
        version: resolved,
        digest,
    })
}

/// `helm pull` of the options' chart into `into`, with the repository's credentials.
fn pull_command(options: &HelmOptions, scratch: &Path, into: &Path) -> tokio::process::Command {
    let mut command = options.command(scratch);
    command.arg("pull");
    if let ChartSource::Repository {
        url,
        chart,
        version,
    } = &options.source
    {
        match url.starts_with("oci://") {
            true => command.arg(format!("{}/{chart}", url.trim_end_matches('/'))),
            false => command.arg(chart).args(["--repo", url]),
        };
        if let Some(version) = version {
            command.args(["--version", version]);
        }
    }
    command.arg("--destination").arg(into);
    let credentials = &options.credentials;
    if let Some(username) = &credentials.username {
        command.args(["--username", username]);
    }
    if let Some(password) = &credentials.password {
        command.args(["--password", password]);
    }
    if let Some(ca) = &credentials.ca_file {
        command.arg("--ca-file").arg(ca);
    }
    command
}

/// The chart's own name: the last segment of an OCI path.
fn chart_name(chart: &str) -> &str {
    chart.rsplit('/').next().unwrap_or(chart)
}

/// Whether a version names one release (not a range).
fn is_exact(version: &str) -> bool {
    let v = version.trim_start_matches('v');
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        && v.starts_with(|c: char| c.is_ascii_digit())
        && !v.contains(".x")
        && !v.contains(".X")
}

fn sanitize(url: &str) -> String {
    url.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn sha256_file(path: &Path) -> Option<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).ok()?;
    Some(format!("sha256:{:x}", sha2::Sha256::digest(&bytes)))
}

/// Runs helm; its failure becomes `failed(origin, helm's message)`.
async fn run(
    command: tokio::process::Command,
    options: &HelmOptions,
    root: &Path,
    origin: &str,
    failed: impl FnOnce(String, String) -> HelmError,
) -> Result<Vec<u8>, HelmError> {
    let binary = options.binary();
    let ended = subprocess::run(command, options.limits())
        .await
        .map_err(|e| HelmError::Binary {
            binary: binary.display().to_string(),
            reason: e.to_string(),
        })?;
    let Ended::Exited {
        status,
        stdout,
        stderr,
    } = ended
    else {
        return Err(HelmError::Timeout {
            origin: origin.into(),
            timeout: options.timeout,
        });
    };
    if !status.success() {
        return Err(failed(
            origin.into(),
            subprocess::message(&stderr, root, &status),
        ));
    }
    if stdout.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(HelmError::TooLarge {
            origin: origin.into(),
            limit: MAX_OUTPUT_BYTES,
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_of_install_and_upgrade_are_ordered_and_the_others_never_applied() {
        let hook = |value: &str| serde_json::json!({"metadata": {"annotations": {HOOK_ANNOTATION: value}}});
        assert_eq!(hook_phase(&hook("pre-install")), Some(HookPhase::Before));
        assert_eq!(
            hook_phase(&hook("post-delete, pre-upgrade")),
            Some(HookPhase::Before)
        );
        assert_eq!(
            hook_phase(&hook("post-install,post-upgrade")),
            Some(HookPhase::After)
        );
        assert_eq!(hook_phase(&hook("pre-delete")), Some(HookPhase::Never));
        assert_eq!(hook_phase(&hook("post-rollback")), Some(HookPhase::Never));
        assert_eq!(hook_phase(&hook("test")), None);
        assert_eq!(hook_phase(&serde_json::json!({"metadata": {}})), None);
    }

    #[test]
    fn exact_versions_and_ranges_are_told_apart() {
        for exact in ["1.2.3", "v1.2.3", "0.1.0-rc.1", "1.0.0+build.5"] {
            assert!(is_exact(exact), "{exact}");
        }
        for range in [
            "^1.2",
            ">=1.0 <2",
            "~1.2.0",
            "1.x",
            "*",
            "",
            "1.2.3 || 2.0.0",
        ] {
            assert!(!is_exact(range), "{range}");
        }
    }

    #[test]
    fn chart_paths_and_values_files_stay_in_the_checkout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("charts/web")).expect("mkdir");
        std::fs::write(dir.path().join("outside.yaml"), "a: 1\n").expect("write");
        assert!(inside(&root, "charts/web", "chart", "o").is_ok());
        assert_eq!(
            inside(&root, "../outside.yaml", "values file", "o"),
            Err(HelmError::Escapes {
                origin: "o".into(),
                field: "values file",
                path: "../outside.yaml".into()
            })
        );
        assert_eq!(
            inside(&root, "charts/none", "chart", "o"),
            Err(HelmError::NoChart { origin: "o".into() })
        );
    }

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let credentials = RepoCredentials {
            username: Some("alice".into()),
            password: Some("hunter2-never".into()),
            ca_file: None,
        };
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2-never"),
            "{shown}"
        );
    }
}
