# pgbackd container image.
# Build stage: the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked && strip target/release/pgbackd

# Runtime: Debian slim with PostgreSQL client tools from the PGDG repository, at least as new as
# the servers it dumps (pg_dump 17 dumps servers 9.2 to 17). zstd for manual recovery.
FROM debian:bookworm-slim
ARG PG_MAJOR=17
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg zstd tini \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-${PG_MAJOR} \
 && apt-get purge -y curl gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pgbackd --create-home pgbackd
COPY --from=build /src/target/release/pgbackd /usr/local/bin/pgbackd
# pg_bin_dir defaults to the newest /usr/lib/postgresql/*/bin: the client installed above
ENV PGBACKD_CONFIG=/etc/pgbackd/pgbackd.yaml
# /healthz /readyz /metrics /status (monitoring.listen; 127.0.0.1 by default: set 0.0.0.0:9187 to scrape)
EXPOSE 9187
USER pgbackd
WORKDIR /var/lib/pgbackd
VOLUME ["/var/lib/pgbackd"]
# freshness, not liveness: unhealthy when the daemon is gone, a database's newest full backup is
# older than monitoring.max_age (default twice its schedule's period) or its latest verification
# failed (the first backup needs the start period)
HEALTHCHECK --interval=60s --timeout=10s --start-period=1h --retries=3 CMD ["/usr/local/bin/pgbackd", "healthcheck"]
# tini as PID 1 reaps orphaned grandchildren and forwards SIGTERM/SIGHUP to pgbackd
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pgbackd"]
CMD ["run"]
