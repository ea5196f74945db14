//! Command-line interface. Every flag is a clap derive field; most have an environment fallback.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::api::PropagationPolicy;

use crate::apply::ApplyOptions;
use crate::drift::DriftPolicy;
use crate::duration::parse_duration;
use crate::kustomize::{KustomizeMode, KustomizeOptions};
use crate::sops::Keys;
use crate::source::{Auth, GitRef, SourceError, SourceSpec};
use crate::sync::{Action, Clients, PrunePolicy, SyncOptions, SyncReport, Target};
use crate::telemetry::LogFormat;

/// kubesync keeps a Kubernetes cluster in step with manifests in Git, using server-side apply and
/// ApplySet-style pruning.
#[derive(Debug, Parser)]
#[command(name = "kubesync", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "KUBESYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the manifests of a repository or directory to the cluster, then prune what left Git.
    Sync(SyncArgs),
    /// Show what a sync would change (server-side dry run). Exit 0: in sync, 1: differences, 2: error.
    Diff(DiffArgs),
    /// Print the objects exactly as a sync would apply them, as YAML.
    Render(RenderArgs),
    /// Run in the cluster: sync every GitSync, serve metrics, probes, webhooks and the status page.
    Controller(ControllerArgs),
    /// Print the GitSync CustomResourceDefinition as YAML.
    Crd,
    /// Print the version and exit.
    Version,
}

