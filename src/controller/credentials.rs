//! What a GitSync syncs with: the Git credentials of its Secret, written to private files for
//! libgit2, and the client of its ServiceAccount. Secret values never reach a message.
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};

use super::context::Context;
use crate::crd::{GitSync, ValuesKind};
use crate::sops::Keys;
use crate::source::Auth;
use crate::sync::Clients;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading Secret {namespace}/{name}: {}", crate::kube_ext::kube_message(.source))]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} (spec.secretRef) does not exist")]
    Missing { namespace: String, name: String },
    #[error("Secret {namespace}/{name}: key {key} is not UTF-8")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name} (spec.decryption.secretRef) has no key ending in .agekey")]
    NoAgeKeys { namespace: String, name: String },
    #[error("Secret {namespace}/{name}: key {key}: {source}")]
    AgeKey {
        namespace: String,
        name: String,
        key: String,
        #[source]
        source: crate::sops::KeyError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Secret {namespace}/{name} (spec.kubeConfig.secretRef) has no key {key}")]
    NoKubeconfig {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name}: key {key} (spec.kubeConfig.secretRef) {problem}")]
    Kubeconfig {
        namespace: String,
        name: String,
        key: String,
        problem: Box<super::remote::KubeconfigProblem>,
    },
    #[error("reading ConfigMap {namespace}/{name}: {}", crate::kube_ext::kube_message(.source))]
    ReadConfigMap {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {namespace}/{name} (spec.helm.valuesFrom) has no key {key}")]
    NoValuesKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{kind} {namespace}/{name}: key {key} (spec.helm.valuesFrom) is not a YAML mapping")]
    BadValues {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("building a client for {user}: {source}")]
    Client {
        user: String,
        #[source]
        source: kube::Error,
    },
}

/// The clients of a GitSync's sync: `apply` is its ServiceAccount's (see [`impersonating`]);
/// `parent` writes the ApplySet parent, with the controller's own identity, in the cluster the
/// objects go to: this one, or the one of `spec.kubeConfig`.
pub async fn clients(ctx: &Context, sync: &GitSync) -> Result<Clients, CredentialsError> {
    let Some(remote) = &sync.spec.kube_config else {
        let apply = impersonating(ctx, sync, &ctx.kube_config, "")?;
        let parent = ctx.client.clone();
        return Ok(Clients { apply, parent });
    };
    let namespace = sync.namespace().unwrap_or_default();
    let name = &remote.secret_ref.name;
    let key = (remote.secret_ref.key.as_deref()).unwrap_or(super::remote::DEFAULT_KEY);
    let secret = SecretData::read(ctx, &namespace, name).await?;
    let text = (secret.text(key)?).ok_or_else(|| CredentialsError::NoKubeconfig {
        namespace: namespace.clone(),
        name: name.clone(),
        key: key.into(),
    })?;
    // Cached by the kubeconfig's content, so a rotated Secret gets a new client.
    let cache_key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        format!("kubeconfig {namespace}/{name}/{key} {:x}", hasher.finish())
    };
    let problem = |problem| CredentialsError::Kubeconfig {
        namespace: namespace.clone(),
        name: name.clone(),
        key: key.into(),
        problem: Box::new(problem),
    };
    let config = match ctx.cached_config(&cache_key) {
        Some(config) => config,
        None => {
            let kubeconfig = super::remote::parse(&text).map_err(problem)?;
            let config = super::remote::config(kubeconfig).await.map_err(problem)?;
            ctx.cache_config(&cache_key, &config);
            config
        }
    };
    let parent = ctx.client_for(&format!("{cache_key} as itself"), || {
        Client::try_from(config.clone())
    });
    let user = format!("the kubeconfig of Secret {namespace}/{name}");
    let parent = parent.map_err(|source| CredentialsError::Client { user, source })?;
    let apply = impersonating(ctx, sync, &config, &cache_key)?;
    Ok(Clients { apply, parent })
}

