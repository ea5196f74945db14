//! Helpers shared by the integration tests: a client for the local control plane and a namespace per test.
pub mod controller;
pub mod faults;
pub mod git;
pub mod gitea;
pub mod manifests;
pub mod private;
pub mod receiver;
pub mod servers;
pub mod sops;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, Config};

/// A client for the testbed. Panics (fails the test loudly) when `KUBECONFIG` is unset or points
/// anywhere but the loopback address: tests never touch another cluster.
pub async fn client() -> Client {
    let config = testbed_config().await;
    Client::try_from(config).expect("building a client for the testbed")
}

pub async fn testbed_config() -> Config {
    let path = std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "KUBECONFIG is not set: start the local control plane with eval \"$(tests/testbed/up)\""
        )
    });
    let config = Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("reading kubeconfig {path}: {e}"));
    let host = config.cluster_url.host().unwrap_or_default();
    assert!(
        host == "127.0.0.1" || host == "localhost" || host == "[::1]",
        "refusing to run tests against {}: only the local testbed on 127.0.0.1 is allowed",
        config.cluster_url
    );
    config
}

/// A unique name with a prefix, valid as a DNS label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff)
}

/// A namespace owned by one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kubesync.dev/test": "true"}}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        TestNamespace { name, client }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot be async: delete from a short-lived runtime on its own thread, with a client
        // of its own (the test's client is served by the test's runtime, which waits for us here).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    let client = client().await;
                    let deleted = tokio::time::timeout(
                        Duration::from_secs(10),
                        Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()),
                    )
                    .await;
                    if !matches!(deleted, Ok(Ok(_))) {
                        eprintln!("warning: test namespace {name} was not deleted: {deleted:?}");
                    }
                });
            }
        })
        .join();
    }
}

/// Polls `check` every 250 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Path of the repository root (for scripts and fixtures).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Waits until a server just spawned listens on 127.0.0.1:`port`; otherwise stops and reaps it and
/// fails the test, naming `what`.
pub fn wait_for_listener(child: &mut std::process::Child, port: u16, what: &str) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not listen on 127.0.0.1:{port}");
}

/// Runs a bash script (`-euo pipefail`) in the repository root; fails the test with the script,
/// its output and its errors unless it succeeds. Returns its standard output, trimmed.
pub fn sh(script: &str) -> String {
    run(std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo_root()))
    .trim()
    .to_string()
}

/// Runs a command; fails the test with the command, its output and its errors unless it
/// succeeds. Returns its standard output.
pub fn run(command: &mut std::process::Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start (is the testbed's PATH set?): {e}"));
    succeeded(command, out)
}

/// The standard output of a finished command; fails the test with its output and errors unless
/// it succeeded.
fn succeeded(command: &std::process::Command, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`run`] with `input` on the command's standard input.
pub fn run_with_input(command: &mut std::process::Command, input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start (is the testbed's PATH set?): {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    succeeded(command, out)
}

/// Standard output and standard error of a finished command, as one text for assertions.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
