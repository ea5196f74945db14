#!/bin/sh
# Assembles the image's root filesystem:
#   rootfs.sh <static kubesync binary> <static kustomize binary> <static helm binary> <target dir>
# Used by the Dockerfile and by .ci/image, so both produce the same image. kustomize and helm sit
# beside kubesync, where kubesync looks for them first.
set -eu
binary=$1 kustomize=$2 helm=$3 root=$4
for f in "$binary" "$kustomize" "$helm"; do
  [ -r "$f" ] || { echo "rootfs.sh: cannot read $f" >&2; exit 1; }
done
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/var/cache/kubesync"
cp "$binary" "$root/kubesync"
cp "$kustomize" "$root/kustomize"
cp "$helm" "$root/helm"
chmod 0755 "$root/kubesync" "$root/kustomize" "$root/helm"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/var/cache/kubesync" 2>/dev/null || true