/// Where the manifests come from and which cluster they go to.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Git URL (https://, ssh://, git@host:path, git://, file://) or a local directory.
    #[arg(long, env = "KUBESYNC_REPO")]
    pub repo: String,
    /// Branch, tag (refs/tags/NAME) or commit to sync.
    #[arg(long = "ref", env = "KUBESYNC_REF", default_value = "main")]
    pub reference: String,
    /// Directory or file inside the repository; repeat for several. Default: the whole repository.
    #[arg(long = "path", env = "KUBESYNC_PATH", value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Name of this sync; the ApplySet parent is a Secret of this name in --namespace.
    #[arg(long, env = "KUBESYNC_NAME")]
    pub name: String,
    /// --name names a GitSync in --namespace, and its ApplySet is used (the GitSync is the
    /// parent): `diff` then shows what that GitSync's controller would do.
    #[arg(long, env = "KUBESYNC_GITSYNC")]
    pub gitsync: bool,
    /// Namespace for objects that set none, and of the ApplySet parent. Default: the kubeconfig's.
    #[arg(long, short = 'n', env = "KUBESYNC_NAMESPACE")]
    pub namespace: Option<String>,
    /// SSH private key for ssh:// and git@host:path URLs.
    #[arg(long, env = "KUBESYNC_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,
    /// File holding the SSH key's passphrase.
    #[arg(long, env = "KUBESYNC_SSH_PASSPHRASE_FILE")]
    pub ssh_passphrase_file: Option<PathBuf>,
    /// known_hosts file: SSH host keys are always verified against it.
    #[arg(long, env = "KUBESYNC_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Username for HTTPS.
    #[arg(long, env = "KUBESYNC_USERNAME")]
    pub username: Option<String>,
    /// File holding the HTTPS password or token.
    #[arg(long, env = "KUBESYNC_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// File of age secret keys (as `age-keygen` writes them) for SOPS-encrypted manifests. The
    /// keys in $SOPS_AGE_KEY are used too.
    #[arg(long, env = "SOPS_AGE_KEY_FILE")]
    pub age_key_file: Option<PathBuf>,
    /// Time limit for fetching the repository.
    #[arg(long, env = "KUBESYNC_FETCH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub fetch_timeout: Duration,
    /// Where fetched repositories (and Kustomize renders) are cached.
    #[arg(long, env = "KUBESYNC_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Render directories that hold a kustomization file with Kustomize (`auto`), every path
    /// (`always`), or none (`never`).
    #[arg(long, env = "KUBESYNC_KUSTOMIZE", value_enum, default_value_t = KustomizeMode::Auto)]
    pub kustomize: KustomizeMode,
    /// Let kustomizations fetch remote bases and resources (Git or HTTP URLs).
    #[arg(long)]
    pub kustomize_allow_remote_bases: bool,
    /// The `kustomize` executable (default: the one beside kubesync, then $PATH).
    #[arg(long, env = "KUBESYNC_KUSTOMIZE_BINARY")]
    pub kustomize_binary: Option<PathBuf>,
    /// Render this Helm chart instead of reading --path: a directory of the repository, or with
    /// --helm-repo the chart's name there.
    #[arg(long, env = "KUBESYNC_HELM_CHART")]
    pub helm_chart: Option<String>,
    /// The chart's HTTP(S) Helm repository or OCI registry (`oci://host/path`).
    #[arg(long, env = "KUBESYNC_HELM_REPO", requires = "helm_chart")]
    pub helm_repo: Option<String>,
    /// The chart's version or semver range (`^1.2`); default: the latest. With --helm-repo.
    #[arg(long, env = "KUBESYNC_HELM_VERSION", requires = "helm_repo")]
    pub helm_version: Option<String>,
    /// Helm release name. Default: --name.
    #[arg(long, env = "KUBESYNC_HELM_RELEASE", requires = "helm_chart")]
    pub helm_release: Option<String>,
    /// Values file in the repository (repeat the flag; later files win).
    #[arg(long = "helm-values", requires = "helm_chart")]
    pub helm_values: Vec<String>,
    /// Username for the chart repository or registry.
    #[arg(long, env = "KUBESYNC_HELM_USERNAME", requires = "helm_repo")]
    pub helm_username: Option<String>,
    /// File holding the chart repository's or registry's password.
    #[arg(long, env = "KUBESYNC_HELM_PASSWORD_FILE", requires = "helm_repo")]
    pub helm_password_file: Option<PathBuf>,
    /// CA certificate (PEM) of the chart repository or registry.
    #[arg(long, env = "KUBESYNC_HELM_CA_FILE", requires = "helm_repo")]
    pub helm_ca_file: Option<PathBuf>,
    /// The `helm` executable (default: the one beside kubesync, then $PATH).
    #[arg(long, env = "KUBESYNC_HELM_BINARY")]
    pub helm_binary: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Which cluster: a kubeconfig and its context.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context.
    #[arg(long, env = "KUBESYNC_CONTEXT")]
    pub context: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub apply: ApplyArgs,
    #[command(flatten)]
    pub prune_args: PruneArgs,
    /// Delete objects that left Git (the default).
    #[arg(long, overrides_with = "no_prune")]
    pub prune: bool,
    /// Do not delete anything.
    #[arg(long)]
    pub no_prune: bool,
    /// Send everything as a server-side dry run; nothing changes.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until applied objects are healthy (rollouts done, Jobs complete), and fail if they are not.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Field manager for server-side apply.
    #[arg(long, env = "KUBESYNC_FIELD_MANAGER", default_value = crate::FIELD_MANAGER)]
    pub field_manager: String,
    /// Take over fields other managers own (Git wins). With false, conflicts fail and name the manager.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub force_conflicts: bool,
    /// Requests in flight at once within one apply stage, and deletes within one prune stage.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// An object Git did not change but the cluster did: apply Git again (`correct`), or leave
    /// it and report the fields that differ (`report`).
    #[arg(long, env = "KUBESYNC_DRIFT", value_enum, default_value_t = DriftPolicy::Correct)]
    pub drift: DriftPolicy,
}

impl From<&ApplyArgs> for ApplyOptions {
    fn from(args: &ApplyArgs) -> ApplyOptions {
        ApplyOptions {
            field_manager: args.field_manager.clone(),
            force_conflicts: args.force_conflicts,
            concurrency: args.concurrency.max(1),
            drift: args.drift,
            ..ApplyOptions::default()
        }
    }
}

