//! Remote clusters: a GitSync whose `spec.kubeConfig` names a Secret applies to the cluster that
//! kubeconfig reaches. The kubeconfig must be self-contained and must not make the controller
//! run a command or read its own files: a Secret that a tenant writes could otherwise run code
//! in the controller or send its own ServiceAccount token elsewhere. Refused are `exec` and
//! `auth-provider` users, file paths (`tokenFile`, `client-certificate`, `client-key`,
//! `certificate-authority`: embed them, as `kubectl config view --flatten` does) and
//! `insecure-skip-tls-verify`. Messages name the entry and the field, never a value.
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The Secret key read when `spec.kubeConfig.secretRef.key` is not set.
pub const DEFAULT_KEY: &str = "value";

/// Why a kubeconfig cannot be used; never holds a credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubeconfigProblem {
    #[error("is not a kubeconfig (YAML that does not parse as one)")]
    NotKubeconfig,
    #[error("{entry}: {field} is refused: {why}")]
    Refused {
        entry: String,
        field: &'static str,
        why: &'static str,
    },
    #[error("cannot be used: {0}")]
    Unusable(String),
}

const RUNS_A_COMMAND: &str = "it would run a command inside the controller";
const READS_A_FILE: &str = "it would read a file of the controller's own filesystem; embed the \
                            data instead (kubectl config view --flatten)";

/// Parses and checks a kubeconfig from a Secret.
pub fn parse(text: &str) -> Result<Kubeconfig, KubeconfigProblem> {
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|_| KubeconfigProblem::NotKubeconfig)?;
    check(&kubeconfig)?;
    Ok(kubeconfig)
}

fn check(kubeconfig: &Kubeconfig) -> Result<(), KubeconfigProblem> {
    let refused = |entry: String, field, why| Err(KubeconfigProblem::Refused { entry, field, why });
    for named in &kubeconfig.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let entry = format!("users[{}]", named.name);
        if user.exec.is_some() {
            return refused(entry, "exec", RUNS_A_COMMAND);
        }
        if user.auth_provider.is_some() {
            return refused(entry, "auth-provider", RUNS_A_COMMAND);
        }
        let files = [
            ("tokenFile", &user.token_file),
            ("client-certificate", &user.client_certificate),
            ("client-key", &user.client_key),
        ];
        if let Some((field, _)) = files.iter().find(|(_, path)| path.is_some()) {
            return refused(entry, field, READS_A_FILE);
        }
    }
    for named in &kubeconfig.clusters {
        let Some(cluster) = &named.cluster else {
            continue;
        };
        let entry = format!("clusters[{}]", named.name);
        if cluster.certificate_authority.is_some() {
            return refused(entry, "certificate-authority", READS_A_FILE);
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return refused(
                entry,
                "insecure-skip-tls-verify",
                "the cluster's certificate must be verified",
            );
        }
    }
    Ok(())
}

/// The client configuration of a checked kubeconfig (its current context).
pub async fn config(kubeconfig: Kubeconfig) -> Result<kube::Config, KubeconfigProblem> {
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| KubeconfigProblem::Unusable(describe(&e)))
}

/// What went wrong, without the text of the kubeconfig (a parse error may quote it).
fn describe(error: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as E;
    match error {
        E::CurrentContextNotSet => "it sets no current-context".into(),
        E::LoadContext(name) => format!("context {name} is not in it"),
        E::LoadClusterOfContext(name) => format!("cluster {name} is not in it"),
        E::MissingClusterUrl => "its cluster has no server".into(),
        E::ParseClusterUrl(_) => "its cluster's server is not a URL".into(),
        _ => "its certificates or keys do not load".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMBEDDED: &str = "apiVersion: v1
kind: Config
clusters:
- name: remote
  cluster: {server: 'https://127.0.0.1:6443', certificate-authority-data: Zm9v}
users:
- name: deployer
  user: {token: tok-secret-value}
contexts:
- name: remote
  context: {cluster: remote, user: deployer}
current-context: remote
";

    #[test]
    fn a_self_contained_kubeconfig_is_accepted() {
        let kubeconfig = parse(EMBEDDED).expect("accepted");
        assert_eq!(kubeconfig.current_context.as_deref(), Some("remote"));
    }

    #[test]
    fn commands_files_and_unverified_tls_are_refused_naming_the_entry() {
        let cases = [
            (
                "user: {token: tok-secret-value}",
                "user: {exec: {command: /bin/sh, apiVersion: client.authentication.k8s.io/v1}}",
                "users[deployer]: exec is refused",
            ),
            (
                "user: {token: tok-secret-value}",
                "user: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}",
                "users[deployer]: tokenFile is refused",
            ),
            (
                "user: {token: tok-secret-value}",
                "user: {client-certificate: /c.crt, client-key: /c.key}",
                "users[deployer]: client-certificate is refused",
            ),
            (
                "certificate-authority-data: Zm9v",
                "certificate-authority: /etc/ca.crt",
                "clusters[remote]: certificate-authority is refused",
            ),
            (
                "certificate-authority-data: Zm9v",
                "insecure-skip-tls-verify: true",
                "clusters[remote]: insecure-skip-tls-verify is refused",
            ),
        ];
        for (from, to, expected) in cases {
            let text = EMBEDDED.replace(from, to);
            assert_ne!(text, EMBEDDED, "{from}");
            let problem = parse(&text).expect_err(expected).to_string();
            assert!(problem.starts_with(expected), "{problem}");
            assert!(!problem.contains("tok-secret-value"), "{problem}");
        }
    }

    #[test]
    fn text_that_is_no_kubeconfig_is_not_quoted() {
        let problem = parse("token: [tok-secret-value").expect_err("not YAML");
        assert_eq!(problem, KubeconfigProblem::NotKubeconfig);
        assert!(!problem.to_string().contains("tok-secret-value"));
    }

    #[tokio::test]
    async fn a_missing_context_is_named() {
        let text = EMBEDDED.replace("current-context: remote", "current-context: elsewhere");
        let problem = config(parse(&text).expect("parses"))
            .await
            .expect_err("no context");
        assert_eq!(
            problem.to_string(),
            "cannot be used: context elsewhere is not in it"
        );
    }
}
