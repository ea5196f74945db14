//! The reference docs agree with the code: CLI flags (from clap), GitSync fields (from the
//! generated CRD) and metrics (from the registry). No cluster needed.
use std::collections::BTreeSet;

use clap::CommandFactory;

use crate::support::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first backticked word of each table row, e.g. "--repo" from "| `--repo` | ...".
fn table_keys(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

#[test]
fn cli_reference_lists_every_flag_and_no_other() {
    let doc = read("docs/reference/cli.md");
    let documented = table_keys(&doc);
    let cli = kubesync::cli::Cli::command();
    let mut in_code = BTreeSet::new();
    let global: Vec<String> = cli
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    in_code.extend(global.iter().cloned());
    for sub in cli.get_subcommands() {
        assert!(
            doc.contains(&format!("kubesync {}", sub.get_name())),
            "subcommand {} is documented",
            sub.get_name()
        );
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                if long == "help" || long == "version" {
                    continue;
                }
                let flag = format!("--{long}");
                assert!(
                    documented.contains(&flag),
                    "{flag} of `kubesync {}` is in docs/reference/cli.md",
                    sub.get_name()
                );
                if let Some(env) = arg.get_env() {
                    let env = env.to_string_lossy();
                    assert!(
                        doc.contains(&format!("`{env}`")),
                        "{flag}'s variable {env} is documented"
                    );
                }
                in_code.insert(flag);
            }
        }
    }
    let documented_flags: BTreeSet<String> = documented
        .into_iter()
        .filter(|k| k.starts_with("--"))
        .collect();
    let stale: Vec<&String> = documented_flags.difference(&in_code).collect();
    assert!(
        stale.is_empty(),
        "documented flags the code does not have: {stale:?}"
    );
}

/// Every property path under spec and status, e.g. "spec.ref.branch" (array items flattened).
fn schema_paths(prefix: &str, schema: &serde_json::Value, out: &mut BTreeSet<String>) {
    let properties = schema
        .get("properties")
        .or_else(|| schema.get("items").and_then(|i| i.get("properties")));
    if let Some(props) = properties.and_then(|p| p.as_object()) {
        for (name, sub) in props {
            let path = format!("{prefix}.{name}");
            out.insert(path.clone());
            // Conditions are the standard metav1.Condition: documented as one row.
            if name != "conditions" {
                schema_paths(&path, sub, out);
            }
        }
    }
}

#[test]
fn gitsync_reference_lists_every_field_and_no_other() {
    let doc = read("docs/reference/gitsync.md");
    let crd = serde_json::to_value(kubesync::crd::crd()).expect("crd");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut in_code = BTreeSet::new();
    schema_paths("spec", &root["spec"], &mut in_code);
    schema_paths("status", &root["status"], &mut in_code);
    assert!(in_code.len() > 30, "{in_code:?}");
    let documented: BTreeSet<String> = table_keys(&doc)
        .into_iter()
        .filter(|k| k.starts_with("spec.") || k.starts_with("status."))
        .collect();
    let missing: Vec<&String> = in_code.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "GitSync fields not in docs/reference/gitsync.md: {missing:?}"
    );
    let stale: Vec<&String> = documented.difference(&in_code).collect();
    assert!(
        stale.is_empty(),
        "documented fields the CRD does not have: {stale:?}"
    );
}

#[test]
fn metrics_reference_lists_every_metric_and_no_other() {
    let doc = read("docs/reference/metrics.md");
    let metrics = kubesync::metrics::Metrics::new();
    let report = kubesync::sync::SyncReport {
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        commit_time: Some(1_700_000_000),
        fetch_duration: Some(std::time::Duration::from_millis(5)),
        render_duration: Some(std::time::Duration::from_millis(40)),
        prune_blocked: Some(kubesync::sync::PruneBlocked::Disabled),
        ..Default::default()
    };
    metrics.record_sync("apps/web", &report, 1, true);
    metrics.set_suspended("apps/web", false);
    metrics.set_watched("apps/web", 1);
    metrics.record_repair("apps/web", &report);
    metrics.record_idle_interval("apps/web");
    let failed = kubesync::sync::SyncReport {
        failure: Some(kubesync::sync::Step::Source),
        ..Default::default()
    };
    metrics.record_sync("apps/web", &failed, 0, false);
    let render_failed = kubesync::sync::SyncReport {
        failure: Some(kubesync::sync::Step::Render),
        ..Default::default()
    };
    metrics.record_sync("apps/web", &render_failed, 0, false);
    metrics.set_drifted("apps/web", 1);
    metrics.record_rollback("apps/web", true);
    metrics.set_shard_owned(0, true);
    use kubesync::notify::deliver::{Delivery, DeliveryKind, Recorder};
    let notification = DeliveryKind::Notification {
        provider: "discord",
        event: "failed",
    };
    metrics.delivery(notification, Delivery::sent);
    metrics.retry(notification);
    let status = DeliveryKind::CommitStatus {
        forge: "gitea",
        state: "success",
    };
    metrics.delivery(status, Delivery::sent);
    let text = metrics.encode();
    let mut in_code = BTreeSet::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        {
            // OpenMetrics names a counter family without `_total`; its samples carry it.
            in_code.insert(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            });
        }
    }
    assert!(in_code.len() >= 18, "{in_code:?}");
    let documented: BTreeSet<String> = table_keys(&doc)
        .into_iter()
        .filter(|k| k.starts_with("kubesync_"))
        .collect();
    assert_eq!(
        documented, in_code,
        "docs/reference/metrics.md vs the exported metrics"
    );
}