/// The guards and reach of a prune.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Refuse to prune more objects than this (default: 25 % of managed objects, at least 10).
    #[arg(long)]
    pub max_prune: Option<usize>,
    /// Allow a prune when the source holds no objects at all.
    #[arg(long)]
    pub allow_empty: bool,
    /// Also prune Namespaces, PersistentVolumeClaims, PersistentVolumes and CRDs.
    #[arg(long)]
    pub prune_data: bool,
    /// How dependents of pruned objects are deleted.
    #[arg(long, value_enum, default_value_t = Propagation::Background)]
    pub prune_propagation: Propagation,
}

impl From<&PruneArgs> for PrunePolicy {
    fn from(args: &PruneArgs) -> PrunePolicy {
        PrunePolicy {
            enabled: true,
            max: args.max_prune,
            allow_empty: args.allow_empty,
            prune_data: args.prune_data,
            propagation: match args.prune_propagation {
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Foreground => PropagationPolicy::Foreground,
            },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub apply: ApplyArgs,
    #[command(flatten)]
    pub prune_args: PruneArgs,
    /// Leave out objects that a sync would prune.
    #[arg(long)]
    pub no_prune: bool,
    /// `text`: unified diffs; `markdown`: a summary for a pull request comment (objects to
    /// create, change and prune with their fields, then the diffs, folded and truncated).
    #[arg(long, short = 'o', value_enum, default_value_t = DiffFormat::Text)]
    pub output: DiffFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Text,
    Markdown,
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print Secret values; by default they are shown as `***`.
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Address of the HTTP listener (metrics, probes, webhooks, status page).
    #[arg(long, env = "KUBESYNC_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Watch GitSyncs in this namespace only. Default: all namespaces.
    #[arg(long, env = "KUBESYNC_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Where fetched repositories are cached (an emptyDir in the chart).
    #[arg(long, env = "KUBESYNC_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The `kustomize` executable (default: the one beside kubesync, then $PATH).
    #[arg(long, env = "KUBESYNC_KUSTOMIZE_BINARY")]
    pub kustomize_binary: Option<PathBuf>,
    /// The `helm` executable GitSyncs with spec.helm render with (default: the one beside
    /// kubesync, then $PATH).
    #[arg(long, env = "KUBESYNC_HELM_BINARY")]
    pub helm_binary: Option<PathBuf>,
    /// known_hosts used for SSH remotes whose Secret has no `known_hosts` key.
    #[arg(long, env = "KUBESYNC_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Field manager for server-side apply.
    #[arg(long, env = "KUBESYNC_FIELD_MANAGER", default_value = crate::FIELD_MANAGER)]
    pub field_manager: String,
    /// GitSyncs synced at the same time.
    #[arg(long, env = "KUBESYNC_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// While the watches on a GitSync's objects see no drift and its revision does not move,
    /// only one interval in this many runs a full sync (list and apply everything); the others
    /// fetch and stop there. 1: every interval is a full sync.
    #[arg(long, env = "KUBESYNC_FULL_SYNC_EVERY", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub full_sync_every: u32,
    /// Tenancy lockdown: GitSyncs that name no serviceAccountName impersonate this
    /// ServiceAccount of their own namespace (outside the trusted namespaces).
    #[arg(long, env = "KUBESYNC_DEFAULT_SERVICE_ACCOUNT")]
    pub default_service_account: Option<String>,
    /// Tenancy lockdown: outside the trusted namespaces, a GitSync's dependsOn and
    /// targetNamespace must be in its own namespace, and so must every object it applies
    /// (cluster-scoped objects are refused).
    #[arg(long, env = "KUBESYNC_NO_CROSS_NAMESPACE_REFS")]
    pub no_cross_namespace_refs: bool,
    /// Namespaces (repeat the flag or separate with commas) whose GitSyncs the lockdown does not
    /// restrict: the cluster admin's, synced with the controller's own rights.
    #[arg(
        long = "trusted-namespace",
        env = "KUBESYNC_TRUSTED_NAMESPACES",
        value_delimiter = ','
    )]
    pub trusted_namespaces: Vec<String>,
    /// Split the GitSyncs into this many shards, one Lease (`<lease-name>-shard-<i>`) each: every
    /// replica syncs the GitSyncs of the shards it holds, takes a dead replica's shards after one
    /// lease duration, and hands shards over when replicas join. The label
    /// `kubesync.dev/shard: "<i>"` pins a GitSync to a shard. Instead of --leader-election.
    #[arg(long, env = "KUBESYNC_SHARDS", conflicts_with = "leader_election", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// A receiver of notifications for every GitSync that names none in spec.notify (repeat the
    /// flag): `provider=<generic|slack|discord|matrix|ntfy|gotify>,secret=<name>` and optionally
    /// `,events=failed+recovered+…`; the Secret is in the controller's namespace.
    #[arg(long = "notify", env = "KUBESYNC_NOTIFY", value_delimiter = ';')]
    pub notify: Vec<crate::controller::DefaultReceiver>,
    /// A problem that lasts (the same failure every interval) is told again after this long;
    /// 0s: only once.
    #[arg(long, env = "KUBESYNC_NOTIFY_REMINDER", default_value = "24h", value_parser = parse_duration)]
    pub notify_reminder: Duration,
    /// Where people reach the status page: linked from notifications and commit statuses.
    #[arg(long, env = "KUBESYNC_STATUS_PAGE_URL")]
    pub status_page_url: Option<String>,
    /// Elect a leader with a Lease, so that of several replicas only one syncs.
    #[arg(long, env = "KUBESYNC_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "KUBESYNC_LEASE_NAME", default_value = "kubesync")]
    pub lease_name: String,
    /// Namespace of the Lease. Default: the pod's ($POD_NAMESPACE), else the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease that is not renewed stays held (client-go's LeaseDuration).
    #[arg(long, env = "KUBESYNC_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// A leader that cannot renew within this time stops (shorter than --lease-duration).
    #[arg(long, env = "KUBESYNC_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// This replica's name in the Lease and in Events. Default: $POD_NAME, else host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Propagation {
    Background,
    Foreground,
}