/// A client of `base` that impersonates the GitSync's ServiceAccount
/// (`system:serviceaccount:<namespace>:<name>`), if it names one or the tenancy lockdown gives
/// it the default one; else `base`'s own. Cached under `cluster` (empty: this cluster).
fn impersonating(
    ctx: &Context,
    sync: &GitSync,
    base: &kube::Config,
    cluster: &str,
) -> Result<Client, CredentialsError> {
    let Some(service_account) = ctx.config.tenancy.service_account(sync) else {
        if cluster.is_empty() {
            return Ok(ctx.client.clone());
        }
        let client = ctx.client_for(&format!("{cluster} as itself"), || {
            Client::try_from(base.clone())
        });
        let user = "the remote cluster's kubeconfig user".to_string();
        return client.map_err(|source| CredentialsError::Client { user, source });
    };
    let namespace = sync.namespace().unwrap_or_default();
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    ctx.client_for(&format!("{cluster} {user}"), || {
        let mut config = base.clone();
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ]);
        Client::try_from(config)
    })
    .map_err(|source| CredentialsError::Client {
        user: user.clone(),
        source,
    })
}

/// Reads the GitSync's Secret and writes the SSH key and known_hosts it holds to private files
/// under `work_dir` (libgit2 takes them as paths).
pub async fn git_auth(
    ctx: &Context,
    sync: &GitSync,
    work_dir: &Path,
) -> Result<Auth, CredentialsError> {
    let mut auth = Auth {
        known_hosts: ctx.config.known_hosts.clone(),
        ..Default::default()
    };
    let Some(secret_ref) = &sync.spec.secret_ref else {
        return Ok(auth);
    };
    let secret =
        SecretData::read(ctx, &sync.namespace().unwrap_or_default(), &secret_ref.name).await?;
    let dir = work_dir.join("credentials");
    if let Some(identity) = secret.text("identity")? {
        auth.ssh_key = Some(write_private(&dir, "identity", &identity)?);
    }
    if let Some(known_hosts) = secret.text("known_hosts")? {
        auth.known_hosts = Some(write_private(&dir, "known_hosts", &known_hosts)?);
    }
    auth.ssh_passphrase = secret.text("passphrase")?;
    auth.username = secret.text("username")?;
    auth.password =
        (secret.text("password")?).map(|p| p.trim_end_matches(['\r', '\n']).to_string());
    Ok(auth)
}

/// The age keys of the GitSync's `spec.decryption` Secret: every key whose name ends in
/// `.agekey` (as Flux reads them), each holding one or more age secret keys.
pub async fn age_keys(ctx: &Context, sync: &GitSync) -> Result<Keys, CredentialsError> {
    let Some(decryption) = &sync.spec.decryption else {
        return Ok(Keys::default());
    };
    let namespace = sync.namespace().unwrap_or_default();
    let secret = SecretData::read(ctx, &namespace, &decryption.secret_ref.name).await?;
    let mut keys = Keys::default();
    let names: Vec<String> = (secret.data.keys())
        .filter(|k| k.ends_with(".agekey"))
        .cloned()
        .collect();
    for key in &names {
        let text = secret.text(key)?.unwrap_or_default();
        keys.extend(
            Keys::parse(&text).map_err(|source| CredentialsError::AgeKey {
                namespace: namespace.clone(),
                name: secret.name.clone(),
                key: key.clone(),
                source,
            })?,
        );
    }
    if keys.is_empty() {
        return Err(CredentialsError::NoAgeKeys {
            namespace,
            name: secret.name,
        });
    }
    Ok(keys)
}

/// The credentials of the GitSync's Helm repository or registry (`spec.helm.secretRef`):
/// `username`, `password`, and `ca.crt` written to a private file for helm.
pub async fn helm_credentials(
    ctx: &Context,
    sync: &GitSync,
    work_dir: &Path,
) -> Result<crate::helm::RepoCredentials, CredentialsError> {
    let mut credentials = crate::helm::RepoCredentials::default();
    let Some(secret_ref) = (sync.spec.helm.as_ref()).and_then(|h| h.secret_ref.as_ref()) else {
        return Ok(credentials);
    };
    let namespace = sync.namespace().unwrap_or_default();
    let secret = SecretData::read(ctx, &namespace, &secret_ref.name).await?;
    credentials.username = secret.text("username")?;
    credentials.password =
        (secret.text("password")?).map(|p| p.trim_end_matches(['\r', '\n']).to_string());
    if let Some(ca) = secret.text("ca.crt")? {
        let dir = work_dir.join("credentials");
        credentials.ca_file = Some(write_private(&dir, "helm-ca.crt", &ca)?);
    }
    Ok(credentials)
}

