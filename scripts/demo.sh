#!/usr/bin/env bash
# The local demo on the embedded default config: a throwaway PostgreSQL cluster, one backup into
# ./pgbackd-demo/repository, one restore into a new database, proven identical table by table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo run --release --locked --quiet -- demo "$@"
