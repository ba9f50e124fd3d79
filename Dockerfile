# syntax=docker/dockerfile:1
# telehub in a container: `docker build -t telehub .` then
#   docker run --stop-timeout 30 -p 8443:8443 -v telehub-data:/data -v telehub-certs:/certs telehub
# (--stop-timeout: the hub drains for up to 10 s, then commits the last acks;
# Docker's default of 10 s would kill it before that.)
# (README, "Containers"). Not built in CI: no container engine runs on the CI machine.

# Build stage: the release binaries. protox compiles the proto in Rust (no protoc);
# rusqlite's bundled SQLite and ring need only the image's C compiler.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && install -D -m 0755 target/release/telehub target/release/device-sim -t /out/

# Run stage: Debian slim, the two binaries, the packaged configuration, a non-root user.
FROM debian:bookworm-slim
# curl for the health check only; ca-certificates for rediss://, PostgreSQL over TLS
# and jwks_url verified against the system's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home telehub \
 && install -d -o telehub -g telehub -m 0750 /data /certs
COPY --from=build /out/telehub /out/device-sim /usr/bin/
COPY deploy/telehub.toml /etc/telehub/telehub.toml
# The packaged file's paths are the Debian package's; the container keeps its state
# in two volumes and listens on every interface of its network namespace.
ENV TELEHUB_DATA_DIR=/data \
    TELEHUB_CERTS_DIR=/certs \
    TELEHUB_LISTEN=0.0.0.0:8443 \
    TELEHUB_LOG_FORMAT=json
USER telehub
WORKDIR /data
VOLUME ["/data", "/certs"]
EXPOSE 8443
# /healthz answers 200 while the hub runs and 503 once it is shutting down. -k: the
# check runs on loopback, whatever certificate the hub was given. Port 8443: change
# it here too if TELEHUB_LISTEN names another.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsk https://127.0.0.1:8443/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/telehub"]
CMD ["serve", "--config", "/etc/telehub/telehub.toml"]
