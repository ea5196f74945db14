//! The Git source over HTTPS with basic auth: Debian's `git http-backend` as a CGI behind lighttpd
//! with TLS on loopback, its certificate signed by a CA made for the test.
//!
//! libgit2's CA bundle is process-wide, so each fetch runs the `kubesync` binary with
//! `SSL_CERT_FILE` pointing at the test CA, exactly as a user with a private CA would.
use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::support::TestNamespace;
use crate::support::git::GitRepo;
use crate::support::manifests::configmap;
use crate::support::servers::{PASSWORD, USER, start_lighttpd};

/// Runs `kubesync sync` against the testbed over HTTPS; returns its output.
fn kubesync_sync(
    ns: &TestNamespace,
    url: &str,
    cache: &Path,
    password_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubesync"));
    command
        .args([
            "sync",
            "--repo",
            url,
            "--name",
            "over-https",
            "-n",
            &ns.name,
        ])
        .args(["--username", USER, "--fetch-timeout", "20s", "-o", "json"])
        .arg("--cache-dir")
        .arg(cache);
    if let Some(file) = password_file {
        command.arg("--password-file").arg(file);
    }
    match ca_file {
        Some(file) => command.env("SSL_CERT_FILE", file),
        None => command.env_remove("SSL_CERT_FILE"),
    };
    command.output().expect("kubesync runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn https_fetch_with_basic_auth_through_git_http_backend() {
    let ns = TestNamespace::new("https").await;
    let repo = GitRepo::new();
    repo.write("app.yaml", &configmap("web", "over-https"));
    let first = repo.commit_and_push("first");
    let server = start_lighttpd(repo.root.path());
    let url = format!("https://127.0.0.1:{}/git/remote.git", server.port);
    let ca = server.dir.path().join("ca.pem");
    let password_file = server.dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let cache = tempfile::tempdir().expect("cache");

    // The right password and the test CA: the commit is fetched and applied.
    let out = kubesync_sync(&ns, &url, cache.path(), Some(&password_file), Some(&ca));
    let output = text(&out);
    assert!(out.status.success(), "sync over https: {output}");
    assert!(output.contains(&first), "report names the commit: {output}");
    assert!(
        !output.contains(PASSWORD),
        "no password in output: {output}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let web = configmaps.get("web").await.expect("web applied");
    assert_eq!(
        web.data.expect("data").get("key").map(String::as_str),
        Some("over-https")
    );

    // A new commit is fetched incrementally into the same cache.
    repo.write("app.yaml", &configmap("web", "second"));
    let second = repo.commit_and_push("second");
    let out = kubesync_sync(&ns, &url, cache.path(), Some(&password_file), Some(&ca));
    assert!(out.status.success(), "second sync: {}", text(&out));
    assert!(text(&out).contains(&second));
    let web = configmaps.get("web").await.expect("web");
    assert_eq!(
        web.data.expect("data").get("key").map(String::as_str),
        Some("second")
    );

    // A wrong password is refused by the server; the error says so without echoing it.
    let wrong = server.dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").expect("wrong password file");
    let fresh = tempfile::tempdir().expect("cache");
    let out = kubesync_sync(&ns, &url, fresh.path(), Some(&wrong), Some(&ca));
    let output = text(&out);
    assert!(!out.status.success(), "a wrong password fails: {output}");
    assert!(
        output.contains("127.0.0.1"),
        "error names the remote: {output}"
    );
    assert!(!output.contains("not-the-password") && !output.contains(PASSWORD));

    // No password at all: the error says credentials are missing.
    let out = kubesync_sync(&ns, &url, fresh.path(), None, Some(&ca));
    let output = text(&out);
    assert!(!out.status.success(), "no password fails: {output}");
    assert!(
        output.contains("password"),
        "says what is missing: {output}"
    );

    // Without the test CA the server's certificate is not trusted: refused, never skipped.
    let out = kubesync_sync(&ns, &url, fresh.path(), Some(&password_file), None);
    let output = text(&out);
    assert!(
        !out.status.success(),
        "an untrusted certificate fails: {output}"
    );
    assert!(
        output.to_lowercase().contains("certificate"),
        "the error says why: {output}"
    );

    // Nothing a failed sync did removed the applied object.
    assert!(configmaps.get_opt("web").await.expect("get").is_some());
}
