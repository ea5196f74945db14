//! The Git source over SSH: Debian's sshd on loopback, host keys checked against known_hosts.
use std::path::Path;
use std::time::Duration;

use crate::support::git::GitRepo;
use crate::support::manifests::configmap;
use crate::support::servers::{Sshd, start_sshd};
use kubesync::source::{Auth, GitRef, SourceError, SourceSpec};

fn known_hosts_line(sshd: &Sshd, pubkey_file: &str) -> String {
    let public = std::fs::read_to_string(sshd.dir.path().join(pubkey_file)).expect("public key");
    let mut fields = public.split_whitespace();
    let (kind, key) = (fields.next().expect("type"), fields.next().expect("key"));
    format!("[127.0.0.1]:{} {kind} {key}\n", sshd.port)
}

#[tokio::test]
async fn ssh_fetch_verifies_the_host_key() {
    let sshd = start_sshd();
    let repo = GitRepo::new();
    repo.write("app.yaml", &configmap("app", "over-ssh"));
    let commit = repo.commit_and_push("ssh");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let url = format!(
        "ssh://{user}@127.0.0.1:{}{}",
        sshd.port,
        repo.remote().display()
    );
    let cache = tempfile::tempdir().expect("cache");
    let known_hosts = sshd.dir.path().join("known_hosts");
    let spec = |known: Option<&Path>| SourceSpec {
        url: url.clone(),
        reference: GitRef::Branch("main".into()),
        auth: Auth {
            ssh_key: Some(sshd.dir.path().join("client_key")),
            known_hosts: known.map(Path::to_path_buf),
            ..Default::default()
        },
        timeout: Duration::from_secs(30),
    };

    // The right host key: fetched.
    std::fs::write(&known_hosts, known_hosts_line(&sshd, "host_key.pub")).expect("known_hosts");
    let checkout = kubesync::source::fetch(&spec(Some(&known_hosts)), cache.path())
        .await
        .expect("fetch over ssh");
    assert_eq!(checkout.revision, commit);
    assert!(checkout.dir.join("app.yaml").is_file());

    // A different key for the same host (a changed host key): refused.
    std::fs::write(&known_hosts, known_hosts_line(&sshd, "client_key.pub")).expect("known_hosts");
    let other_cache = tempfile::tempdir().expect("cache");
    let err = kubesync::source::fetch(&spec(Some(&known_hosts)), other_cache.path())
        .await
        .expect_err("changed key refused");
    assert!(matches!(err, SourceError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // A host not in known_hosts, and no known_hosts at all: refused, never trusted silently.
    std::fs::write(&known_hosts, "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n").expect("known_hosts");
    let err = kubesync::source::fetch(&spec(Some(&known_hosts)), other_cache.path())
        .await
        .expect_err("unknown host refused");
    assert!(err.to_string().contains("not in known_hosts"), "{err}");
    let err = kubesync::source::fetch(&spec(None), other_cache.path())
        .await
        .expect_err("no known_hosts refused");
    assert!(err.to_string().contains("always verified"), "{err}");
}
