//! The checks made before Kustomize runs, on the whole graph of kustomizations a build reaches:
//! every local path resolves inside the repository (symlinks followed), remote bases and
//! resources only when allowed, and no plugin configuration. Kustomize's own
//! `LoadRestrictionsRootOnly` confines files to each kustomization's directory; it does not
//! confine bases (`resources: [../../x]`), which is what this adds.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::RenderError;
use super::options::kustomization_file;

/// Largest kustomization or plugin configuration file read by the check.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most kustomizations one build may reach.
const MAX_KUSTOMIZATIONS: usize = 1000;

/// Fields whose entries are files or kustomization directories.
const DIRECTORY_FIELDS: [&str; 3] = ["resources", "bases", "components"];
/// Fields whose entries are files only.
const FILE_FIELDS: [&str; 3] = ["crds", "configurations", "patchesStrategicMerge"];
/// Fields whose entries are objects with a `path`.
const PATH_OBJECT_FIELDS: [&str; 3] = ["patches", "patchesJson6902", "replacements"];
/// Fields whose entries are plugin configurations (files, directories or inline YAML).
const PLUGIN_FIELDS: [&str; 3] = ["generators", "transformers", "validators"];

/// Checks the kustomization in `dir` (repo-relative) and every kustomization it reaches.
/// Returns the local files listed as resources (canonical paths), in the order met.
pub fn check(root: &Path, dir: &str, allow_remote: bool) -> Result<Vec<PathBuf>, RenderError> {
    let canonical_root = root.canonicalize().map_err(|e| RenderError::Unreadable {
        file: ".".into(),
        reason: e.kind().to_string(),
    })?;
    let mut sandbox = Sandbox {
        root: canonical_root,
        allow_remote,
        seen: HashSet::new(),
        resource_files: Vec::new(),
    };
    let start = root.join(dir);
    let start = sandbox.inside(&start).ok_or_else(|| RenderError::Escapes {
        file: dir.into(),
        field: "path",
        reference: dir.into(),
    })?;
    sandbox.kustomization(&start)?;
    Ok(sandbox.resource_files)
}

struct Sandbox {
    root: PathBuf,
    allow_remote: bool,
    seen: HashSet<PathBuf>,
    resource_files: Vec<PathBuf>,
}

impl Sandbox {
    fn relative(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let s = rel.to_string_lossy().into_owned();
        if s.is_empty() { ".".into() } else { s }
    }

    /// Canonical path when it stays inside the repository.
    fn inside(&self, path: &Path) -> Option<PathBuf> {
        let canonical = path.canonicalize().ok()?;
        canonical.starts_with(&self.root).then_some(canonical)
    }

    /// Checks one kustomization directory (canonical) and what it reaches.
    fn kustomization(&mut self, dir: &Path) -> Result<(), RenderError> {
        if !self.seen.insert(dir.to_path_buf()) {
            return Ok(());
        }
        if self.seen.len() > MAX_KUSTOMIZATIONS {
            return Err(RenderError::Unreadable {
                file: self.relative(dir),
                reason: format!("reaches more than {MAX_KUSTOMIZATIONS} kustomizations"),
            });
        }
        // A directory without a kustomization file is Kustomize's to report.
        let Some(name) = kustomization_file(dir) else {
            return Ok(());
        };
        let path = dir.join(name);
        let file = self.relative(&path);
        let documents = read_yaml(&path, &file)?;
        let Some(kustomization) = documents.into_iter().next() else {
            return Ok(());
        };
        let at = Site { dir, file: &file };
        for field in DIRECTORY_FIELDS {
            for entry in strings(kustomization.get(field)) {
                self.resource(&at, field, entry)?;
            }
        }
        for field in FILE_FIELDS {
            for entry in strings(kustomization.get(field)) {
                // patchesStrategicMerge entries may be inline YAML.
                if !entry.contains('\n') {
                    self.local_file(&at, field, entry)?;
                }
            }
        }
        for field in PATH_OBJECT_FIELDS {
            for entry in items(kustomization.get(field)) {
                if let Some(path) = entry.get("path").and_then(Value::as_str) {
                    self.local_file(&at, field, path)?;
                }
            }
        }
        self.generator_sources(&at, &kustomization)?;
        if let Some(path) = kustomization
            .pointer("/openapi/path")
            .and_then(Value::as_str)
        {
            self.local_file(&at, "openapi", path)?;
        }
        for field in PLUGIN_FIELDS {
            for entry in strings(kustomization.get(field)) {
                self.plugin(&at, field, entry)?;
            }
            for entry in items(kustomization.get(field)) {
                if entry.is_object() {
                    refuse_plugin(&file, field, entry)?;
                }
            }
        }
        Ok(())
    }

