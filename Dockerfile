# syntax=docker/dockerfile:1.7
# pgbackd container image.
#   docker build -t pgbackd:0.1.0 .      # BuildKit: the cargo registry and target dir are cached,
#                                        # so a rebuild after a source change takes about a minute
# Base images are pinned to versions; pin them by digest (image@sha256:...) for reproducible builds.

# Build stage: the release binary.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY config ./config
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/pgbackd /usr/local/bin/pgbackd

# Runtime: Debian slim with the PostgreSQL client tools of every supported server major, from the
# PGDG repository. pgbackd dumps and base-backs-up each server with its own major's tools
# (/usr/lib/postgresql/<major>/bin) and restores with the newest. zstd for manual recovery;
# openssh-client carries SFTP targets.
FROM debian:bookworm-20250428-slim
ARG PG_MAJORS="13 14 15 16 17"
# DL3008: the packages follow Debian's and PGDG's security updates; the base image is pinned.
# SC2086: the client package list is split on purpose.
# hadolint ignore=DL3008,SC2086
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg zstd tini openssh-client \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends $(for m in ${PG_MAJORS}; do echo postgresql-client-$m; done) \
 && apt-get purge -y curl gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pgbackd --create-home pgbackd
COPY --from=build /usr/local/bin/pgbackd /usr/local/bin/pgbackd
ENV PGBACKD_CONFIG=/etc/pgbackd/pgbackd.yaml
# /healthz /readyz /metrics /status (monitoring.listen; 127.0.0.1 by default: set 0.0.0.0:9187 to scrape)
EXPOSE 9187
# the pgbackd user created above, by number (resolvable without the image's /etc/passwd)
USER 10001:10001
WORKDIR /var/lib/pgbackd
VOLUME ["/var/lib/pgbackd"]
# freshness, not liveness: unhealthy when the daemon is gone, a database's newest full backup is
# older than monitoring.max_age (default twice its schedule's period) or its latest verification
# failed (the first backup needs the start period)
HEALTHCHECK --interval=60s --timeout=10s --start-period=1h --retries=3 CMD ["/usr/local/bin/pgbackd", "healthcheck"]
# tini as PID 1 reaps orphaned grandchildren and forwards SIGTERM/SIGHUP to pgbackd
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pgbackd"]
CMD ["run"]