/// Why a command could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("loading kubeconfig: {0}")]
    LoadKubeconfig(#[source] kube::config::KubeconfigError),
    #[error("finding a cluster (kubeconfig or in-cluster): {0}")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("reading {what} file {path}: {source}")]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("age keys in {from}: {source}")]
    AgeKeys {
        from: String,
        #[source]
        source: crate::sops::KeyError,
    },
    #[error("--renew-deadline ({renew:?}) must be shorter than --lease-duration ({lease:?})")]
    LeaseTimes { renew: Duration, lease: Duration },
    #[error("{0}")]
    Fetch(#[from] SourceError),
    #[error("rendering the CRD: {0}")]
    Crd(#[from] serde_saphyr::ser::Error),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("writing the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Controller(#[from] crate::controller::ProcessError),
}

/// Runs the parsed command and maps its outcome to the process exit status.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Version => {
            println!("kubesync {}", crate::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync(args) => run_sync(args).await,
        Command::Diff(args) => run_diff(args).await,
        Command::Render(args) => run_render(args).await,
        Command::Controller(args) => run_controller(args).await,
        Command::Crd => crate::crd::crd_yaml().map_err(CliError::from).map(|yaml| {
            print!("{yaml}");
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

struct Prepared {
    clients: Clients,
    spec: SourceSpec,
    cache_dir: PathBuf,
    options: SyncOptions,
}

/// The client configuration: `--kubeconfig`, `--context`, else $KUBECONFIG, ~/.kube/config or
/// the pod's service account.
async fn kube_config(cluster: &ClusterArgs) -> Result<kube::Config, CliError> {
    let (kubeconfig, context) = (cluster.kubeconfig.as_ref(), cluster.context.as_ref());
    let kube_options = kube::config::KubeConfigOptions {
        context: context.cloned(),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                CliError::ReadKubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube_options)
                .await
                .map_err(CliError::LoadKubeconfig)?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&kube_options)
            .await
            .map_err(CliError::LoadKubeconfig)?,
        None => kube::Config::infer().await.map_err(CliError::InferConfig)?,
    };
    Ok(config)
}

async fn run_controller(args: ControllerArgs) -> Result<ExitCode, CliError> {
    if args.leader_election && args.renew_deadline >= args.lease_duration {
        return Err(CliError::LeaseTimes {
            renew: args.renew_deadline,
            lease: args.lease_duration,
        });
    }
    let config = kube_config(&args.cluster).await?;
    let default_namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config.clone()).map_err(CliError::Client)?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "kubesync".into());
        format!("{host}-{}", std::process::id())
    });
    let own_namespace = (args.lease_namespace.clone()).unwrap_or_else(|| default_namespace.clone());
    let settings = crate::controller::ControllerConfig {
        notify: crate::controller::NotifyConfig {
            defaults: args.notify.clone(),
            namespace: own_namespace,
            reminder: args.notify_reminder,
            status_page_url: args.status_page_url.clone(),
        },
        namespace: args.watch_namespace.clone(),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(crate::sync::default_cache_dir),
        known_hosts: args.known_hosts.clone(),
        field_manager: args.field_manager.clone(),
        concurrency: args.concurrency.max(1),
        identity,
        full_sync_every: args.full_sync_every,
        kustomize_binary: args.kustomize_binary.clone(),
        helm_binary: args.helm_binary.clone(),
        tenancy: crate::controller::Tenancy {
            default_service_account: args.default_service_account.clone(),
            no_cross_namespace_refs: args.no_cross_namespace_refs,
            trusted_namespaces: args.trusted_namespaces.clone(),
        },
    };
    let lease = {
        let mut lease = crate::lease::LeaseConfig::new(
            &args.lease_name,
            &args.lease_namespace.clone().unwrap_or(default_namespace),
            &settings.identity,
        );
        lease.lease_duration = args.lease_duration;
        lease.renew_deadline = args.renew_deadline;
        lease.retry_period = lease.retry_period.min(args.renew_deadline / 2);
        lease
    };
    let process = crate::controller::ProcessConfig {
        http_addr: args.http_addr,
        lease: args.leader_election.then(|| lease.clone()),
        sharding: args
            .shards
            .map(|count| crate::controller::Sharding { count, lease }),
    };
    crate::controller::run_process(client, config, settings, process).await?;
    Ok(ExitCode::SUCCESS)
}

