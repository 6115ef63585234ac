# syntax=docker/dockerfile:1
# cxstream image: `docker build -t cxstream .` then `docker run cxstream --help`.
# One binary, every subcommand (journey, migrate, topics, simulate, report, probe, check-map).

FROM rust:1.95-bookworm AS build
# rdkafka-sys builds its bundled librdkafka with ./configure + make (no cmake) and links the
# system zlib and OpenSSL (TLS and SASL/SCRAM to Kafka) found by pkg-config; SASL/GSSAPI,
# zstd and curl are disabled.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out
# because the cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p cxstream --locked \
 && install -D target/release/cxstream /out/cxstream \
 && strip --strip-debug /out/cxstream

FROM debian:bookworm-slim
# Same Debian release as the builder, so the glibc and zlib the binary links are there;
# OpenSSL's library and the CA certificates for TLS to Kafka.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/cxstream /usr/local/bin/cxstream
RUN ! ldd /usr/local/bin/cxstream | grep 'not found' \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cxstream
WORKDIR /app
# journey.map defaults to schemas/journeys/retail.yaml, relative to this directory; the
# migrations are embedded in the binary, the rest of schemas/ is the producers' reference.
COPY schemas /app/schemas
# Numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# /metrics, /healthz, /readyz (http.listen; set 0.0.0.0:9464 in a container's config).
EXPOSE 9464
ENTRYPOINT ["cxstream"]
CMD ["journey"]
