#!/bin/sh
# Assembles the image's root filesystem: rootfs.sh <static kubesync binary> <target dir>.
# Used by the Dockerfile and by .ci/image, so both produce the same image.
set -eu
binary=$1 root=$2
[ -r "$binary" ] || { echo "rootfs.sh: cannot read $binary" >&2; exit 1; }
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/var/cache/kubesync"
cp "$binary" "$root/kubesync"
chmod 0755 "$root/kubesync"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/var/cache/kubesync" 2>/dev/null || true
