//! Manifests stage: walk the checked-out tree, parse YAML/JSON, validate, expand Lists, normalise.
//!
//! Pure apart from reading files under the checkout root; no cluster access. Every error names the
//! repo-relative file, the document index and, where known, `kind/namespace/name`. Messages never
//! contain values from the documents (a Secret's data must not leak into logs or status).
use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::sops::{Keys, Node, SopsError};

/// Largest manifest file read; larger files are refused rather than parsed.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest total of all manifest files in one sync.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// Deepest directory nesting (and symlink chain) followed.
const MAX_DIR_DEPTH: usize = 64;
/// Name of the gitignore-syntax file at the root of the repo that leaves files out.
pub const IGNORE_FILE: &str = ".kubesyncignore";

/// The file names Kustomize recognises as a kustomization, in the order it looks for them.
pub const KUSTOMIZATION_FILE_NAMES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The kustomization file of `dir`, if it has one.
pub fn kustomization_file(dir: &Path) -> Option<&'static str> {
    KUSTOMIZATION_FILE_NAMES
        .into_iter()
        .find(|name| dir.join(name).is_file())
}

/// When a directory is rendered with Kustomize (the directory is then left to the render step
/// instead of being walked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KustomizeMode {
    /// A directory that holds a kustomization file is rendered; others are read as plain files.
    #[default]
    Auto,
    /// Every sync path must be a kustomization; a path without one is an error.
    Always,
    /// Never rendered: kustomization files are read as plain manifests (and fail to plan).
    Never,
}

/// Where a manifest came from: repo-relative file, document index within it (empty documents not
/// counted, as kubectl counts), and the item index when it was expanded from a `List`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Origin {
    pub file: String,
    pub document: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        write!(f, ")")
    }
}

/// One Kubernetes object as written in Git, validated but not yet resolved against the cluster.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub origin: Origin,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `metadata.namespace` as written (defaulting needs discovery: see the plan stage).
    pub namespace: Option<String>,
    /// The object with server-owned fields removed.
    pub object: Value,
}

impl Manifest {
    /// The API group (empty for the core group).
    pub fn group(&self) -> &str {
        group_of(&self.api_version)
    }

    /// `Kind/namespace/name` or `Kind/name`, for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

/// The group part of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// Why a file or document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("path {path}: does not exist in the repository")]
    PathNotFound { path: String },
    #[error("path {path}: resolves outside the repository")]
    PathOutsideRepo { path: String },
    #[error("{file}: symlink points outside the repository")]
    SymlinkEscapes { file: String },
    #[error("{file}: symlink chain or directory nesting deeper than {MAX_DIR_DEPTH} (loop?)")]
    TooDeep { file: String },
    #[error("{file}: cannot be read: {reason}")]
    Unreadable { file: String, reason: String },
    #[error(
        "path {path}: no kustomization.yaml, kustomization.yml or Kustomization (Kustomize is forced on)"
    )]
    NotAKustomization { path: String },
    #[error("{file}: {size} bytes is larger than the limit of {MAX_FILE_BYTES} bytes")]
    TooLarge { file: String, size: u64 },
    #[error("manifests add up to more than {MAX_TOTAL_BYTES} bytes")]
    TotalTooLarge,
    #[error("{file}: is not UTF-8 text (binary file with a manifest extension?)")]
    NotUtf8 { file: String },
    #[error("{origin}: invalid YAML at line {line}, column {column}: {message}")]
    Yaml {
        origin: Origin,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{origin}: invalid JSON at line {line}, column {column}: {message}")]
    Json {
        origin: Origin,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: cannot decrypt: {reason}")]
    Sops {
        file: String,
        reason: crate::sops::SopsError,
    },
    #[error("{origin}: is not a Kubernetes object (the document is not a mapping)")]
    NotAMapping { origin: Origin },
    #[error("{origin}{object}: missing or empty {field}")]
    MissingField {
        origin: Origin,
        object: String,
        field: &'static str,
    },
    #[error(
        "{origin}: {kind} uses metadata.generateName; server-side apply needs a fixed metadata.name"
    )]
    GenerateName { origin: Origin, kind: String },
    #[error("{origin}: {kind}/{name}: {field} must be a string (quote it)")]
    NotAString {
        origin: Origin,
        kind: String,
        name: String,
        field: &'static str,
    },
    #[error("{origin}: {kind}/{name}: {reason}")]
    Invalid {
        origin: Origin,
        kind: String,
        name: String,
        reason: String,
    },
}