/// Reads a file that holds a secret (passphrase, password), without its final newline.
fn read_secret(path: Option<&PathBuf>, what: &'static str) -> Result<Option<String>, CliError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|source| CliError::SecretFile {
        what,
        path: path.clone(),
        source,
    })?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

impl SourceArgs {
    fn spec(&self) -> Result<SourceSpec, CliError> {
        Ok(SourceSpec {
            url: self.repo.clone(),
            reference: GitRef::parse(&self.reference),
            auth: Auth {
                ssh_key: self.ssh_key.clone(),
                ssh_passphrase: read_secret(self.ssh_passphrase_file.as_ref(), "SSH passphrase")?,
                known_hosts: self.known_hosts.clone(),
                username: self.username.clone(),
                password: read_secret(self.password_file.as_ref(), "password")?,
            },
            timeout: self.fetch_timeout,
        })
    }

    /// The age keys of `--age-key-file` and $SOPS_AGE_KEY.
    fn age_keys(&self) -> Result<Keys, CliError> {
        let mut keys = Keys::default();
        if let Some(path) = &self.age_key_file {
            let text = read_secret(Some(path), "age key")?.unwrap_or_default();
            keys.extend(Keys::parse(&text).map_err(|source| CliError::AgeKeys {
                from: path.display().to_string(),
                source,
            })?);
        }
        if let Ok(text) = std::env::var("SOPS_AGE_KEY") {
            keys.extend(Keys::parse(&text).map_err(|source| CliError::AgeKeys {
                from: "$SOPS_AGE_KEY".into(),
                source,
            })?);
        }
        Ok(keys)
    }

