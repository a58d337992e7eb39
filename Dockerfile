# syntax=docker/dockerfile:1
#
# arp-jarvis-rungateway container image.
#
#   docker build -t arp-jarvis-rungateway:0.1.0 \
#       --build-arg ARP_GATEWAY_BUILD_COMMIT="$(git rev-parse HEAD)" .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#       -e JARVIS_RUN_COORDINATOR_URL=http://coordinator:8081 arp-jarvis-rungateway:0.1.0
#
# Two stages: the official Rust image (the toolchain of Cargo.toml's rust-version, Debian
# bookworm) builds the binary; distroless cc-debian12 (glibc, libgcc_s, CA certificates, no shell)
# runs it. Builder and runtime are both Debian 12, so the glibc the binary links is the one it
# finds. deploy/README.md says how this image is run on Kubernetes.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS builder

# Pingora's zlib-ng (libz-ng-sys) is built with cmake; aws-lc-sys and zstd-sys need a C (and,
# for aws-lc's cmake fallback, C++) compiler and perl. Versions are not pinned (DL3008): bookworm
# point releases drop superseded versions, and these tools only build, they do not ship.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake gcc g++ make perl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# 1) Dependencies only: a layer that changes only when Cargo.toml or Cargo.lock do. The crate's
#    own sources are stand-ins here, and their build products are deleted afterwards, so the
#    real build below recompiles the crate (whatever the mtimes of the copied files) and nothing
#    else.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src \
        target/release/arp-jarvis-rungateway* \
        target/release/.fingerprint/arp-jarvis-rungateway-* \
        target/release/build/arp-jarvis-rungateway-* \
        target/release/deps/arp_jarvis_rungateway-* \
        target/release/deps/rungateway-* \
        target/release/deps/librungateway-*

# 2) The crate. spec/ is compiled in (include_str! of the JSON schemas). There is no .git in the
#    build context (.dockerignore), so build.rs takes the commit from this argument.
ARG ARP_GATEWAY_BUILD_COMMIT=""
ENV ARP_GATEWAY_BUILD_COMMIT=${ARP_GATEWAY_BUILD_COMMIT}
COPY spec spec
COPY src src
# The release profile keeps line tables (debug = 1) for profiling: ~160 MB. The image drops them
# (~27 MB) but keeps the symbol table, so backtraces still name functions.
RUN cargo build --release --locked \
 && mkdir -p /out \
 && strip --strip-debug -o /out/arp-jarvis-rungateway target/release/arp-jarvis-rungateway

# ---------------------------------------------------------------------------------------------
# Runtime. The :nonroot variant already runs as 65532; USER is repeated below in numeric form
# because Kubernetes' runAsNonRoot admits only an image whose user is a number (a name such as
# "nonroot" is refused: the kubelet cannot check it is not root). Pin by digest in production:
#   FROM gcr.io/distroless/cc-debian12:nonroot@sha256:<digest>
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="arp-jarvis-rungateway" \
      org.opencontainers.image.description="ARP v1 Run Gateway on Pingora" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/arp-jarvis-rungateway /usr/local/bin/arp-jarvis-rungateway
# Default configuration: listens on 0.0.0.0:8080, admin (metrics, /livez, /readyz) on 0.0.0.0:9090;
# the coordinator comes from JARVIS_RUN_COORDINATOR_URL and auth from ARP_AUTH_* (the STS client
# secret from ARP_AUTH_CLIENT_SECRET, never baked into the image). On Kubernetes a ConfigMap is
# mounted over this directory.
COPY deploy/container/gateway.yaml /etc/arp-jarvis-rungateway/gateway.yaml

# The gateway writes only under /tmp (upgrade socket, pid file). Distroless ships /tmp
# world-writable; with a read-only root filesystem mount a writable volume there
# (Kubernetes: an emptyDir; docker: --read-only --tmpfs /tmp).
USER 65532:65532

# 8080: the Run Gateway API. 9090: admin listener (GET /metrics, /livez, /readyz).
EXPOSE 8080 9090

# No HEALTHCHECK: distroless has no shell, curl or wget to run one, Kubernetes ignores Docker
# HEALTHCHECKs anyway (it uses the startup/readiness/liveness probes on :9090), and a probe binary
# added only for that would grow the attack surface. Outside Kubernetes, point your orchestrator's
# HTTP check at http://<container>:9090/readyz.

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/arp-jarvis-rungateway"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--config", "/etc/arp-jarvis-rungateway/gateway.yaml"]
