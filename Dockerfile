# kubesync image: a static binary on an empty base, with CA certificates, running as 65532.
#
#   buildah build -t kubesync:0.1.0 .      (or docker build)
#
# Stage "rootfs" assembles the final filesystem; the last stage is nothing but that. CI has no
# registry to pull the Rust image from, so .ci/image builds the same rootfs directory from the
# binary it just compiled and passes it as the named build context "rootfs" (buildah
# --build-context rootfs=DIR), which replaces the stage below.
#
# kustomize and helm, pinned (the same versions as tests/testbed/versions; .ci/image checks), are
# built from their Go modules as static binaries and placed beside kubesync, which runs them for
# kustomizations and Helm charts.
FROM docker.io/library/golang:1.26-bookworm AS kustomize
ARG KUSTOMIZE_VERSION=v5.8.2
RUN CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" \
      sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}

# helm, pinned the same way (tests/testbed/versions), for GitSyncs with spec.helm.
FROM docker.io/library/golang:1.26-bookworm AS helm
ARG HELM_VERSION=v4.3.1
RUN CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" \
      helm.sh/helm/v4/cmd/helm@${HELM_VERSION}

FROM docker.io/library/rust:1.95-bookworm AS rootfs
WORKDIR /src
COPY . .
COPY --from=kustomize /go/bin/kustomize /usr/local/bin/kustomize
COPY --from=helm /go/bin/helm /usr/local/bin/helm
RUN RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && sh packaging/rootfs.sh target/x86_64-unknown-linux-gnu/release/kubesync \
      /usr/local/bin/kustomize /usr/local/bin/helm /rootfs

FROM scratch
COPY --from=rootfs /rootfs/ /
USER 65532:65532
ENV HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["/kubesync"]
CMD ["controller"]