    /// The target in `namespace` (the flag's, else the kubeconfig's).
    fn target(&self, namespace: &str) -> Result<Target, CliError> {
        Ok(Target {
            name: self.name.clone(),
            default_namespace: namespace.into(),
            paths: match self.paths.is_empty() {
                true => vec![".".into()],
                false => self.paths.clone(),
            },
            parent: self
                .gitsync
                .then(|| crate::applyset::Parent::git_sync(&self.name, namespace)),
            decryption: self.age_keys()?,
            kustomize: KustomizeOptions {
                mode: self.kustomize,
                allow_remote_bases: self.kustomize_allow_remote_bases,
                binary: self.kustomize_binary.clone(),
                cache_dir: Some(self.cache_dir().join("render")),
                ..KustomizeOptions::default()
            },
            helm: self.helm(namespace)?,
            confined_to: None,
        })
    }

    /// The Helm chart of the flags, if any.
    fn helm(&self, namespace: &str) -> Result<Option<crate::helm::HelmOptions>, CliError> {
        use crate::helm::{ChartSource, HelmOptions, RepoCredentials};
        let Some(chart) = &self.helm_chart else {
            return Ok(None);
        };
        let source = match &self.helm_repo {
            None => ChartSource::Path(chart.clone()),
            Some(url) => ChartSource::Repository {
                url: url.clone(),
                chart: chart.clone(),
                version: self.helm_version.clone(),
            },
        };
        Ok(Some(HelmOptions {
            source,
            release_name: (self.helm_release.clone()).unwrap_or_else(|| self.name.clone()),
            namespace: namespace.into(),
            values: None,
            values_files: self.helm_values.clone(),
            values_from: Vec::new(),
            include_crds: true,
            skip_tests: true,
            post_render: None,
            credentials: RepoCredentials {
                username: self.helm_username.clone(),
                password: read_secret(self.helm_password_file.as_ref(), "Helm password")?,
                ca_file: self.helm_ca_file.clone(),
            },
            binary: self.helm_binary.clone(),
            timeout: Duration::from_secs(120),
            cache_dir: self.cache_dir().join("helm"),
        }))
    }

    fn cache_dir(&self) -> PathBuf {
        (self.cache_dir.clone()).unwrap_or_else(crate::sync::default_cache_dir)
    }
}

async fn prepare(
    source: &SourceArgs,
    apply: ApplyOptions,
    prune: PrunePolicy,
) -> Result<Prepared, CliError> {
    let config = kube_config(&source.cluster).await?;
    let namespace = source
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(CliError::Client)?;
    let options = SyncOptions {
        target: source.target(&namespace)?,
        apply,
        prune,
        wait: None,
        wait_for_crds: false,
        stop: None,
        on_revision: None,
    };
    let cache_dir = source.cache_dir();
    Ok(Prepared {
        clients: Clients::from(&client),
        spec: source.spec()?,
        cache_dir,
        options,
    })
}