    /// The files of `configMapGenerator` and `secretGenerator` (`files` may be `key=path`).
    fn generator_sources(&mut self, at: &Site, kustomization: &Value) -> Result<(), RenderError> {
        for field in ["configMapGenerator", "secretGenerator"] {
            for generator in items(kustomization.get(field)) {
                for entry in strings(generator.get("files")) {
                    let path = entry.split_once('=').map(|(_, p)| p).unwrap_or(entry);
                    self.local_file(at, field, path)?;
                }
                for entry in strings(generator.get("envs")) {
                    self.local_file(at, field, entry)?;
                }
                if let Some(env) = generator.get("env").and_then(Value::as_str) {
                    self.local_file(at, field, env)?;
                }
            }
        }
        Ok(())
    }

    /// A resource, base or component: a remote URL, a local file or a kustomization directory.
    fn resource(&mut self, at: &Site, field: &'static str, entry: &str) -> Result<(), RenderError> {
        let local = at.dir.join(entry);
        if looks_remote(entry) || std::fs::symlink_metadata(&local).is_err() {
            return match (looks_remote(entry), self.allow_remote) {
                (true, true) => Ok(()),
                (true, false) => Err(at.error_remote(field, entry)),
                // Kustomize would try a missing local path as a remote one.
                (false, true) => Ok(()),
                (false, false) => Err(at.error_not_found(field, entry)),
            };
        }
        let canonical = self
            .inside(&local)
            .ok_or_else(|| at.error_escapes(field, entry))?;
        if canonical.is_dir() {
            self.kustomization(&canonical)?;
        } else if !self.resource_files.contains(&canonical) {
            self.resource_files.push(canonical);
        }
        Ok(())
    }

    /// A path that must be a file inside the repository (Kustomize reports a missing one).
    fn local_file(&self, at: &Site, field: &'static str, entry: &str) -> Result<(), RenderError> {
        if looks_remote(entry) {
            return Err(match self.allow_remote {
                true => at.error_escapes(field, entry),
                false => at.error_remote(field, entry),
            });
        }
        let local = at.dir.join(entry);
        if std::fs::symlink_metadata(&local).is_err() {
            return Ok(());
        }
        self.inside(&local)
            .map(|_| ())
            .ok_or_else(|| at.error_escapes(field, entry))
    }

    /// A plugin configuration: a file or directory of them, or inline YAML.
    fn plugin(&mut self, at: &Site, field: &'static str, entry: &str) -> Result<(), RenderError> {
        let local = at.dir.join(entry);
        if entry.contains('\n') || std::fs::symlink_metadata(&local).is_err() {
            let documents = parse_yaml(entry, at.file)?;
            return documents
                .iter()
                .try_for_each(|doc| refuse_plugin(at.file, field, doc));
        }
        let canonical = self
            .inside(&local)
            .ok_or_else(|| at.error_escapes(field, entry))?;
        if canonical.is_dir() {
            return self.kustomization(&canonical);
        }
        let file = self.relative(&canonical);
        read_yaml(&canonical, &file)?
            .iter()
            .try_for_each(|doc| refuse_plugin(at.file, field, doc))
    }
}

/// Where an entry was written: the kustomization's directory and its file (repo-relative).
struct Site<'a> {
    dir: &'a Path,
    file: &'a str,
}

impl Site<'_> {
    fn error_remote(&self, field: &'static str, reference: &str) -> RenderError {
        RenderError::RemoteRefused {
            file: self.file.into(),
            field,
            reference: reference.into(),
        }
    }

    fn error_escapes(&self, field: &'static str, reference: &str) -> RenderError {
        RenderError::Escapes {
            file: self.file.into(),
            field,
            reference: reference.into(),
        }
    }

    fn error_not_found(&self, field: &'static str, reference: &str) -> RenderError {
        RenderError::NotFound {
            file: self.file.into(),
            field,
            reference: reference.into(),
        }
    }
}

/// Only Kustomize's built-in generators and transformers (`apiVersion: builtin`) are allowed;
/// anything else would be an exec, container or Go plugin.
fn refuse_plugin(file: &str, field: &'static str, config: &Value) -> Result<(), RenderError> {
    let api_version = config.get("apiVersion").and_then(Value::as_str);
    let function = ["config.kubernetes.io/function", "config.k8s.io/function"]
        .iter()
        .any(|key| {
            config
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(*key))
                .is_some()
        });
    if api_version == Some("builtin") && !function {
        return Ok(());
    }
    let kind = config.get("kind").and_then(Value::as_str).unwrap_or("?");
    Err(RenderError::Plugin {
        file: file.into(),
        field,
        kind: format!("{}/{kind}", api_version.unwrap_or("?")),
    })
}

/// A Git or HTTP reference, as Kustomize recognises remote bases and resources.
pub(super) fn looks_remote(entry: &str) -> bool {
    let lower = entry.to_ascii_lowercase();
    lower.contains("://")
        || lower.starts_with("git@")
        || lower.starts_with("github.com/")
        || lower.starts_with("gitlab.com/")
        || lower.starts_with("bitbucket.org/")
        || lower.contains("?ref=")
        || lower.contains(".git//")
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    items(value).filter_map(Value::as_str)
}

fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

fn read_yaml(path: &Path, file: &str) -> Result<Vec<Value>, RenderError> {
    let unreadable = |reason: String| RenderError::Unreadable {
        file: file.into(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| unreadable(e.kind().to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(unreadable(format!(
            "{size} bytes is larger than {MAX_FILE_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.kind().to_string()))?;
    parse_yaml(&text, file)
}

fn parse_yaml(text: &str, file: &str) -> Result<Vec<Value>, RenderError> {
    serde_saphyr::from_multiple::<Value>(text).map_err(|e| RenderError::Yaml {
        file: file.into(),
        message: first_line(&e.to_string()),
    })
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "base/kustomization.yaml",
            "resources: [app.yaml]\n",
        );
        write(dir.path(), "base/app.yaml", "kind: ConfigMap\n");
        dir
    }

    #[test]
    fn a_base_inside_the_repository_passes() {
        let dir = repo();
        write(
            dir.path(),
            "overlays/home/kustomization.yaml",
            "resources: [../../base]\npatches: [{path: p.yaml}]\nconfigMapGenerator: [{name: c, files: [k=c.txt]}]\n",
        );
        let files = check(dir.path(), "overlays/home", false).expect("inside");
        let base = dir
            .path()
            .join("base/app.yaml")
            .canonicalize()
            .expect("canonical");
        assert_eq!(files, vec![base], "the resource files it reached");
    }

    #[test]
    fn a_base_outside_the_repository_is_refused() {
        let outer = tempfile::tempdir().expect("tempdir");
        write(outer.path(), "secret/kustomization.yaml", "resources: []\n");
        let root = outer.path().join("repo");
        write(
            &root,
            "app/kustomization.yaml",
            "resources: [../../secret]\n",
        );
        let err = check(&root, "app", false).expect_err("escape");
        assert_eq!(
            err.to_string(),
            "app/kustomization.yaml: resources ../../secret: resolves outside the repository"
        );
    }

    #[test]
    fn a_symlink_out_of_the_repository_is_refused() {
        let outer = tempfile::tempdir().expect("tempdir");
        write(outer.path(), "passwd", "x");
        let root = outer.path().join("repo");
        write(
            &root,
            "app/kustomization.yaml",
            "configMapGenerator: [{name: c, files: [link]}]\n",
        );
        std::os::unix::fs::symlink(outer.path().join("passwd"), root.join("app/link"))
            .expect("symlink");
        let err = check(&root, "app", false).expect_err("escape");
        assert!(
            matches!(
                err,
                RenderError::Escapes {
                    field: "configMapGenerator",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn remote_bases_need_permission() {
        let dir = repo();
        let remote = "https://example.invalid/base.yaml";
        write(
            dir.path(),
            "app/kustomization.yaml",
            &format!("resources: [../base, {remote}]\n"),
        );
        let err = check(dir.path(), "app", false).expect_err("remote");
        assert!(
            matches!(&err, RenderError::RemoteRefused { reference, .. } if reference == remote)
        );
        check(dir.path(), "app", true).expect("allowed");
        // The check also follows the base in ../base, which is local.
        assert!(looks_remote("github.com/org/repo//deploy?ref=v1"));
        assert!(!looks_remote("../base"));
    }

    #[test]
    fn plugins_are_refused_and_builtins_pass() {
        let dir = repo();
        write(
            dir.path(),
            "app/kustomization.yaml",
            "transformers: [t.yaml]\ngenerators:\n- |\n  apiVersion: builtin\n  kind: ConfigMapGenerator\n  metadata: {name: x}\n",
        );
        write(
            dir.path(),
            "app/t.yaml",
            "apiVersion: example.com/v1\nkind: Sed\nmetadata:\n  name: s\n  annotations:\n    config.kubernetes.io/function: |\n      exec: {path: /bin/sh}\n",
        );
        let err = check(dir.path(), "app", false).expect_err("plugin");
        assert_eq!(
            err.to_string(),
            "app/kustomization.yaml: transformers: example.com/v1/Sed is a Kustomize plugin; kubesync runs no exec, container or Go plugins"
        );
        write(
            dir.path(),
            "app/t.yaml",
            "apiVersion: builtin\nkind: LabelTransformer\nmetadata: {name: l}\n",
        );
        check(dir.path(), "app", false).expect("builtin");
    }

    #[test]
    fn a_missing_local_base_is_named() {
        let dir = repo();
        write(
            dir.path(),
            "app/kustomization.yaml",
            "resources: [../nowhere]\n",
        );
        let err = check(dir.path(), "app", false).expect_err("missing");
        assert!(matches!(err, RenderError::NotFound { .. }), "{err}");
    }
}
