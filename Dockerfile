# tollgate container image.
#
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 -e TOLLGATE_JWT_SECRET=... tollgate            # gateway (embedded mock)
#   docker run --rm tollgate mock-provider --listen 0.0.0.0:9090                 # mock provider alone
#   docker run --rm -e TOLLGATE_JWT_SECRET=... tollgate token --sub alice --plan pro
#
# Plain Dockerfile syntax (no BuildKit-only features), so the legacy builder works too.

# ---- builder ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependency layer: build every dependency against a stub src/, so that a change under src/
# does not recompile the dependency graph. Rebuilt only when Cargo.toml, Cargo.lock, benches/ or
# testkit/Cargo.toml change. benches/ is copied for real because Cargo.toml declares [[bench]]
# targets and cargo refuses a manifest whose declared targets have no file (it does not compile
# them here). The workspace member testkit/ (test support, a dev-dependency) needs only its
# manifest and a stub lib to load; `-p tollgate` builds the gateway alone, never the testkit.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY testkit/Cargo.toml ./testkit/Cargo.toml
RUN mkdir -p src testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo '' > testkit/src/lib.rs \
    && cargo build --release --locked -p tollgate \
    && rm -rf src \
              target/release/tollgate target/release/tollgate.d \
              target/release/.fingerprint/tollgate-* \
              target/release/deps/tollgate-* target/release/deps/libtollgate-*

# The real sources. The touch makes sure cargo never mistakes them for the stubs.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p tollgate \
    && ./target/release/tollgate --version

# ---- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for an https:// upstream. No curl: the compose healthcheck uses bash's
# /dev/tcp, which this image already has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --no-create-home \
               --home-dir /nonexistent --shell /usr/sbin/nologin tollgate

COPY --from=builder /build/target/release/tollgate /usr/local/bin/tollgate
# The documented reference configuration, for `--config` or as a starting point for a mount.
COPY config/default.toml /etc/tollgate/default.toml

USER 10001:10001
EXPOSE 8080
# Inside a container the gateway must listen on all interfaces (the built-in default is loopback).
ENV TOLLGATE_LISTEN=0.0.0.0:8080

ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