async fn run_sync(args: SyncArgs) -> Result<ExitCode, CliError> {
    let apply = ApplyOptions {
        dry_run: args.dry_run,
        ..ApplyOptions::from(&args.apply)
    };
    let prune = PrunePolicy {
        enabled: !args.no_prune,
        ..PrunePolicy::from(&args.prune_args)
    };
    let mut p = prepare(&args.source, apply, prune).await?;
    p.options.wait = args.wait.then_some(args.timeout);
    if std::io::stderr().is_terminal() {
        eprintln!(
            "syncing {} ({}) ...",
            crate::source::redact_url(&p.spec.url),
            args.source.reference
        );
    }
    let report = crate::sync::sync_source(&p.clients, &p.spec, &p.cache_dir, &p.options).await;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_text(&report)?,
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line per object, then the summary, as kubectl prints.
pub fn print_text(report: &SyncReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let suffix = if report.dry_run { " (dry run)" } else { "" };
    for o in &report.objects {
        let what = match &o.result {
            Action::Created => "created".to_string(),
            Action::Configured if o.drift_corrected => "configured (drift corrected)".to_string(),
            Action::Configured => "configured".to_string(),
            Action::Unchanged => "unchanged".to_string(),
            Action::Recreated => "recreated".to_string(),
            Action::Adopted => "adopted".to_string(),
            Action::Pruned => "pruned".to_string(),
            Action::Kept(r) => format!("kept ({r})"),
            Action::Skipped(r) => format!("skipped ({r})"),
            Action::Failed(r) => format!("failed: {r}"),
            Action::Drifted(r) => format!("drifted, left as it is: {r}"),
        };
        writeln!(out, "{} {what}{suffix}", o.object)?;
    }
    for r in &report.released {
        let fields = r.fields.join(", ");
        writeln!(out, "{}: {fields} left to {} (not applied)", r.object, r.to)?;
    }
    for w in &report.warnings {
        writeln!(out, "warning: {w}")?;
    }
    for e in &report.errors {
        writeln!(out, "error: {e}")?;
    }
    if let Some(b) = &report.prune_blocked
        && *b != crate::sync::PruneBlocked::Disabled
    {
        writeln!(out, "{b}")?;
    }
    let s = &report.summary;
    writeln!(
        out,
        "sync {} {} at revision {}: {} objects ({} created, {} configured, {} unchanged{}), {} pruned, {} failed in {:.1}s",
        report.name,
        if report.succeeded() {
            "succeeded"
        } else {
            "FAILED"
        },
        report.revision.as_deref().unwrap_or("-"),
        s.managed + s.failed,
        s.created,
        s.configured,
        s.unchanged,
        match s.drifted {
            0 => String::new(),
            n => format!(", {n} drifted"),
        },
        s.pruned,
        s.failed,
        report.duration_seconds
    )?;
    Ok(())
}

fn is_secret(object: &serde_json::Value) -> bool {
    object["kind"] == "Secret" && object["apiVersion"] == "v1"
}

/// Secret values are shown as kubectl diff shows them: `***` when unchanged, `*** (before)` and
/// `*** (after)` when they differ, so a diff or a render in a CI log never carries a secret.
pub fn mask_secret_values(
    mut before: Option<serde_json::Value>,
    mut after: Option<serde_json::Value>,
) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
    use serde_json::Value;
    let is_secret_pair = before.iter().chain(after.iter()).any(is_secret);
    if !is_secret_pair {
        return (before, after);
    }
    for field in ["data", "stringData"] {
        let old = before
            .as_ref()
            .and_then(|b| b[field].as_object().cloned())
            .unwrap_or_default();
        let new = after
            .as_ref()
            .and_then(|a| a[field].as_object().cloned())
            .unwrap_or_default();
        let mask = |object: &mut Option<Value>,
                    own: &serde_json::Map<String, Value>,
                    other: &serde_json::Map<String, Value>,
                    side: &str| {
            if let Some(map) = object
                .as_mut()
                .and_then(|o| o.get_mut(field))
                .and_then(Value::as_object_mut)
            {
                for (key, value) in map.iter_mut() {
                    let same = other.get(key) == own.get(key);
                    *value = Value::String(if same {
                        "***".into()
                    } else {
                        format!("*** ({side})")
                    });
                }
            }
        };
        mask(&mut before, &old, &new, "before");
        mask(&mut after, &new, &old, "after");
    }
    (before, after)
}

