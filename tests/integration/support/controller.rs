//! The controller as a process: the CRD, GitSyncs, and `kubesync controller` runs.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::git::free_port;
use super::{eventually, run};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubesync::crd::GitSync;
use serde_json::json;

use super::TestNamespace;

/// Installs (or updates) the GitSync CRD from the code and waits until it is served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kubesync::crd::crd();
    crds.patch(
        "gitsyncs.kubesync.dev",
        &PatchParams::apply("kubesync-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("installing the GitSync CRD");
    eventually(Duration::from_secs(30), "GitSync CRD established", || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("gitsyncs.kubesync.dev").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
    // Discovery may lag the Established condition by a moment.
    let api: Api<GitSync> = Api::all(client.clone());
    eventually(Duration::from_secs(30), "GitSync API served", || {
        let api = api.clone();
        async move { api.list(&Default::default()).await.ok().map(|_| ()) }
    })
    .await;
}

/// A `kubesync controller` process; SIGKILLed when dropped. Its log is kept for assertions.
pub struct ControllerProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl ControllerProcess {
    pub fn start(namespace: &str, extra: &[&str]) -> ControllerProcess {
        Self::start_with_env(namespace, extra, &[])
    }

    /// With a cache and log of its own, removed when dropped.
    pub fn start_with_env(
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> ControllerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = Self::spawn(
            namespace,
            &dir.path().join("cache"),
            dir.path().join("controller.log"),
            extra,
            env,
        );
        process._dir = Some(dir);
        process
    }

    /// With a cache directory and log that outlive the process, as a restarted container keeps
    /// its emptyDir.
    pub fn spawn(
        namespace: &str,
        cache: &std::path::Path,
        log: PathBuf,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> ControllerProcess {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_kubesync"))
            .args(["controller", "--watch-namespace", namespace])
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cache-dir")
            .arg(cache)
            .args(extra)
            .env("RUST_LOG", "info,kubesync=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("kubesync controller starts");
        let mut process = ControllerProcess {
            child,
            port,
            log,
            _dir: None,
        };
        crate::support::wait_for_listener(&mut process.child, port, "kubesync controller");
        process
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, &[], b"")
    }

    /// The value of the sample on /metrics whose line starts with `line_prefix` (0 if absent).
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A minimal HTTP/1.1 request on loopback; returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn create_gitsync(
    ns: &TestNamespace,
    name: &str,
    spec: serde_json::Value,
) -> Api<GitSync> {
    create_gitsync_in(&ns.client, &ns.name, name, spec).await
}

pub async fn create_gitsync_in(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> Api<GitSync> {
    let api: Api<GitSync> = Api::namespaced(client.clone(), namespace);
    let sync: GitSync = serde_json::from_value(json!({
        "apiVersion": "kubesync.dev/v1alpha1",
        "kind": "GitSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .expect("GitSync");
    api.create(&PostParams::default(), &sync)
        .await
        .expect("creating the GitSync");
    api
}

pub async fn applied_revision(api: &Api<GitSync>, name: &str) -> Option<String> {
    api.get(name).await.ok()?.status?.last_applied_revision
}

pub async fn wait_for_revision(
    api: &Api<GitSync>,
    name: &str,
    revision: &str,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    eventually(
        timeout,
        &format!("GitSync {name} applies {revision}"),
        || async { (applied_revision(api, name).await.as_deref() == Some(revision)).then_some(()) },
    )
    .await;
    started.elapsed()
}

pub async fn lease_holder(ns: &TestNamespace) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    leases
        .get_opt("kubesync")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// A kubeconfig for the testbed that authenticates with `token` only.
pub fn token_kubeconfig(dir: &Path, token: &str) -> PathBuf {
    let admin = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let server = run(Command::new("kubectl").args([
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]));
    let ca = run(Command::new("kubectl").args([
        "config",
        "view",
        "--minify",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]));
    let ca_line = if ca.is_empty() {
        let file = run(Command::new("kubectl").args([
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ]));
        format!("certificate-authority: {file}")
    } else {
        format!("certificate-authority-data: {ca}")
    };
    let path = dir.join("sa.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    {ca_line}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: testbed, user: sa}}\ncurrent-context: sa\n"
        ),
    )
    .expect("kubeconfig");
    assert_ne!(path.display().to_string(), admin);
    path
}

/// The `X-Hub-Signature-256` hex digest a Git forge sends with `body`, made independently of
/// the controller's verifier.
pub fn sign_webhook(token: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
