# Multi-stage build of the kubesync image. The chart and the image are completed in the
# "Ship it" issue; this builds the binary and copies it onto an empty base.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM scratch
COPY --from=build /src/target/release/kubesync /kubesync
USER 65532:65532
ENTRYPOINT ["/kubesync"]
