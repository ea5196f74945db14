//! The homelab tutorial, followed as a new user would from step 2 on (k3s is the testbed here):
//! helm install with the tutorial's values, an SSH deploy key and known_hosts in a Secret, the
//! tutorial's GitSync, the backup CronJob run by hand, a signed push webhook and requestedAt.
//! The controller runs as the chart's ServiceAccount (kwok runs no containers), from this machine.
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kubesync::crd::GitSync;
use serde_json::Value;

use crate::support::controller::{ControllerProcess, http};
use crate::support::git::GitRepo;
use crate::support::servers::start_sshd;
use crate::support::{TestNamespace, eventually, repo_root, sh};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[tokio::test]
async fn the_homelab_tutorial_works_after_installing_k3s() {
    let system = TestNamespace::new("tut-system").await;
    let home = TestNamespace::new("tut-homelab").await;
    crate::support::controller::install_crd(&system.client).await;
    let release = format!("kubesync{}", &system.name[system.name.len() - 4..]);
    struct Uninstall(String, String);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = Command::new("helm")
                .args(["uninstall", &self.0, "-n", &self.1])
                .output();
        }
    }
    let _uninstall = Uninstall(release.clone(), system.name.clone());

    // 2. helm install with the tutorial's values; the rollout finishes.
    sh(&format!(
        "helm install {release} charts/kubesync -n {ns} -f examples/homelab-setup/values.yaml --skip-crds >/dev/null
         kubectl -n {ns} rollout status deploy/{release} --timeout=60s >/dev/null",
        ns = system.name
    ));

    // 3. The example in "your" repository, at the same path.
    let repo = GitRepo::new();
    copy_dir(
        &repo_root().join("examples/homelab"),
        &repo.work().join("examples/homelab"),
    );
    let first = repo.commit_and_push("homelab");

    // 4. A deploy key (the Git host's authorized key) and the host's key in known_hosts.
    let sshd = start_sshd();
    let keys = tempfile::tempdir().expect("tempdir");
    sh(&format!(
        "cd {dir}
         ssh-keygen -q -t ed25519 -N '' -C kubesync -f homelab-deploy-key
         cat homelab-deploy-key.pub >> {authorized}
         ssh-keyscan -t ed25519 -p {port} 127.0.0.1 2>/dev/null > known_hosts
         test -s known_hosts
         kubectl -n {ns} create secret generic homelab-deploy-key \
           --from-file=identity=homelab-deploy-key --from-file=known_hosts=known_hosts >/dev/null",
        dir = keys.path().display(),
        authorized = sshd.dir.path().join("authorized_keys").display(),
        port = sshd.port,
        ns = home.name,
    ));

    // The controller, as the chart's ServiceAccount would run it in the cluster.
    let token = sh(&format!(
        "kubectl -n {} create token {release} --duration=1h",
        system.name
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = crate::support::controller::token_kubeconfig(dir.path(), &token);
    let controller = ControllerProcess::start_with_env(
        &home.name,
        &["--known-hosts", "/nonexistent"],
        &[("KUBECONFIG", &kubeconfig)],
    );

    // 5. The tutorial's GitSync with the URL edited, applied; kubectl wait; get gitsyncs.
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let gitsync = std::fs::read_to_string(repo_root().join("examples/homelab-setup/gitsync.yaml"))
        .expect("gitsync.yaml")
        .replace(
            "ssh://git@github.com/YOU/homelab.git",
            &format!(
                "ssh://{user}@127.0.0.1:{}{}",
                sshd.port,
                repo.remote().display()
            ),
        )
        .replace("namespace: homelab", &format!("namespace: {}", home.name));
    let file = dir.path().join("gitsync.yaml");
    std::fs::write(&file, gitsync).expect("write");
    sh(&format!(
        "kubectl apply -f {} >/dev/null
         kubectl -n {ns} wait --for=condition=Ready gitsync/homelab --timeout=90s >/dev/null",
        file.display(),
        ns = home.name
    ));
    let listed = sh(&format!("kubectl -n {} get gitsyncs", home.name));
    assert!(
        listed.contains("True") && listed.contains(&first[..12]),
        "{listed}"
    );
    let objects = sh(&format!(
        "kubectl -n {} get deploy,sts,svc,ingress,cronjob,job -o name",
        home.name
    ));
    for o in [
        "deployment.apps/rails",
        "deployment.apps/nginx",
        "statefulset.apps/postgres",
        "ingress.networking.k8s.io/homelab",
        "cronjob.batch/postgres-backup",
        "job.batch/rails-migrate",
    ] {
        assert!(objects.contains(o), "{o} in {objects}");
    }

    // 6. The backup, now.
    sh(&format!(
        "kubectl -n {ns} create job --from=cronjob/postgres-backup backup-now >/dev/null
         kubectl -n {ns} wait --for=condition=Complete job/backup-now --timeout=90s >/dev/null",
        ns = home.name
    ));
    let jobs: Api<Job> = Api::namespaced(home.client.clone(), &home.name);
    assert!(jobs.get("backup-now").await.is_ok());

    // 7. The webhook secret and a push signed the way the tutorial signs it.
    repo.write(
        "examples/homelab/rails/configmap.yaml",
        &std::fs::read_to_string(repo_root().join("examples/homelab/rails/configmap.yaml"))
            .expect("cm")
            .replace("RAILS_LOG_TO_STDOUT: \"1\"", "RAILS_LOG_TO_STDOUT: \"0\""),
    );
    let second = repo.commit_and_push("quieter logs");
    let body = r#"{"ref":"refs/heads/main"}"#;
    let sig = sh(&format!(
        "token=$(openssl rand -hex 32)
         kubectl -n {ns} create secret generic homelab-webhook --from-literal=token=\"$token\" >/dev/null
         printf %s '{body}' | openssl dgst -sha256 -hmac \"$token\" | sed 's/.* //'",
        ns = home.name
    ));
    let (status, _) = http(
        controller.port,
        "POST",
        &format!("/hooks/{}/homelab", home.name),
        &[("X-Hub-Signature-256", format!("sha256={sig}"))],
        body.as_bytes(),
    );
    assert_eq!(status, 202);
    let api: Api<GitSync> = Api::namespaced(home.client.clone(), &home.name);
    eventually(Duration::from_secs(10), "the push is applied", || async {
        let s = api.get("homelab").await.ok()?.status?;
        (s.last_applied_revision.as_deref() == Some(second.as_str())).then_some(())
    })
    .await;
    // ... and requestedAt.
    sh(&format!(
        "kubectl -n {} annotate gitsync/homelab kubesync.dev/requestedAt=\"$(date +%s)\" --overwrite >/dev/null",
        home.name
    ));
    eventually(
        Duration::from_secs(10),
        "the request is handled",
        || async {
            let s = api.get("homelab").await.ok()?;
            let wanted = s
                .metadata
                .annotations
                .as_ref()?
                .get("kubesync.dev/requestedAt")?
                .clone();
            (s.status?.last_handled_requested_at.as_deref() == Some(wanted.as_str())).then_some(())
        },
    )
    .await;

    // 8. A change made by hand is undone without waiting for the interval.
    sh(&format!(
        "kubectl -n {} scale deployment rails --replicas=5 >/dev/null",
        home.name
    ));
    eventually(
        Duration::from_secs(10),
        "rails has Git's replicas again",
        || {
            let ns = home.name.clone();
            async move {
                let replicas = sh(&format!(
                    "kubectl -n {ns} get deployment rails -o jsonpath='{{.spec.replicas}}'"
                ));
                let events = sh(&format!(
                    "kubectl -n {ns} get events --field-selector reason=DriftCorrected -o name"
                ));
                (replicas.trim() == "2" && !events.trim().is_empty()).then_some(())
            }
        },
    )
    .await;

    // The status page and the metrics.
    let (_, page) = controller.get("/");
    assert!(page.contains(&second), "{page}");
    let (_, metrics) = controller.get("/metrics");
    assert!(metrics.contains(&format!(
        "kubesync_sync_runs_total{{sync=\"{}/homelab\",result=\"success\"}}",
        home.name
    )));
    let described = sh(&format!(
        "kubectl -n {} get gitsync homelab -o json",
        home.name
    ));
    let described: Value = serde_json::from_str(&described).expect("json");
    assert!(
        described["status"]["history"]
            .as_array()
            .is_some_and(|h| h.len() >= 2)
    );

    // 10. Preview a change from the checkout, against the GitSync's own set.
    let diff = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubesync"))
            .args([
                "diff",
                "--repo",
                ".",
                "--path",
                "examples/homelab",
                "--gitsync",
            ])
            .args(["--name", "homelab", "-n", &home.name])
            .current_dir(repo.work())
            .output()
            .expect("kubesync diff")
    };
    let clean = diff();
    assert_eq!(
        clean.status.code(),
        Some(0),
        "in sync: {}",
        crate::support::output_text(&clean)
    );
    repo.write(
        "examples/homelab/nginx/configmap.yaml",
        &std::fs::read_to_string(repo.work().join("examples/homelab/nginx/configmap.yaml"))
            .expect("nginx configmap")
            .replace("client_max_body_size", "client_max_body_size 20m; #"),
    );
    let changed = diff();
    assert_eq!(
        changed.status.code(),
        Some(1),
        "an edit shows: {}",
        crate::support::output_text(&changed)
    );

    // 11. A password in Git with SOPS and age, as the tutorial does it (the key outside the
    // repository, only the encrypted file committed).
    crate::support::git::git(&repo.work(), &["checkout", "--", "examples/homelab"]);
    let key = dir.path().join("homelab.agekey");
    let password = "tutorial-Pw-never-shown";
    let work = repo.work();
    sh(&format!(
        "cd {work}
         age-keygen -o {key} 2>/dev/null
         recipient=$(grep 'public key' {key} | cut -d' ' -f4)
         printf 'creation_rules:\\n  - path_regex: .*\\\\.enc\\\\.yaml$\\n    encrypted_regex: ^(data|stringData)$\\n    age: %s\\n' \"$recipient\" > .sops.yaml
         printf 'apiVersion: v1\\nkind: Secret\\nmetadata:\\n  name: rails-db\\n  namespace: {ns}\\nstringData:\\n  password: {password}\\n' > examples/homelab/db-password.enc.yaml
         sops --encrypt --in-place examples/homelab/db-password.enc.yaml
         ! grep -q {password} examples/homelab/db-password.enc.yaml",
        work = work.display(),
        key = key.display(),
        ns = home.name,
    ));
    let encrypted = repo.commit_and_push("db password");
    sh(&format!(
        "kubectl -n {ns} create secret generic sops-age --from-file={key} >/dev/null
         kubectl -n {ns} patch gitsync homelab --type merge \\
           -p '{{\"spec\":{{\"decryption\":{{\"provider\":\"sops\",\"secretRef\":{{\"name\":\"sops-age\"}}}}}}}}' >/dev/null",
        ns = home.name,
        key = key.display(),
    ));
    let gitsyncs: Api<GitSync> = Api::namespaced(home.client.clone(), &home.name);
    crate::support::controller::wait_for_revision(
        &gitsyncs,
        "homelab",
        &encrypted,
        Duration::from_secs(90),
    )
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(home.client.clone(), &home.name);
    let db = secrets
        .get("rails-db")
        .await
        .expect("the decrypted Secret is applied");
    assert_eq!(
        db.data
            .unwrap_or_default()
            .get("password")
            .map(|v| v.0.clone()),
        Some(password.as_bytes().to_vec())
    );

    // 12. Kustomize: examples/homelab becomes the base, the overlays as the tutorial writes them
    // (the files of examples/homelab-overlays), the SOPS file moved to and listed in home.
    section_12_files_match_the_tutorial();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(home.client.clone(), &home.name);
    let rails_uid = deployments.get("rails").await.expect("rails").metadata.uid;
    let example = repo_root().join("examples/homelab-overlays");
    sh(&format!(
        "cd {work}
         mkdir -p examples/homelab-overlays/overlays/home
         git mv examples/homelab examples/homelab-overlays/base
         git mv examples/homelab-overlays/base/db-password.enc.yaml examples/homelab-overlays/overlays/home/",
        work = work.display()
    ));
    copy_dir(
        &example.join("overlays/staging"),
        &work.join("examples/homelab-overlays/overlays/staging"),
    );
    let base = std::fs::read_to_string(example.join("base/kustomization.yaml")).expect("base");
    repo.write("examples/homelab-overlays/base/kustomization.yaml", &base);
    let home_overlay = std::fs::read_to_string(example.join("overlays/home/kustomization.yaml"))
        .expect("home")
        .replace(
            "  - ../../base\n",
            "  - ../../base\n  - db-password.enc.yaml\n",
        );
    repo.write(
        "examples/homelab-overlays/overlays/home/kustomization.yaml",
        &home_overlay,
    );
    let moved = repo.commit_and_push("base and overlays");
    sh(&format!(
        "kubectl -n {ns} patch gitsync homelab --type merge \\
           -p '{{\"spec\":{{\"path\":\"examples/homelab-overlays/overlays/home\"}}}}' >/dev/null",
        ns = home.name
    ));
    crate::support::controller::wait_for_revision(
        &gitsyncs,
        "homelab",
        &moved,
        Duration::from_secs(90),
    )
    .await;
    let rails = deployments.get("rails").await.expect("rails");
    assert_eq!(
        rails.metadata.uid, rails_uid,
        "the same object, not re-created"
    );
    let labels = rails.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("environment").map(String::as_str), Some("home"));
    let db = secrets
        .get("rails-db")
        .await
        .expect("still applied, decrypted");
    let value = db
        .data
        .unwrap_or_default()
        .get("password")
        .map(|v| v.0.clone());
    assert_eq!(value, Some(password.as_bytes().to_vec()));

    // The staging GitSync, in its own namespace, with its own copy of the deploy key.
    let staging = TestNamespace::new("tut-staging").await;
    sh(&format!(
        "cd {dir}
         kubectl -n {ns} create secret generic homelab-deploy-key \\
           --from-file=identity=homelab-deploy-key --from-file=known_hosts=known_hosts >/dev/null",
        dir = keys.path().display(),
        ns = staging.name,
    ));
    let _staging_controller = ControllerProcess::start_with_env(
        &staging.name,
        &["--known-hosts", "/nonexistent"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let url = format!(
        "ssh://{user}@127.0.0.1:{}{}",
        sshd.port,
        repo.remote().display()
    );
    crate::support::run_with_input(
        Command::new("kubectl").args(["apply", "-f", "-"]),
        &format!(
            "apiVersion: kubesync.dev/v1alpha1\nkind: GitSync\nmetadata:\n  name: homelab-staging\n  namespace: {ns}\nspec:\n  url: {url}\n  path: examples/homelab-overlays/overlays/staging\n  interval: 5m\n  secretRef:\n    name: homelab-deploy-key\n",
            ns = staging.name
        ),
    );
    sh(&format!(
        "kubectl -n {ns} wait --for=condition=Ready gitsync/homelab-staging --timeout=90s >/dev/null",
        ns = staging.name
    ));
    let staged = sh(&format!(
        "kubectl -n {ns} get deploy rails -o jsonpath='{{.spec.replicas}}'; echo
         kubectl -n {ns} get cronjob -o name | wc -l",
        ns = staging.name
    ));
    assert_eq!(
        staged.split_whitespace().collect::<Vec<_>>(),
        ["1", "0"],
        "{staged}"
    );
}

/// The files of examples/homelab-overlays that section 12 writes out appear in it as written
/// (without their comment lines), so the tutorial and the example cannot drift apart.
fn section_12_files_match_the_tutorial() {
    let example = repo_root().join("examples/homelab-overlays");
    for doc_path in ["docs/tutorial-homelab.md", "docs/ja/tutorial-homelab.md"] {
        let doc = std::fs::read_to_string(repo_root().join(doc_path)).expect("doc");
        for file in [
            "base/kustomization.yaml",
            "overlays/staging/kustomization.yaml",
            "overlays/staging/rails-replicas.yaml",
        ] {
            let text = std::fs::read_to_string(example.join(file)).expect("example file");
            let block: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(|l| format!("   {l}\n"))
                .collect();
            assert!(
                doc.contains(&block),
                "{doc_path} section 12 differs from {file}"
            );
        }
    }
}

/// The JSON of a `kubectl patch … -p '<json>'` command.
fn patch_of(block: &str) -> Value {
    let json = block
        .split("-p '")
        .nth(1)
        .and_then(|r| r.split('\'').next());
    serde_json::from_str(json.expect("a -p '…' patch")).expect("patch JSON")
}

/// A GitSync spec: a URL, and the `spec` of a merge patch over it.
fn spec_patched(url: &str, patch: Value) -> kubesync::crd::GitSyncSpec {
    let mut spec = serde_json::json!({"url": url});
    for (k, v) in patch["spec"].as_object().expect("spec").clone() {
        spec[k] = v;
    }
    serde_json::from_value(spec).expect("a valid GitSync spec")
}

/// The fenced blocks of one section (`## 13.` up to the next `## `), with their language.
fn section_blocks(doc: &str, heading: &str) -> Vec<(String, String)> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} is in the doc"));
    let rest = &doc[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```").filter(|l| !l.is_empty()) {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((lang.to_string(), body.join("\n") + "\n"));
        }
    }
    blocks
}

/// Section 13's snippets are the same in English and Japanese; its objects pass the API
/// server's validation (a server-side dry run on the testbed) and its GitSync patches are valid
/// GitSync specs that mean what the text says.
#[tokio::test]
async fn section_13_snippets_match_in_both_languages_and_are_valid() {
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).expect("doc");
    let en = section_blocks(&read("docs/tutorial-homelab.md"), "## 13.");
    let ja = section_blocks(&read("docs/ja/tutorial-homelab.md"), "## 13.");
    assert_eq!(
        en, ja,
        "section 13's commands and YAML differ between en and ja"
    );
    assert_eq!(en.len(), 5, "{en:?}");
    let ns = TestNamespace::new("tut-13").await;
    let hpa = &en[0].1;
    sh(&format!(
        "printf '%s' '{hpa}' | kubectl -n {ns} apply --dry-run=server -f - >/dev/null",
        ns = ns.name
    ));
    let job = read("examples/homelab/rails/migrate-job.yaml").replace(
        "spec:\n  backoffLimit",
        &format!("spec:\n{}  backoffLimit", en[2].1),
    );
    assert!(job.contains("ttlSecondsAfterFinished: 3600"), "{job}");
    let file = ns.name.clone() + "-job.yaml";
    let path = std::env::temp_dir().join(file);
    std::fs::write(&path, job).expect("write");
    sh(&format!(
        "kubectl -n {ns} apply --dry-run=server -f {path} >/dev/null",
        ns = ns.name,
        path = path.display()
    ));
    let spec = |patch| spec_patched("ssh://git@example.org/homelab.git", patch);
    let report = spec(patch_of(&en[3].1));
    assert_eq!(report.drift, kubesync::drift::DriftPolicy::Report);
    let rollback = spec(patch_of(&en[4].1));
    assert!(rollback.rolls_back());
    assert!(rollback.validate().is_ok());
}

/// Section 14's GitSyncs are the same in English and Japanese and are valid GitSyncs, the apps
/// one depending on the infra one.
#[test]
fn section_14_gitsyncs_match_in_both_languages_and_are_valid() {
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).expect("doc");
    let en = section_blocks(&read("docs/tutorial-homelab.md"), "## 14.");
    let ja = section_blocks(&read("docs/ja/tutorial-homelab.md"), "## 14.");
    assert_eq!(en, ja, "section 14's commands differ between en and ja");
    let script = &en[0].1;
    let yaml = script
        .split("<<'YAML'\n")
        .nth(1)
        .and_then(|r| r.split("\nYAML").next())
        .expect("a heredoc");
    let syncs: Vec<GitSync> = yaml
        .split("\n---\n")
        .map(|doc| {
            let value: Value = serde_saphyr::from_str(doc).expect("YAML");
            serde_json::from_value(value).expect("a GitSync")
        })
        .collect();
    assert_eq!(syncs.len(), 2);
    assert!(syncs.iter().all(|s| s.spec.validate().is_ok()));
    assert_eq!(syncs[1].spec.depends_on[0].name, "infra");
    assert_eq!(syncs[0].metadata.name.as_deref(), Some("infra"));
}

/// Section 15's snippets are the same in English and Japanese; the values file is a YAML
/// mapping and the GitSync a valid spec that renders a repository chart with it.
#[test]
fn section_15_helm_chart_matches_in_both_languages_and_is_valid() {
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).expect("doc");
    let en = section_blocks(&read("docs/tutorial-homelab.md"), "## 15.");
    let ja = section_blocks(&read("docs/ja/tutorial-homelab.md"), "## 15.");
    assert_eq!(en, ja, "section 15's snippets differ between en and ja");
    let values: Value = serde_saphyr::from_str(&en[0].1).expect("values YAML");
    assert_eq!(values["crds"]["enabled"], true);
    let yaml = (en[1].1.split("<<'YAML'\n").nth(1))
        .and_then(|r| r.split("\nYAML").next())
        .expect("a heredoc");
    let value: Value = serde_saphyr::from_str(yaml).expect("YAML");
    let sync: GitSync = serde_json::from_value(value).expect("a GitSync");
    assert!(sync.spec.validate().is_ok());
    let helm = sync.spec.helm.expect("spec.helm");
    assert_eq!(helm.values_files, ["infra/cert-manager-values.yaml"]);
    assert!(en[0].1.starts_with(&format!("# {}", helm.values_files[0])));
    assert!(helm.repo_url.is_some_and(|u| u.starts_with("https://")));
    assert!(
        en[1].1.contains("status.helmChart.version")
            || en[1].1.contains(".status.helmChart.version")
    );
}

/// Section 16's commands are the same in both languages, and its patches make valid GitSync
/// specs with the receivers and the commit status they say.
#[test]
fn section_16_notifications_match_in_both_languages_and_are_valid() {
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).expect("doc");
    let en = section_blocks(&read("docs/tutorial-homelab.md"), "## 16.");
    let ja = section_blocks(&read("docs/ja/tutorial-homelab.md"), "## 16.");
    assert_eq!(en, ja, "section 16's commands differ between en and ja");
    assert_eq!(en.len(), 3, "{en:?}");
    let spec = |patch| {
        let spec = spec_patched("ssh://git@git.home.lan/hanako/homelab.git", patch);
        assert!(spec.validate().is_ok());
        spec
    };
    let discord = spec(patch_of(&en[0].1));
    let receivers = discord.notify.expect("spec.notify");
    assert_eq!(
        receivers[0].provider,
        kubesync::notify::payload::Provider::Discord
    );
    assert!(
        en[0]
            .1
            .contains(&format!("secret generic {}", receivers[0].secret_ref.name))
    );
    let ntfy = spec(patch_of(&en[1].1)).notify.expect("spec.notify");
    assert_eq!(
        ntfy[0].events(),
        kubesync::notify::EventKind::DEFAULT.to_vec()
    );
    let forge = spec(patch_of(&en[2].1));
    let status = forge.commit_status.expect("spec.commitStatus");
    let repo =
        kubesync::notify::forge::repository(&forge.url, status.forge, status.api_url.as_deref())
            .expect("the forge's API");
    assert_eq!(repo.api, "https://git.home.lan/api/v1");
    assert!(
        en[2]
            .1
            .contains(&format!("secret generic {}", status.secret_ref.name))
    );
    assert!(en[2].1.contains("statusPageURL="));
}