async fn run_diff(args: DiffArgs) -> Result<ExitCode, CliError> {
    let apply = ApplyOptions {
        dry_run: true,
        ..ApplyOptions::from(&args.apply)
    };
    let prune = PrunePolicy {
        enabled: !args.no_prune,
        ..PrunePolicy::from(&args.prune_args)
    };
    let p = prepare(&args.source, apply, prune).await?;
    let report = crate::sync::sync_source(&p.clients, &p.spec, &p.cache_dir, &p.options).await;
    if !report.succeeded() {
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        return Ok(ExitCode::from(2));
    }
    let mut out = std::io::stdout().lock();
    let mut masked = Vec::new();
    let mut diffs = Vec::new();
    let markdown = args.output == DiffFormat::Markdown;
    for change in &report.changes {
        let (mut before, mut after) =
            mask_secret_values(change.before.clone(), change.after.clone());
        if markdown {
            // Reviewers read what Git changes, not kubesync's own bookkeeping.
            for object in [before.as_mut(), after.as_mut()].into_iter().flatten() {
                crate::review::without_bookkeeping(object);
            }
        }
        let before_text = before.as_ref().map(to_yaml).unwrap_or_default();
        let after_text = after.as_ref().map(to_yaml).unwrap_or_default();
        let diff = similar::TextDiff::from_lines(&before_text, &after_text);
        let old = if change.before.is_some() {
            format!("live/{}", change.object)
        } else {
            "/dev/null".into()
        };
        let new = if change.after.is_some() {
            format!("git/{}", change.object)
        } else {
            "/dev/null".into()
        };
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&old, &new)
            .to_string();
        masked.push(crate::outcome::Change {
            object: change.object.clone(),
            before,
            after,
        });
        diffs.push(text);
    }
    match args.output {
        DiffFormat::Text => write!(out, "{}", diffs.concat())?,
        DiffFormat::Markdown => {
            let unchanged = report.summary.unchanged;
            let revision = report.revision.clone().unwrap_or_default();
            let name = &args.source.name;
            write!(
                out,
                "{}",
                crate::review::markdown(name, &revision, &masked, &diffs, unchanged)
            )?;
        }
    }
    Ok(if report.changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_render(render: RenderArgs) -> Result<ExitCode, CliError> {
    let args_show_secrets = render.show_secrets;
    let p = prepare(
        &render.source,
        ApplyOptions::default(),
        PrunePolicy::default(),
    )
    .await?;
    let checkout = crate::source::fetch(&p.spec, &p.cache_dir).await?;
    match crate::sync::render(&p.clients.apply, &checkout, &p.options).await {
        Ok(objects) => {
            let mut out = std::io::stdout().lock();
            for o in objects {
                let hash = crate::apply::desired_hash(&o.desired);
                let mut object = if args_show_secrets {
                    o.desired
                } else {
                    mask_secret_values(Some(o.desired.clone()), Some(o.desired))
                        .0
                        .unwrap_or_default()
                };
                object["metadata"]["annotations"][crate::apply::HASH_ANNOTATION] =
                    serde_json::Value::String(hash);
                write!(out, "---\n{}", to_yaml(&object))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn to_yaml(value: &serde_json::Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_values_are_masked_like_kubectl_diff() {
        let secret = |v: &str| serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"same": "c2FtZQ==", "changed": v}});
        let (before, after) = mask_secret_values(Some(secret("b2xk")), Some(secret("bmV3")));
        let (before, after) = (before.expect("before"), after.expect("after"));
        assert_eq!(before["data"]["same"], "***");
        assert_eq!(after["data"]["same"], "***");
        assert_eq!(before["data"]["changed"], "*** (before)");
        assert_eq!(after["data"]["changed"], "*** (after)");
        let text = format!("{before}{after}");
        assert!(!text.contains("b2xk") && !text.contains("bmV3") && !text.contains("c2FtZQ=="));
        // A new Secret: every value masked; other kinds untouched.
        let (_, created) = mask_secret_values(None, Some(secret("bmV3")));
        assert_eq!(created.expect("after")["data"]["changed"], "*** (after)");
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}});
        assert_eq!(mask_secret_values(Some(cm.clone()), None).0, Some(cm));
    }

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sync_flags_parse() {
        let cli = Cli::try_parse_from([
            "kubesync",
            "sync",
            "--repo",
            "file:///r",
            "--name",
            "web",
            "--path",
            "apps,infra",
            "--no-prune",
            "--wait",
            "--timeout",
            "2m",
            "--force-conflicts",
            "false",
        ])
        .expect("parses");
        let Command::Sync(args) = cli.command else {
            panic!("sync")
        };
        assert_eq!(args.source.paths, vec!["apps", "infra"]);
        assert!(args.no_prune && args.wait && !args.apply.force_conflicts);
        assert_eq!(args.timeout, Duration::from_secs(120));
    }
}
