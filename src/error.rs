//! Error helpers shared by the stages.

/// A Kubernetes client error as one short line: the API's message and code, or the transport error.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let message = status.message.trim();
            if status.reason.is_empty() {
                format!("{message} ({})", status.code)
            } else {
                format!("{message} ({} {})", status.code, status.reason)
            }
        }
        other => other.to_string(),
    }
}
