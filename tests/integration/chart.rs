//! The Helm chart: lint, render, hardening, monitoring toggles, and RBAC proven on the local
//! control plane by running the controller with nothing but the chart's ServiceAccount token.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};

use crate::support::controller::{
    ControllerProcess, create_gitsync, install_crd, token_kubeconfig,
};
use crate::support::git::{GitDaemon, GitRepo};
use crate::support::manifests::configmap;
use crate::support::{TestNamespace, eventually, repo_root, run, run_with_input};

fn chart() -> PathBuf {
    repo_root().join("charts/kubesync")
}

fn helm_template(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut command = Command::new("helm");
    command
        .args(["template", release])
        .arg(chart())
        .args(["-n", namespace, "--include-crds"]);
    for s in sets {
        command.args(["--set", s]);
    }
    let yaml = run(&mut command);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("helm output is YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn kubectl_apply(yaml: &str, extra: &[&str]) {
    run_with_input(
        Command::new("kubectl")
            .args([
                "apply",
                "--server-side",
                "--field-manager=helm-test",
                "-f",
                "-",
            ])
            .args(extra),
        yaml,
    );
}

fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_json::to_string(d).expect("json")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes a release's cluster-scoped objects (namespaced ones go with the test namespace).
fn delete_cluster_scoped(release: &str) {
    let _ = Command::new("kubectl")
        .args(["delete", "clusterrole,clusterrolebinding", "-l"])
        .arg(format!("app.kubernetes.io/instance={release}"))
        .output();
}

#[test]
fn chart_lints_renders_its_toggles_and_is_hardened() {
    run(Command::new("helm").arg("lint").arg(chart()));
    let everything = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "knownHosts=github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        "replicaCount=2",
        "notifications.defaults[0].provider=ntfy",
        "notifications.defaults[0].secretName=ntfy-topic",
        "notifications.defaults[0].events={failed,recovered}",
        "statusPageURL=https://kubesync.home.lan/",
    ];
    let mut lint = Command::new("helm");
    lint.arg("lint").arg(chart());
    for s in everything {
        lint.args(["--set", s]);
    }
    run(&mut lint);
    // The schema refuses what it does not know.
    let bad = Command::new("helm")
        .arg("lint")
        .arg(chart())
        .args(["--set", "rbac.scope=everything"])
        .output()
        .expect("helm");
    assert!(
        !bad.status.success(),
        "values.schema.json refuses rbac.scope=everything"
    );

    let defaults = helm_template("ks", "kubesync", &[]);
    let default_kinds = kinds(&defaults);
    for k in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "Service",
        "ClusterRole",
    ] {
        assert!(
            default_kinds.contains(&k.to_string()),
            "{k} in {default_kinds:?}"
        );
    }
    for k in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            !default_kinds.contains(&k.to_string()),
            "{k} only when enabled"
        );
    }
    assert!(!defaults.iter().any(|d| {
        d["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-dashboard"))
    }));

    let all = helm_template("ks", "kubesync", &everything);
    let all_kinds = kinds(&all);
    for k in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            all_kinds.contains(&k.to_string()),
            "{k} rendered when enabled"
        );
    }

    // Hardening of the pod.
    let deployment = all
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    // Default notification receivers: the flag, and a Role that reads their Secrets only.
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--notify=provider=ntfy,secret=ntfy-topic,events=failed+recovered")
            && args.contains("--status-page-url=https://kubesync.home.lan/"),
        "{args}"
    );
    let secret_rules: Vec<Value> = (all.iter())
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| (r["resources"].as_array()).is_some_and(|a| a.iter().any(|x| x == "secrets")))
        .collect();
    assert!(
        secret_rules
            .iter()
            .any(|r| r["resourceNames"] == serde_json::json!(["ntfy-topic"])
                && r["verbs"] == serde_json::json!(["get"])),
        "{secret_rules:?}"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        container["resources"]["requests"],
        json!({"cpu": "10m", "memory": "32Mi"})
    );
    assert!(
        container["resources"]["limits"]["memory"].is_string(),
        "a memory limit"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--leader-election"),
        "two replicas elect a leader: {args:?}"
    );
    assert!(args.contains(&"--known-hosts=/etc/kubesync/known_hosts"));
    let volumes = pod["volumes"].as_array().expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "cache" && v["emptyDir"].is_object())
    );
    assert!(
        volumes.iter().any(|v| v["configMap"].is_object()),
        "known_hosts from a ConfigMap"
    );
    let one = helm_template("ks", "kubesync", &[]);
    let one_args = one
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .clone();
    assert!(
        !one_args
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--leader-election"),
        "one replica: no election"
    );

    // The alerts are valid PromQL rules, and every metric they and the dashboard use exists.
    let rule = all
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_file = dir.path().join("rules.yaml");
    std::fs::write(
        &rules_file,
        serde_json::to_string(&rule["spec"]).expect("json"),
    )
    .expect("write");
    let checked = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_file));
    assert!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    let dashboard = all
        .iter()
        .find(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("dashboard ConfigMap");
    let dashboard: Value =
        serde_json::from_str(dashboard["data"]["kubesync.json"].as_str().expect("json"))
            .expect("dashboard JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 5));
    // Families appear once they have a series: record a sync that touches every one.
    let metrics = kubesync::metrics::Metrics::new();
    let report = kubesync::sync::SyncReport {
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        commit_time: Some(1_700_000_000),
        fetch_duration: Some(Duration::from_millis(5)),
        prune_blocked: Some(kubesync::sync::PruneBlocked::EmptySource),
        ..Default::default()
    };
    metrics.record_sync("apps/web", &report, 3, true);
    metrics.set_suspended("apps/web", false);
    let exported = metrics.encode();
    let text = format!("{}{}", rule["spec"], dashboard);
    let mut used: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kubesync_"))
        .map(|w| {
            w.trim_end_matches("_bucket")
                .trim_end_matches("_total")
                .to_string()
        })
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for metric in &used {
        assert!(
            exported.contains(&format!("# HELP {metric} ")),
            "{metric} is exported: {exported}"
        );
    }
}

fn install_release(release: &str, ns: &str, sets: &[&str]) -> String {
    let docs: Vec<Value> = helm_template(release, ns, sets)
        .into_iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
        .collect();
    kubectl_apply(&to_yaml(&docs), &[]);
    let sa = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart's ServiceAccount")
        .to_string();
    run(Command::new("kubectl").args(["create", "token", &sa, "-n", ns, "--duration=1h"]))
        .trim()
        .to_string()
}

#[tokio::test]
async fn the_charts_rbac_is_enough_and_namespace_scope_is_enforced() {
    let ns = TestNamespace::new("chart").await;
    let other = TestNamespace::new("chart-other").await;
    install_crd(&ns.client).await;
    let release = format!("r{}", &ns.name[ns.name.len() - 4..]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            delete_cluster_scoped(&self.0);
        }
    }
    let _cleanup = Cleanup(release.clone());
    let repo = GitRepo::new();
    repo.write("a.yaml", &configmap("from-chart", "one"));
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::start(repo.root.path());
    let url = daemon.url();
    let dir = tempfile::tempdir().expect("tempdir");

    // The whole rendered chart (CRD included) applies server-side.
    let rendered = helm_template(&release, &ns.name, &[]);
    kubectl_apply(&to_yaml(&rendered), &["--force-conflicts"]);

    // Cluster scope: the controller with only the chart's ServiceAccount token brings a GitSync to Ready.
    let token = install_release(&release, &ns.name, &[]);
    let kubeconfig = token_kubeconfig(dir.path(), &token);
    let controller = ControllerProcess::start_with_env(
        &ns.name,
        &["--leader-election", "--lease-namespace", &ns.name],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let api = create_gitsync(&ns, "app", json!({"url": url, "interval": "1h"})).await;
    let status = eventually(
        Duration::from_secs(40),
        "GitSync Ready with the chart's RBAC",
        || async {
            let status = api.get("app").await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "True").then_some(status)
        },
    )
    .await;
    assert_eq!(
        status.last_applied_revision.as_deref(),
        Some(first.as_str())
    );
    let events = run(Command::new("kubectl").args(["get", "events", "-n", &ns.name]));
    assert!(events.contains("Synced"), "Events are written: {events}");
    drop(controller);

    // Namespace scope: a GitSync aimed at a namespace not listed fails as forbidden, changing nothing.
    let scoped = format!("{release}-ns");
    let _cleanup_scoped = Cleanup(scoped.clone());
    let token = install_release(
        &scoped,
        &ns.name,
        &[
            "rbac.scope=namespaces",
            &format!("rbac.namespaces={{{}}}", ns.name),
        ],
    );
    let kubeconfig = token_kubeconfig(dir.path(), &token);
    let controller =
        ControllerProcess::start_with_env(&ns.name, &[], &[("KUBECONFIG", &kubeconfig)]);
    let api = create_gitsync(
        &ns,
        "elsewhere",
        json!({"url": url, "interval": "1h", "targetNamespace": other.name}),
    )
    .await;
    let status = eventually(
        Duration::from_secs(40),
        "the out-of-scope GitSync fails",
        || async {
            let status = api.get("elsewhere").await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then_some(status)
        },
    )
    .await;
    let error = status.last_error.unwrap_or_default();
    assert!(error.to_lowercase().contains("forbidden"), "{error}");
    assert!(
        error.contains(&format!("configmap/from-chart -n {}", other.name)),
        "names the object: {error}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(other.client.clone(), &other.name);
    assert!(
        configmaps
            .get_opt("from-chart")
            .await
            .expect("get")
            .is_none(),
        "nothing changed"
    );
    // Inside its namespace the same release works. The GitSync "app" above (its controller is
    // gone) still owns the ConfigMap; an object has one owner, so it goes first.
    run(Command::new("kubectl").args(["delete", "configmap", "from-chart", "-n", &ns.name]));
    let inside = create_gitsync(&ns, "inside", json!({"url": url, "interval": "1h"})).await;
    eventually(
        Duration::from_secs(40),
        "the in-scope GitSync is Ready",
        || async {
            let status = inside.get("inside").await.ok()?.status?;
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    drop(controller);

    // Sharding: the chart's Role lets the replicas list and delete member Leases.
    let token = install_release(&release, &ns.name, &["sharding.enabled=true"]);
    let kubeconfig = token_kubeconfig(dir.path(), &token);
    let lease_name = format!("{release}-kubesync");
    let controller = ControllerProcess::start_with_env(
        &ns.name,
        &[
            "--shards",
            "2",
            "--lease-namespace",
            &ns.name,
            "--lease-name",
            &lease_name,
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    for name in ["app", "inside", "elsewhere"] {
        run(Command::new("kubectl").args(["delete", "gitsync", name, "-n", &ns.name]));
    }
    run(Command::new("kubectl").args(["delete", "configmap", "from-chart", "-n", &ns.name]));
    let sharded = create_gitsync(&ns, "sharded", json!({"url": url, "interval": "1h"})).await;
    eventually(
        Duration::from_secs(40),
        "a GitSync is Ready under sharding with the chart's RBAC",
        || async {
            let status = sharded.get("sharded").await.ok()?.status?;
            (status.conditions.iter())
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    assert_eq!(controller.metric("kubesync_shard_owned{shard=\"1\"}"), 1.0);
    assert!(
        !controller.log_text().contains("listing member leases"),
        "member Leases are listed: {}",
        controller.log_text()
    );
}
