#!/usr/bin/env bash
# Incremental benchmark: full backup, ~1 % change, incremental; for scattered change
# (bench/lib/churn.sh) and clustered change (bench/lib/churn_clustered.sh), on copies of the
# shared data set. Prints the incremental's stored bytes as a share of the full's, its wall time
# against the full's, and its peak RSS; checks that it restores (deep verify). With restic
# installed (apt install restic) it runs the same with `restic backup --stdin` for comparison.
#
#   bench/incremental.sh [SCALE]      (default 30)
#
# Issue 7 targets: <= 2 % of the full for both kinds, wall <= 1.5x a full, RSS <= 256 MiB.
set -euo pipefail
scale=${1:-30}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
src=bench_$scale
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$src'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $src ..."
  "$here/lib/gendata.sh" "$port" "$src" "$scale" >/dev/null
fi
work=$(mktemp -d "$dir/irun.XXXXXX"); trap 'rm -rf "$work"; dropdb --if-exists inc_bench 2>/dev/null || true' EXIT

timed() { # label command... -> prints "seconds rss_kib" of the command
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}

run_kind() { # churn script -> one result line
  local churn=$1 name=$2
  dropdb --if-exists inc_bench; createdb -T "$src" inc_bench
  rm -rf "$work/repo" "$work/reports"
  cat >"$work/pgbackd.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: inc_bench}
local_backup_dir: $work/repo
reports: {dir: $work/reports}
backup: {min_size_ratio: 0}
YAML
  read -r t_full _ < <(timed "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup)
  "$here/lib/$churn" "$port" inc_bench 1 >/dev/null
  read -r t_inc rss_inc < <(timed "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup --kind incremental)
  "$pgbackd" -c "$work/pgbackd.yaml" list --json >"$work/list.json"
  read -r full_stored inc_stored inc_id < <(python3 -c '
import json,sys; l=json.load(open(sys.argv[1]))
f=[b for b in l if b["kind"]=="full"][0]; i=[b for b in l if b["kind"]=="incremental"][0]
print(f["stored_bytes"], i["stored_bytes"], i["id"])' "$work/list.json")
  "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn verify "$inc_id" --deep >/dev/null
  local restic_pct="-"
  if command -v restic >/dev/null; then
    export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$work/restic
    rm -rf "$RESTIC_REPOSITORY"; restic init -q
    dropdb inc_bench; createdb -T "$src" inc_bench
    pg_dump -Fc -Z0 inc_bench | restic backup -q --stdin --stdin-filename dump >/dev/null
    local r1; r1=$(du -sb "$RESTIC_REPOSITORY" | cut -f1)
    "$here/lib/$churn" "$port" inc_bench 1 >/dev/null
    pg_dump -Fc -Z0 inc_bench | restic backup -q --stdin --stdin-filename dump >/dev/null
    local r2; r2=$(du -sb "$RESTIC_REPOSITORY" | cut -f1)
    restic_pct=$(awk "BEGIN{printf \"%.1f%%\", ($r2 - $r1) * 100 / $r1}")
  fi
  printf '%-28s %12s %12s %9s %9s %10s %12s\n' "$name" "$full_stored" "$inc_stored" \
    "$(awk "BEGIN{printf \"%.2f%%\", $inc_stored * 100 / $full_stored}")" \
    "$(awk "BEGIN{printf \"%.2fx\", $t_inc / $t_full}")" "$((rss_inc / 1024)) MiB" "$restic_pct"
}

echo
echo "scale $scale; ~1 % of rows changed; incremental = deltas against the full (verified deep)"
printf '%-28s %12s %12s %9s %9s %10s %12s\n' "change" "full bytes" "incr bytes" "incr/full" "time" "peak RSS" "restic incr"
run_kind churn.sh "scattered (churn.sh)"
run_kind churn_clustered.sh "clustered (churn_clustered)"