/// All problems found while loading; loading reports every problem, not only the first.
#[derive(Debug, thiserror::Error)]
#[error("{} manifest error(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct ManifestErrors(pub Vec<ManifestError>);

/// Loads every manifest under `paths` (relative to `root`, the checked-out repository).
///
/// Directories are walked recursively in name order; files ending in `.yaml`, `.yml` or `.json`
/// are read. Hidden files and directories (name starting with `.`) are skipped, as are paths that
/// match the root's `.kubesyncignore`. Symlinks are followed when they stay inside the repository.
pub fn load(root: &Path, paths: &[String]) -> Result<Vec<Manifest>, ManifestErrors> {
    load_with_keys(root, paths, &Keys::default())
}

/// [`load`], decrypting SOPS-encrypted files with `keys`. Kustomization files are read as
/// plain files ([`KustomizeMode::Never`]).
pub fn load_with_keys(
    root: &Path,
    paths: &[String],
    keys: &Keys,
) -> Result<Vec<Manifest>, ManifestErrors> {
    load_tree(root, paths, keys, KustomizeMode::Never).map(|tree| tree.manifests)
}

/// What a load found: the plain manifests, and the kustomization directories left to render.
#[derive(Debug, Default)]
pub struct Tree {
    pub manifests: Vec<Manifest>,
    /// Repo-relative directories holding a kustomization file, in walk order.
    pub kustomizations: Vec<String>,
}

/// [`load_with_keys`], leaving each directory that holds a kustomization file to Kustomize (in
/// `Auto` and `Always` modes) instead of walking it. In `Always` mode every path must be one.
pub fn load_tree(
    root: &Path,
    paths: &[String],
    keys: &Keys,
    kustomize: KustomizeMode,
) -> Result<Tree, ManifestErrors> {
    let mut loader = Loader::new(root, keys.clone(), kustomize);
    let paths: Vec<String> = if paths.is_empty() {
        vec![".".into()]
    } else {
        paths.to_vec()
    };
    for path in &paths {
        loader.load_path(path);
    }
    if loader.errors.is_empty() {
        Ok(Tree {
            manifests: loader.manifests,
            kustomizations: loader.kustomizations,
        })
    } else {
        Err(ManifestErrors(loader.errors))
    }
}

struct Loader {
    root: PathBuf,
    canonical_root: Option<PathBuf>,
    ignore: Option<ignore::gitignore::Gitignore>,
    manifests: Vec<Manifest>,
    errors: Vec<ManifestError>,
    seen_files: HashSet<PathBuf>,
    total_bytes: u64,
    keys: Keys,
    kustomize: KustomizeMode,
    kustomizations: Vec<String>,
}

impl Loader {
    fn new(root: &Path, keys: Keys, kustomize: KustomizeMode) -> Self {
        let canonical_root = root.canonicalize().ok();
        let ignore_path = root.join(IGNORE_FILE);
        let ignore = ignore_path.is_file().then(|| {
            let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
            // A malformed line is reported by `add` and skipped; the rest still applies.
            let _ = builder.add(&ignore_path);
            builder.build().ok()
        });
        Loader {
            root: root.to_path_buf(),
            canonical_root,
            ignore: ignore.flatten(),
            manifests: Vec::new(),
            errors: Vec::new(),
            seen_files: HashSet::new(),
            total_bytes: 0,
            keys,
            kustomize,
            kustomizations: Vec::new(),
        }
    }

    /// Repo-relative display path with `/` separators.
    fn relative(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let s = rel.to_string_lossy().replace('\\', "/");
        if s.is_empty() { ".".into() } else { s }
    }

    /// Canonical path if it stays inside the repository.
    fn inside(&self, path: &Path) -> Option<PathBuf> {
        let canonical = path.canonicalize().ok()?;
        let root = self.canonical_root.as_ref()?;
        canonical.starts_with(root).then_some(canonical)
    }

    fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        match &self.ignore {
            Some(gi) => {
                let rel = path.strip_prefix(&self.root).unwrap_or(path);
                gi.matched_path_or_any_parents(rel, is_dir).is_ignore()
            }
            None => false,
        }
    }

    fn load_path(&mut self, path: &str) {
        let rel = Path::new(path);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            self.errors
                .push(ManifestError::PathOutsideRepo { path: path.into() });
            return;
        }
        let full = self.root.join(rel);
        if std::fs::symlink_metadata(&full).is_err() {
            self.errors
                .push(ManifestError::PathNotFound { path: path.into() });
            return;
        }
        if self.inside(&full).is_none() {
            self.errors
                .push(ManifestError::PathOutsideRepo { path: path.into() });
            return;
        }
        let forced = self.kustomize == KustomizeMode::Always;
        if self.is_kustomization_file(&full) {
            // A kustomization file named explicitly stands for its directory (repairs name it).
            if let Some(dir) = full.parent() {
                self.take_kustomization(dir);
            }
        } else if forced && !(full.is_dir() && kustomization_file(&full).is_some()) {
            self.errors
                .push(ManifestError::NotAKustomization { path: path.into() });
        } else if full.is_dir() {
            // A directory holding a kustomization is left to Kustomize (see walk_dir).
            self.walk_dir(&full, 0);
        } else {
            // A file named explicitly is read whatever its extension.
            self.load_file(&full);
        }
    }

    fn is_kustomization_file(&self, path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str());
        self.kustomize != KustomizeMode::Never
            && name.is_some()
            && path.is_file()
            && path.parent().and_then(kustomization_file) == name
    }

    /// Leaves the directory to Kustomize, once.
    fn take_kustomization(&mut self, dir: &Path) {
        let rel = self.relative(dir);
        if let Some(canonical) = self.inside(dir)
            && self.seen_files.insert(canonical)
        {
            self.kustomizations.push(rel);
        }
    }

    fn walk_dir(&mut self, dir: &Path, depth: usize) {
        if self.kustomize != KustomizeMode::Never && kustomization_file(dir).is_some() {
            self.take_kustomization(dir);
            return;
        }
        if depth > MAX_DIR_DEPTH {
            self.errors.push(ManifestError::TooDeep {
                file: self.relative(dir),
            });
            return;
        }
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.errors.push(ManifestError::Unreadable {
                    file: self.relative(dir),
                    reason: e.kind().to_string(),
                });
                return;
            }
        };
        entries.sort();
        for entry in entries {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&entry) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let is_link = meta.file_type().is_symlink();
            if is_link && self.inside(&entry).is_none() {
                // Only report links that would have been read.
                if entry.is_dir() || has_manifest_extension(&name) || !entry.exists() {
                    self.errors.push(ManifestError::SymlinkEscapes {
                        file: self.relative(&entry),
                    });
                }
                continue;
            }
            let is_dir = entry.is_dir();
            if self.ignored(&entry, is_dir) {
                continue;
            }
            if is_dir {
                self.walk_dir(&entry, depth + 1);
            } else if has_manifest_extension(&name) {
                self.load_file(&entry);
            }
        }
    }

    fn load_file(&mut self, path: &Path) {
        let file = self.relative(path);
        let Some(canonical) = self.inside(path) else {
            self.errors.push(ManifestError::SymlinkEscapes { file });
            return;
        };
        // The same file reached twice (a symlinked directory) is read once.
        if !self.seen_files.insert(canonical.clone()) {
            return;
        }
        let size = match std::fs::metadata(&canonical) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                self.errors.push(ManifestError::Unreadable {
                    file,
                    reason: "not a regular file".into(),
                });
                return;
            }
            Err(e) => {
                self.errors.push(ManifestError::Unreadable {
                    file,
                    reason: e.kind().to_string(),
                });
                return;
            }
        };
        if size > MAX_FILE_BYTES {
            self.errors.push(ManifestError::TooLarge { file, size });
            return;
        }
        self.total_bytes += size;
        if self.total_bytes > MAX_TOTAL_BYTES {
            if !self.errors.contains(&ManifestError::TotalTooLarge) {
                self.errors.push(ManifestError::TotalTooLarge);
            }
            return;
        }
        let bytes = match std::fs::read(&canonical) {
            Ok(b) => b,
            Err(e) => {
                self.errors.push(ManifestError::Unreadable {
                    file,
                    reason: e.kind().to_string(),
                });
                return;
            }
        };
        match parse_file_with_keys(&file, &bytes, &self.keys) {
            Ok(mut manifests) => self.manifests.append(&mut manifests),
            Err(mut errors) => self.errors.append(&mut errors),
        }
    }
}

