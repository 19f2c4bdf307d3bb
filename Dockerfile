# syntax=docker/dockerfile:1.7
#
# Images of Loka Stratum, one build for both binaries:
#   docker buildx build --target proxy    -t loka-proxy    .
#   docker buildx build --target operator -t loka-operator .
# The runtime is distroless (glibc, CA certificates, no shell), uid 65532, and runs with a
# read-only root filesystem: the proxy writes only under /var/lib/loka (its working
# directory: the embedded SQLite file and the spool), which a pod mounts as a volume.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Registry, git and target caches survive between builds (BuildKit cache mounts), so a
# change to our code rebuilds only our crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p loka-proxy -p loka-operator \
    && mkdir -p /out /out/data \
    && cp target/release/loka-proxy target/release/loka-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.source="https://github.com/loka-stratum/loka-stratum" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Loka Stratum" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532

FROM runtime AS operator
LABEL org.opencontainers.image.title="loka-operator" \
      org.opencontainers.image.description="Kubernetes operator for Loka Stratum (StratumPool, StratumProxy)"
COPY --from=build /out/loka-operator /usr/local/bin/loka-operator
ENTRYPOINT ["/usr/local/bin/loka-operator"]

FROM runtime AS proxy
LABEL org.opencontainers.image.title="loka-proxy" \
      org.opencontainers.image.description="Loka Stratum: a validating, recording Stratum V1 mining proxy"
COPY --from=build --chown=65532:65532 /out/data /var/lib/loka
COPY --from=build /out/loka-proxy /usr/local/bin/loka-proxy
WORKDIR /var/lib/loka
# glibc gives each thread that meets a locked arena one of its own (up to 8 per core), each
# keeping freed memory: two arenas hold 10,000 miners at 1 share/s in 1.4 kB less RSS per
# miner at the same CPU (BENCHMARKS.md). A pod's env can still set another value.
ENV MALLOC_ARENA_MAX=2
VOLUME ["/var/lib/loka"]
EXPOSE 3333 3334 9090
ENTRYPOINT ["/usr/local/bin/loka-proxy"]
