//! A private control plane: its own ports and state, started by `tests/testbed/up` beside the
//! shared one (fault tests kill its components; the remote-cluster test applies to it).
//! Slots in use: 0 and 1 (faults), 2 (remote clusters).
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::support::repo_root;

pub struct PrivateTestbed {
    pub env: Vec<(&'static str, String)>,
    pub state: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl PrivateTestbed {
    /// `slot` picks a set of ports, so that two private control planes can run at once. All are
    /// below Linux's ephemeral range (32768 and up): a port there may be held by any outgoing
    /// connection of the tests at the moment a server binds it.
    pub fn up(slot: u16) -> PrivateTestbed {
        let state = tempfile::tempdir().expect("tempdir");
        let port = |base: u16| (base + 3 * slot).to_string();
        let env = vec![
            (
                "KUBESYNC_TESTBED_STATE",
                state.path().join("tb").display().to_string(),
            ),
            ("KUBESYNC_TESTBED_ETCD_PORT", port(24790)),
            ("KUBESYNC_TESTBED_ETCD_PEER_PORT", port(24800)),
            ("KUBESYNC_TESTBED_APISERVER_PORT", port(26443)),
            ("KUBESYNC_TESTBED_KCM_PORT", port(31257)),
            ("KUBESYNC_TESTBED_SCHEDULER_PORT", port(31259)),
            ("KUBESYNC_TESTBED_KWOK_PORT", port(31247)),
        ];
        let out = Command::new(repo_root().join("tests/testbed/up"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("tests/testbed/up");
        assert!(
            out.status.success(),
            "private testbed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let kubeconfig = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export KUBECONFIG="))
            .map(|p| PathBuf::from(p.trim_matches(['\'', '"'])))
            .expect("KUBECONFIG line");
        PrivateTestbed {
            env,
            state,
            kubeconfig,
        }
    }

    pub fn pid_file(&self, component: &str) -> PathBuf {
        self.state
            .path()
            .join("tb/pids")
            .join(format!("{component}.pid"))
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        assert_eq!(config.cluster_url.host(), Some("127.0.0.1"));
        Client::try_from(config).expect("client")
    }
}

impl Drop for PrivateTestbed {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("tests/testbed/down"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

pub async fn create_namespace(client: &Client, name: &str) {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
}
