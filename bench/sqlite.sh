#!/usr/bin/env bash
# SQLite benchmark: a realistic database (bench/lib/sqlite_data.py: users, orders with an index,
# JSON events; ROWS orders, 115 MB at the default 1,000,000) in WAL mode.
#
#   bench/sqlite.sh [ROWS] [RUNS]      (default 1000000 rows, 3 runs; best of RUNS)
#
# Full backup: pgbackd backup-sqlite against what the users' scripts do (SQLite's online backup
# API through Python's sqlite3, then zstd -1 of the copy), interleaved: wall time ratio, and
# pgbackd's peak RSS.
# Incremental (issue 22: a 1 % change stores <= 2 % of a full): a full, one churn, an
# incremental; stored bytes of the incremental / stored bytes of the full, for three churns:
#   updates: 1 % of rows updated (scattered, every 100th id)
#   mixed:   1 % of rows changed (0.5 % updated, 0.4 % inserted, 0.1 % deleted)
#   churnsh: what bench/lib/churn.sh does to PostgreSQL (1 % updated, 1 % inserted, 0.1 % deleted)
set -euo pipefail
rows=${1:-1000000}; runs=${2:-3}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}
(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
source_db=$dir/sqlite-$rows.db
if [ ! -f "$source_db" ]; then
  echo "generating $rows rows into $source_db ..."
  python3 "$here/lib/sqlite_data.py" generate "$source_db.tmp" "$rows" wal
  mv "$source_db.tmp" "$source_db"
fi
work=$(mktemp -d "$dir/sqlite.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/pgbackd.yaml" <<YAML
local_backup_dir: $work/repo
sqlite:
  - name: bench
    path: $work/bench.db
YAML
now() { date +%s.%N; }
best() { sort -g | head -1; }

cp "$source_db" "$work/bench.db"
echo "database: $(stat -c %s "$work/bench.db") bytes, $rows orders"
base_t=(); ours_t=()
for _ in $(seq "$runs"); do
  t0=$(now)
  python3 -c "import sqlite3,sys; s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); s.backup(d); d.close()" \
    "$work/bench.db" "$work/copy.db"
  zstd -q -1 -f "$work/copy.db" -o "$work/copy.db.zst"
  base_t+=("$(echo "$(now) - $t0" | bc)")
  rm -f "$work/copy.db" "$work/copy.db.zst"
  rm -rf "$work/repo"
  t0=$(now)
  /usr/bin/time -f %M -o "$work/rss" "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup-sqlite --full >/dev/null 2>&1
  ours_t+=("$(echo "$(now) - $t0" | bc)")
done
b=$(printf '%s\n' "${base_t[@]}" | best); o=$(printf '%s\n' "${ours_t[@]}" | best)
printf 'full backup: backup API + zstd -1 %.2f s, pgbackd %.2f s: %.2fx; pgbackd peak RSS %d MiB\n' \
  "$b" "$o" "$(echo "$o / $b" | bc -l)" "$(( $(cat "$work/rss") / 1024 ))"

for mode in updates mixed churnsh; do
  rm -rf "$work/repo"; cp "$source_db" "$work/bench.db"; rm -f "$work/bench.db-wal" "$work/bench.db-shm"
  "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup-sqlite --full >/dev/null 2>&1
  python3 "$here/lib/sqlite_data.py" churn "$work/bench.db" 42 "$mode"
  t0=$(now)
  /usr/bin/time -f %M -o "$work/rss" "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup-sqlite >/dev/null 2>&1
  t=$(echo "$(now) - $t0" | bc)
  "$pgbackd" -c "$work/pgbackd.yaml" list --json 2>/dev/null | python3 -c "
import json, sys
rows = json.load(sys.stdin)
full = next(r for r in rows if r['kind'] == 'full')
inc = next(r for r in rows if r['kind'] == 'incremental')
print(f\"incremental after $mode: {inc['stored_bytes']:,} of a full's {full['stored_bytes']:,} bytes: \"
      f\"{100 * inc['stored_bytes'] / full['stored_bytes']:.2f} %; $t s, peak RSS $(( $(cat "$work/rss") / 1024 )) MiB\")"
done
"$pgbackd" -c "$work/pgbackd.yaml" --log-level warn verify --all --deep >/dev/null 2>&1 && echo "every backup passed deep verification"
