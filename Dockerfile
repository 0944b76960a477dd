# syntax=docker/dockerfile:1
# ingestd container image: a release build on a Debian bookworm runtime, run as a non-root
# user, configured by INGESTD_* environment variables and mounted files.
#
#   docker build -t ingestd .
#   docker run --rm -p 9000:9000 -e INGESTD_REDIS__URL=redis://redis:6379 ingestd
#
# Base images are build arguments so a mirror or a locally made image can stand in
# (deploy/container/build-base-images makes both without a registry).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------- build
FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. The registry download cache is a cache
# mount, so even a dependency change downloads only what is new.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,id=ingestd-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin ingestd \
    && rm -rf src

# The real source. COPY keeps the files' old mtimes, which can be older than the stub
# build above: touch them so cargo rebuilds the crate itself.
COPY src ./src
RUN --mount=type=cache,id=ingestd-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin ingestd \
    && install -D -m 0755 target/release/ingestd /out/ingestd \
    && /out/ingestd --version

# The release profile keeps line tables (debug = "line-tables-only"): ~150 MB of the
# ~190 MB binary. Drop them, keeping the symbol table so backtraces still name functions;
# --build-arg KEEP_DEBUG_INFO=true keeps them, zlib-compressed (~70 MB binary).
ARG KEEP_DEBUG_INFO=false
RUN if [ "${KEEP_DEBUG_INFO}" = true ]; then \
        objcopy --compress-debug-sections=zlib /out/ingestd; \
    else \
        strip --strip-debug /out/ingestd; \
    fi

# -------------------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE}

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and mounted
# secrets can be made readable to it.
ARG INGESTD_UID=10001
RUN groupadd --gid "${INGESTD_UID}" ingestd \
    && useradd --no-log-init --uid "${INGESTD_UID}" --gid ingestd --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ingestd \
    && mkdir -p /var/lib/ingestd/spool \
    && chown "${INGESTD_UID}:${INGESTD_UID}" /var/lib/ingestd/spool

# The binary, the shipped pipelines and a default config; the CA bundle is for TLS to
# AWS, MongoDB Atlas or rediss:// (the runtime base has no ca-certificates package).
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/ingestd /usr/local/bin/ingestd
COPY pipelines/ /etc/ingestd/pipelines/
COPY deploy/container/ingestd.toml /etc/ingestd/ingestd.toml

# Mount your own file or directory over these paths, or point the variables elsewhere.
# Any key can also be set as INGESTD_<SECTION>__<KEY> (e.g. INGESTD_REDIS__URL).
ENV INGESTD_CONFIG_FILE=/etc/ingestd/ingestd.toml \
    INGESTD_PIPELINES_DIR=/etc/ingestd/pipelines \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# The crash-safe spool (spool.dir in the default config): the only path ingestd writes,
# and only while a sink's queue is full. Mount a persistent volume here so spooled
# events survive the container.
VOLUME /var/lib/ingestd/spool

USER ${INGESTD_UID}:${INGESTD_UID}
WORKDIR /etc/ingestd
EXPOSE 9000

# The runtime has bash but no curl: a plain HTTP/1.0 GET over bash's /dev/tcp. The port
# follows INGESTD_HTTP__LISTEN when set. (Docker-format images only: `podman build` needs
# `--format docker` to keep it.)
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/bash", "-c", "listen=${INGESTD_HTTP__LISTEN:-0.0.0.0:9000}; exec 3<>/dev/tcp/127.0.0.1/${listen##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == HTTP/1.?' 200'* ]]"]

# SIGTERM: stop reading, flush every queue and batch, exit 0 within shutdown.deadline
# (default 25s; give the orchestrator's stop timeout a few seconds more).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ingestd"]
CMD ["run"]

LABEL org.opencontainers.image.title="ingestd" \
      org.opencontainers.image.description="Redis events in; MongoDB, Cassandra, DynamoDB and Redis aggregates out" \
      org.opencontainers.image.licenses="Apache-2.0"