fn has_manifest_extension(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Parses one file's bytes into manifests. `file` is the repo-relative name used in errors.
pub fn parse_file(file: &str, bytes: &[u8]) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    parse_file_with_keys(file, bytes, &Keys::default())
}

/// [`parse_file`], decrypting the file with `keys` when SOPS encrypted it.
pub fn parse_file_with_keys(
    file: &str,
    bytes: &[u8],
    keys: &Keys,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    // NUL bytes are valid UTF-8 but never text.
    let Ok(text) = std::str::from_utf8(bytes)
        .map_err(|_| ())
        .and_then(|t| if t.contains('\0') { Err(()) } else { Ok(t) })
    else {
        return Err(vec![ManifestError::NotUtf8 { file: file.into() }]);
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_json = file.to_ascii_lowercase().ends_with(".json");
    let mut documents = if is_json {
        parse_json(file, text)?
    } else {
        parse_yaml(file, text)?
    };
    let sops_error = |reason| {
        vec![ManifestError::Sops {
            file: file.into(),
            reason,
        }]
    };
    if documents.iter().any(crate::sops::is_encrypted) {
        documents = decrypt(file, text, is_json, keys).map_err(sops_error)?;
    } else if documents.iter().any(crate::sops::holds_encrypted_values) {
        return Err(sops_error(SopsError::MissingMetadata));
    }
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for (index, value) in documents.into_iter().enumerate() {
        let origin = Origin {
            file: file.into(),
            document: index,
            item: None,
        };
        match to_manifests(origin, value) {
            Ok(mut m) => manifests.append(&mut m),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// The documents of a SOPS-encrypted file, parsed again with their key order (the MAC depends on
/// it), decrypted with `keys` and their MAC verified.
pub fn decrypt(
    file: &str,
    text: &str,
    is_json: bool,
    keys: &Keys,
) -> Result<Vec<Value>, SopsError> {
    let unparsable = || SopsError::Metadata(format!("{file} cannot be read as a SOPS tree"));
    let documents: Vec<Node> = if is_json {
        vec![serde_json::from_str(text).map_err(|_| unparsable())?]
    } else {
        let mut documents = Vec::new();
        for (chunk, _) in split_documents(text) {
            if chunk.trim().is_empty() || only_comments(chunk) {
                continue;
            }
            match serde_saphyr::from_str_with_options::<Option<Node>>(chunk, yaml_options()) {
                Ok(Some(Node::Null) | None) => {}
                Ok(Some(node)) => documents.push(node),
                Err(_) => return Err(unparsable()),
            }
        }
        documents
    };
    crate::sops::decrypt(documents, keys)
}

fn parse_json(file: &str, text: &str) -> Result<Vec<Value>, Vec<ManifestError>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let origin = || Origin {
        file: file.into(),
        document: 0,
        item: None,
    };
    // Duplicate keys: serde_json keeps the last value silently; refuse them as for YAML.
    if let Err(e) = serde_json::from_str::<NoDuplicateKeys>(text)
        && e.to_string().starts_with(DUPLICATE_KEY)
    {
        return Err(vec![ManifestError::Json {
            origin: origin(),
            line: e.line(),
            column: e.column(),
            message: format!("{DUPLICATE_KEY} (the second value would silently win; remove one)"),
        }]);
    }
    serde_json::from_str::<Value>(text)
        .map(|v| vec![v])
        .map_err(|e| {
            vec![ManifestError::Json {
                origin: Origin {
                    file: file.into(),
                    document: 0,
                    item: None,
                },
                line: e.line(),
                column: e.column(),
                message: json_error_class(&e),
            }]
        })
}

const DUPLICATE_KEY: &str = "duplicate mapping key";

/// Deserialises any JSON and fails on the first object with a key twice (the key is not quoted:
/// key names are not secret, but the message stays uniform with YAML's).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom(DUPLICATE_KEY));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
}

/// serde_json's messages can quote input; keep only the class of the problem.
fn json_error_class(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Syntax => "syntax error".into(),
        serde_json::error::Category::Eof => "unexpected end of file".into(),
        serde_json::error::Category::Data => "unexpected data".into(),
        serde_json::error::Category::Io => "read error".into(),
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    // Never quote the input in errors: it may be a Secret.
    options.with_snippet = false;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 128;
    budget.max_documents = 4096;
    budget.max_aliases = 10_000;
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 1_000_000;
    options.alias_limits.max_alias_expansions_per_anchor = 10_000;
    options
}

/// Splits on `---` lines, as kubectl's YAML reader does, so each document is parsed (and
/// reported) on its own; empty and null documents are skipped and not counted.
fn parse_yaml(file: &str, text: &str) -> Result<Vec<Value>, Vec<ManifestError>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    let mut chunk_start_line = 0u64;
    let mut index = 0usize;
    for (chunk, first_line) in split_documents(text) {
        chunk_start_line = chunk_start_line.max(first_line);
        if let Some((offset, version)) = unsupported_yaml_directive(chunk) {
            errors.push(ManifestError::Yaml {
                origin: Origin {
                    file: file.into(),
                    document: index,
                    item: None,
                },
                line: first_line + offset,
                column: 1,
                message: format!("unsupported %YAML {version} directive (only YAML 1.x)"),
            });
            index += 1;
            continue;
        }
        if chunk.trim().is_empty() || only_comments(chunk) {
            continue;
        }
        match serde_saphyr::from_str_with_options::<Option<Value>>(chunk, yaml_options()) {
            Ok(Some(Value::Null)) | Ok(None) => continue,
            Ok(Some(value)) => {
                documents.push(value);
                index += 1;
            }
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                errors.push(ManifestError::Yaml {
                    origin: Origin {
                        file: file.into(),
                        document: index,
                        item: None,
                    },
                    line: line + first_line,
                    column,
                    message: yaml_message(&e),
                });
                index += 1;
            }
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// A `%YAML` directive of another major version than 1, which a YAML processor must refuse
/// (the parser would read the document as 1.2 anyway): its line offset and version.
fn unsupported_yaml_directive(chunk: &str) -> Option<(u64, String)> {
    chunk.lines().enumerate().find_map(|(i, line)| {
        let version = line.strip_prefix("%YAML")?.split_whitespace().next()?;
        (version.split('.').next() != Some("1")).then(|| (i as u64, truncate(version, 16)))
    })
}

/// The parser's message without any location suffix or quoted input.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("parse error").trim();
    let first = first.split(" at line ").next().unwrap_or(first);
    // The parser suggests a code-level option; users need the reason instead.
    let first = match first.split_once(", set DuplicateKeyPolicy") {
        Some((head, _)) => format!("{head} (the second value would silently win; remove one)"),
        None => first.to_string(),
    };
    truncate(&first, 200)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

fn only_comments(chunk: &str) -> bool {
    chunk.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "..." || t.starts_with('%')
    })
}

/// Yields (document text, number of lines before it in the file).
fn split_documents(text: &str) -> Vec<(&str, u64)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u64;
    let mut offset = 0usize;
    for (line_no, line) in (0u64..).zip(text.split_inclusive('\n')) {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_separator = content == "---"
            || (content.starts_with("---") && content[3..].starts_with([' ', '\t', '#']));
        if is_separator {
            out.push((&text[start..offset], start_line));
            // Content after `--- ` on the same line belongs to the next document.
            start = offset + 3;
            start_line = line_no;
        }
        offset += line.len();
    }
    out.push((&text[start..], start_line));
    out
}

