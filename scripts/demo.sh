#!/usr/bin/env bash
# The local demo on the embedded default config: a throwaway PostgreSQL cluster, one backup into
# ./pgbackd-demo/repository, one restore into a new database, proven identical table by table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
bin=target/release/pgbackd
if [ ! -x "$bin" ] || [ -n "$(find Cargo.toml Cargo.lock src -newer "$bin" -print -quit)" ]; then
  echo "building pgbackd (release; the first build takes 10-15 minutes on 2 cores, cargo shows each crate)"
  cargo build --release --locked
fi
"$bin" demo "$@"
cat <<NEXT

Next steps:
  the binary:        $PWD/$bin   (install it: sudo install -m 0755 $bin /usr/local/bin/pgbackd,
                     or cargo install --locked --path .)
  a config:          start from config/pgbackd.yaml (every key: docs/configuration.md), then
                     pgbackd --config my.yaml check-config --connect
  back up, restore:  pgbackd --config my.yaml backup; pgbackd --config my.yaml list
                     pgbackd --config my.yaml test-restore --latest
  as a service:      docs/operations.md ("Run as a service": systemd unit or docker-compose)
NEXT
