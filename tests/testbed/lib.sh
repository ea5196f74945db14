# Shared settings for tests/testbed/{build,up,down}. Sourced, not executed.
TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions
. "$TESTBED_DIR/versions"

# Binaries are cached by component and version outside the checkout and never rebuilt.
TESTBED_CACHE=${KUBESYNC_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubesync-testbed}
# Runtime state (certificates, etcd data, logs, pids, kubeconfig) of the running testbed.
TESTBED_STATE=${KUBESYNC_TESTBED_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/kubesync-testbed}

K8S_BIN=$TESTBED_CACHE/kubernetes-$KUBERNETES_VERSION/bin
ETCD_BIN=$TESTBED_CACHE/etcd-$ETCD_VERSION/bin
KWOK_BIN=$TESTBED_CACHE/kwok-$KWOK_VERSION/bin
HELM_BIN=$TESTBED_CACHE/helm-$HELM_VERSION/bin
KUSTOMIZE_BIN=$TESTBED_CACHE/kustomize-$KUSTOMIZE_VERSION/bin
SOPS_BIN=$TESTBED_CACHE/sops-$SOPS_VERSION/bin
REGISTRY_BIN=$TESTBED_CACHE/registry-$REGISTRY_VERSION/bin
AGE_BIN=$TESTBED_CACHE/age-$AGE_VERSION/bin
GITEA_BIN=$TESTBED_CACHE/gitea-$GITEA_VERSION/bin
PROM_BIN=$TESTBED_CACHE/prometheus-debian/bin
PROVISIONER_SOURCE_HASH=$(cat "$TESTBED_DIR"/provisioner/{main.go,go.mod,go.sum} | sha256sum | cut -c1-12)
PROVISIONER_BIN=$TESTBED_CACHE/provisioner-$PROVISIONER_SOURCE_HASH/bin
# One directory on PATH for tests: symlinks to kubectl, helm, kustomize, promtool, prometheus, kwok, sops,
# age, age-keygen, registry and gitea.
TESTBED_PATH=$TESTBED_CACHE/path

# Address ranges as on k3s: Services from a /16 (thousands of cluster IPs), Pods from another.
SERVICE_CIDR=10.43.0.0/16
SERVICE_CIDR_FIRST_IP=10.43.0.1
POD_CIDR=10.42.0.0/16

# Loopback ports; override if they clash with something on the machine.
ETCD_CLIENT_PORT=${KUBESYNC_TESTBED_ETCD_PORT:-23790}
ETCD_PEER_PORT=${KUBESYNC_TESTBED_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${KUBESYNC_TESTBED_APISERVER_PORT:-16443}
KCM_PORT=${KUBESYNC_TESTBED_KCM_PORT:-10257}
SCHEDULER_PORT=${KUBESYNC_TESTBED_SCHEDULER_PORT:-10259}
KWOK_PORT=${KUBESYNC_TESTBED_KWOK_PORT:-10247}

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }
