# kubesync image: a static binary on an empty base, with CA certificates, running as 65532.
#
#   buildah build -t kubesync:0.1.0 .      (or docker build)
#
# Stage "rootfs" assembles the final filesystem; the last stage is nothing but that. CI has no
# registry to pull the Rust image from, so .ci/image builds the same rootfs directory from the
# binary it just compiled and passes it as the named build context "rootfs" (buildah
# --build-context rootfs=DIR), which replaces the stage below.
FROM docker.io/library/rust:1.95-bookworm AS rootfs
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && sh packaging/rootfs.sh target/x86_64-unknown-linux-gnu/release/kubesync /rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
USER 65532:65532
ENV HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["/kubesync"]
CMD ["controller"]