/// Validates one parsed document and expands `List` kinds.
fn to_manifests(origin: Origin, value: Value) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let Value::Object(map) = value else {
        return Err(vec![ManifestError::NotAMapping { origin }]);
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    let is_list = kind.ends_with("List") && map.get("items").is_some_and(Value::is_array);
    if !is_list {
        return validate(origin, map).map(|m| vec![m]).map_err(|e| vec![e]);
    }
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    if let Some(Value::Array(items)) = map.get("items") {
        for (i, item) in items.iter().enumerate() {
            let origin = Origin {
                item: Some(i),
                ..origin.clone()
            };
            match item {
                Value::Object(m) => match validate(origin, m.clone()) {
                    Ok(manifest) => manifests.push(manifest),
                    Err(e) => errors.push(e),
                },
                _ => errors.push(ManifestError::NotAMapping { origin }),
            }
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

fn string_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// What is wrong with a field that must be a non-empty string.
enum TextProblem {
    Missing,
    NotAString,
}

impl TextProblem {
    /// The error for `field` of the object `kind`/`name` (`?` where not known yet); `object` is
    /// how a missing field names the object.
    fn error(
        self,
        origin: &Origin,
        object: String,
        kind_name: (&str, &str),
        field: &'static str,
    ) -> ManifestError {
        let origin = origin.clone();
        match self {
            TextProblem::Missing => ManifestError::MissingField {
                origin,
                object,
                field,
            },
            TextProblem::NotAString => ManifestError::NotAString {
                origin,
                kind: kind_name.0.into(),
                name: kind_name.1.into(),
                field,
            },
        }
    }
}

fn required_text(map: &Map<String, Value>, key: &str) -> Result<String, TextProblem> {
    match string_field(map, key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(TextProblem::Missing),
        Some(_) => Err(TextProblem::NotAString),
    }
}

/// Why labels or annotations are not a mapping of strings, if they are not.
fn string_maps_problem(metadata: &Map<String, Value>) -> Option<String> {
    for key in ["labels", "annotations"] {
        match metadata.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(entries)) => {
                if let Some((k, _)) = entries.iter().find(|(_, v)| !v.is_string()) {
                    return Some(format!("metadata.{key}.{k} must be a string (quote it)"));
                }
            }
            Some(_) => return Some(format!("metadata.{key} must be a mapping")),
        }
    }
    None
}

fn validate(origin: Origin, mut map: Map<String, Value>) -> Result<Manifest, ManifestError> {
    let unknown = ("?", "?");
    let api_version = required_text(&map, "apiVersion")
        .map_err(|p| p.error(&origin, String::new(), unknown, "apiVersion"))?;
    let kind = required_text(&map, "kind")
        .map_err(|p| p.error(&origin, String::new(), unknown, "kind"))?;
    let Some(Value::Object(metadata)) = map.get_mut("metadata") else {
        return Err(TextProblem::Missing.error(
            &origin,
            format!(": {kind}"),
            unknown,
            "metadata.name",
        ));
    };
    // Even beside a name: a generated name is what the author expects, and apply never makes one.
    if metadata.contains_key("generateName") {
        return Err(ManifestError::GenerateName { origin, kind });
    }
    let name = required_text(metadata, "name")
        .map_err(|p| p.error(&origin, format!(": {kind}"), (&kind, "?"), "metadata.name"))?;
    let namespace = match string_field(metadata, "namespace") {
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        None => None,
        Some(_) => {
            let problem = TextProblem::NotAString;
            return Err(problem.error(
                &origin,
                String::new(),
                (&kind, &name),
                "metadata.namespace",
            ));
        }
    };
    if let Some(reason) = string_maps_problem(metadata) {
        return Err(ManifestError::Invalid {
            origin,
            kind,
            name,
            reason,
        });
    }
    // Server-owned fields are never sent.
    for key in crate::kube_ext::SERVER_OWNED_METADATA {
        metadata.remove(key);
    }
    map.remove("status");
    Ok(Manifest {
        origin,
        api_version,
        kind,
        name,
        namespace,
        object: Value::Object(map),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Manifest>, Vec<ManifestError>> {
        parse_file("apps/web.yaml", text.as_bytes())
    }

    #[test]
    fn multi_document_yaml_with_empty_documents() {
        let m = parse(
            "---\n# leading comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: b\n  namespace: prod\n",
        )
        .expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].kind.as_str(), m[0].name.as_str(), m[0].origin.document),
            ("ConfigMap", "a", 0)
        );
        assert_eq!(
            (
                m[1].group(),
                m[1].namespace.as_deref(),
                m[1].origin.document
            ),
            ("apps", Some("prod"), 1)
        );
        assert_eq!(m[1].describe(), "Deployment/prod/b");
    }

    #[test]
    fn lists_are_expanded_with_item_indices() {
        let m = parse(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n- {apiVersion: v1, kind: Secret, metadata: {name: why}}\n",
        )
        .expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1].origin,
            Origin {
                file: "apps/web.yaml".into(),
                document: 0,
                item: Some(1)
            }
        );
        assert_eq!(m[1].name, "why");
        assert_eq!(
            m[1].origin.to_string(),
            "apps/web.yaml (document 0, item 1)"
        );
    }

    #[test]
    fn server_owned_fields_are_stripped() {
        let m = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  uid: x\n  resourceVersion: '5'\n  creationTimestamp: null\n  managedFields: []\nstatus: {phase: x}\ndata: {k: v}\n",
        )
        .expect("valid");
        assert_eq!(
            m[0].object,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn missing_identity_fields_are_named() {
        let cases = [
            ("kind: ConfigMap\nmetadata: {name: a}\n", "apiVersion"),
            ("apiVersion: v1\nmetadata: {name: a}\n", "kind"),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                "metadata.name",
            ),
            ("apiVersion: v1\nkind: ConfigMap\n", "metadata.name"),
        ];
        for (text, field) in cases {
            let errors = parse(text).expect_err(text);
            let message = errors[0].to_string();
            assert!(message.contains(field), "{message} should name {field}");
            assert!(
                message.starts_with("apps/web.yaml (document 0)"),
                "{message}"
            );
        }
    }

    #[test]
    fn generate_name_is_refused_even_beside_a_name() {
        let errors =
            parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, generateName: a-}\n")
                .expect_err("generateName");
        assert!(
            errors[0].to_string().contains("generateName"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn json_duplicate_keys_are_refused() {
        let errors = parse_file(
            "x.json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","name":"b"}}"#,
        )
        .expect_err("duplicate");
        let message = errors[0].to_string();
        assert!(
            message.starts_with("x.json (document 0)") && message.contains("duplicate mapping key"),
            "{message}"
        );
        assert!(!message.contains("\"b\""), "no value quoted: {message}");
        parse_file("y.json", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"a":"1","b":"1"}}"#)
            .expect("distinct keys are fine");
    }

    #[test]
    fn only_yaml_1_directives_are_accepted() {
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n";
        parse(&format!("%YAML 1.2\n---\n{doc}")).expect("YAML 1.2");
        let errors = parse(&format!("%YAML 2.0\n---\n{doc}")).expect_err("YAML 2.0");
        assert!(errors[0].to_string().contains("%YAML 2.0"), "{}", errors[0]);
    }

    #[test]
    fn generate_name_is_refused() {
        let errors = parse("apiVersion: batch/v1\nkind: Job\nmetadata: {generateName: migrate-}\n")
            .expect_err("refused");
        assert!(
            matches!(errors[0], ManifestError::GenerateName { .. }),
            "{errors:?}"
        );
        assert!(errors[0].to_string().contains("generateName"));
    }

    #[test]
    fn duplicate_keys_are_refused_without_quoting_values() {
        let errors = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  password: hunter2-secret\n  password: other-secret\n",
        )
        .expect_err("duplicate key");
        let message = errors[0].to_string();
        assert!(message.contains("apps/web.yaml (document 0)"), "{message}");
        assert!(message.to_lowercase().contains("duplicate"), "{message}");
        assert!(
            !message.contains("hunter2") && !message.contains("other-secret"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_name_document_and_line() {
        let errors =
            parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nfoo: [unclosed\n")
                .expect_err("bad yaml");
        match &errors[0] {
            ManifestError::Yaml { origin, line, .. } => {
                assert_eq!(origin.document, 1);
                assert!(*line >= 4, "line {line} is in the second document");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut text = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
        );
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        let started = std::time::Instant::now();
        let errors = parse(&text).expect_err("alias bomb");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            matches!(errors[0], ManifestError::Yaml { .. }),
            "{errors:?}"
        );
    }

    #[test]
    fn non_utf8_and_non_mapping_documents() {
        let errors = parse_file("bin.yaml", &[0xff, 0xfe, 0x00, 0x41]).expect_err("binary");
        assert_eq!(
            errors,
            vec![ManifestError::NotUtf8 {
                file: "bin.yaml".into()
            }]
        );
        let errors = parse("- just\n- a list\n").expect_err("sequence");
        assert!(matches!(errors[0], ManifestError::NotAMapping { .. }));
    }

    #[test]
    fn json_files_are_read() {
        let m = parse_file(
            "x.json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}"#,
        )
        .expect("json");
        assert_eq!(m[0].name, "j");
        let errors = parse_file("x.json", br#"{"apiVersion": "v1", "#).expect_err("bad json");
        assert!(
            errors[0]
                .to_string()
                .starts_with("x.json (document 0): invalid JSON"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn non_string_labels_are_refused() {
        let errors =
            parse("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {tier: 3}\n")
                .expect_err("int label");
        assert!(
            errors[0].to_string().contains("metadata.labels.tier"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn separators_split_documents_like_kubectl() {
        let docs = split_documents("a: 1\n--- # comment\nb: 2\n---\nc: |\n  ---\n");
        assert_eq!(docs.len(), 3);
        assert!(
            docs[2].0.contains("  ---"),
            "an indented --- stays inside a block scalar"
        );
    }
}
