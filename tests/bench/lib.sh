# Shared by tests/bench/run, tests/bench/controller and tests/load/run (sourced, not run).

# Starts the testbed, builds the static release binary (the image's, sharing .ci/image's build
# cache) and sets $kubesync.
bench_setup() {
  eval "$(tests/testbed/up)" >/dev/null
  export CARGO_TARGET_DIR="${KUBESYNC_IMAGE_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/kubesync-image-target}"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -q --target x86_64-unknown-linux-gnu
  kubesync="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/kubesync"
}

generate() { # generate <dir> <n> <value>: a third each ConfigMaps, Services, Deployments (0 replicas)
  local dir=$1 n=$2 value=$3 i
  mkdir -p "$dir"
  for ((i = 0; i < n; i++)); do
    case $((i % 3)) in
      0) printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-%d\ndata:\n  value: "%s"\n' "$i" "$value" ;;
      # Headless: the testbed's service range (a /24) has no room for thousands of cluster IPs.
      1) printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-%d\n  annotations: {bench: "%s"}\nspec:\n  clusterIP: None\n  selector: {app: a%d}\n  ports: [{port: 80}]\n' "$i" "$value" "$i" ;;
      2) printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: deploy-%d\n  annotations: {bench: "%s"}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: a%d}}\n  template:\n    metadata: {labels: {app: a%d}}\n    spec: {containers: [{name: c, image: registry.invalid/none:1}]}\n' "$i" "$value" "$i" "$i" ;;
    esac >"$dir/obj-$i.yaml"
  done
}

git_repo() { # git_repo <dir> <n>: a work tree with n generated objects, committed on main
  local dir=$1 n=$2
  generate "$dir" "$n" v1
  git -C "$dir" init -q -b main
  git -C "$dir" add -A
  git -C "$dir" -c user.name=bench -c user.email=bench@localhost commit -q -m "$n objects"
}

git_commit() { # git_commit <dir> <message>
  git -C "$1" add -A
  git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -q -m "$2"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

cpu_seconds() { # user + system CPU of a process, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / hz }' "/proc/$1/stat"
}

install_crd() { "$kubesync" crd | kubectl apply --server-side -f - >/dev/null; kubectl wait --for=condition=Established crd/gitsyncs.kubesync.dev --timeout=60s >/dev/null; }

machine() {
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr); $("$kubesync" --version); $(kubectl version --client 2>/dev/null | head -1)"
}