/// `spec.helm.valuesFrom`, each written to a private file under `work_dir` for helm, in order.
/// A missing object or key fails the sync unless marked optional; its content is never in a
/// message.
pub async fn helm_values_from(
    ctx: &Context,
    sync: &GitSync,
    work_dir: &Path,
) -> Result<Vec<PathBuf>, CredentialsError> {
    let Some(helm) = &sync.spec.helm else {
        return Ok(Vec::new());
    };
    let namespace = sync.namespace().unwrap_or_default();
    let dir = work_dir.join("credentials");
    let mut files = Vec::new();
    for (i, reference) in helm.values_from.iter().enumerate() {
        let key = reference.values_key.as_deref().unwrap_or("values.yaml");
        let (kind, text) = match reference.kind {
            ValuesKind::Secret => (
                "Secret",
                secret_values(ctx, &namespace, &reference.name, key).await,
            ),
            ValuesKind::ConfigMap => (
                "ConfigMap",
                config_map_values(ctx, &namespace, &reference.name, key).await,
            ),
        };
        let Some(text) = text? else {
            if reference.optional {
                continue;
            }
            return Err(CredentialsError::NoValuesKey {
                kind,
                namespace: namespace.clone(),
                name: reference.name.clone(),
                key: key.into(),
            });
        };
        let parsed: Result<serde_json::Value, _> = serde_saphyr::from_str(&text);
        if !matches!(
            parsed,
            Ok(serde_json::Value::Object(_) | serde_json::Value::Null)
        ) {
            return Err(CredentialsError::BadValues {
                kind,
                namespace: namespace.clone(),
                name: reference.name.clone(),
                key: key.into(),
            });
        }
        files.push(write_private(
            &dir,
            &format!("helm-values-{i}.yaml"),
            &text,
        )?);
    }
    Ok(files)
}

/// A Secret's key as text; None when the Secret or the key does not exist.
async fn secret_values(
    ctx: &Context,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>, CredentialsError> {
    match SecretData::read(ctx, namespace, name).await {
        Ok(secret) => secret.text(key),
        Err(CredentialsError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A ConfigMap's key; None when the ConfigMap or the key does not exist.
async fn config_map_values(
    ctx: &Context,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>, CredentialsError> {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let found =
        (config_maps.get_opt(name).await).map_err(|source| CredentialsError::ReadConfigMap {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    Ok(found.and_then(|c| c.data?.get(key).cloned()))
}

/// The data of a Secret, with its name for messages.
pub(super) struct SecretData {
    namespace: String,
    name: String,
    data: std::collections::BTreeMap<String, k8s_openapi::ByteString>,
}

impl SecretData {
    pub(super) async fn read(
        ctx: &Context,
        namespace: &str,
        name: &str,
    ) -> Result<Self, CredentialsError> {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let found = secrets
            .get_opt(name)
            .await
            .map_err(|source| CredentialsError::Read {
                namespace: namespace.into(),
                name: name.into(),
                source,
            })?;
        let secret = found.ok_or_else(|| CredentialsError::Missing {
            namespace: namespace.into(),
            name: name.into(),
        })?;
        Ok(SecretData {
            namespace: namespace.into(),
            name: name.into(),
            data: secret.data.unwrap_or_default(),
        })
    }

    /// The value of `key` as text, if the Secret has it.
    pub(super) fn text(&self, key: &str) -> Result<Option<String>, CredentialsError> {
        let Some(value) = self.data.get(key) else {
            return Ok(None);
        };
        String::from_utf8(value.0.clone())
            .map(Some)
            .map_err(|_| CredentialsError::NotText {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                key: key.into(),
            })
    }
}

/// Writes `content` (newline-terminated) to `dir/file`, readable by this user only.
fn write_private(dir: &Path, file: &str, content: &str) -> Result<PathBuf, CredentialsError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CredentialsError::Write { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed(dir))?;
    let path = dir.join(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(failed(&path))?;
    let mut content = content.to_string();
    if !content.ends_with('\n') {
        content.push('\n');
    }
    f.write_all(content.as_bytes()).map_err(failed(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = dir.path().join("credentials");
        let path = write_private(&credentials, "identity", "key").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "key\n");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&credentials), 0o700);
    }
}
