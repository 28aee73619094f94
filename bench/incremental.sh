#!/usr/bin/env bash
# Incremental benchmark: full backup, ~1 % change, incremental; for scattered change
# (bench/lib/churn.sh) and clustered change (bench/lib/churn_clustered.sh), on copies of the
# shared data set. Prints the incremental's stored bytes as a share of the full's, its wall time
# against the full's, and its peak RSS; checks that it restores (deep verify). With restic
# installed (apt install restic) it runs the same with `restic backup --stdin` for comparison.
#
#   bench/incremental.sh [SCALE] [ROUNDS]      (default 30, 5)
#
# Then the chain: one full, then ROUNDS times (1 % change, incremental), for both kinds: each
# round's incremental as a share of the full and its wall time against the full's, the peak RSS
# of those backups, and the restore time
# of the last incremental (the longest chain, with ROUNDS <= backup.max_chain, default 6)
# against a restore of a full backup of the same final state (best of 2, interleaved).
#
# Issue 7 targets: <= 2 % of the full for both kinds, wall <= 1.5x a full, RSS <= 256 MiB.
# Issue 20 targets: every round <= 2 % however long the chain; the last one restores in <= 1.2x
# a full's restore time; peak RSS <= 256 MiB.
set -euo pipefail
scale=${1:-30}; rounds=${2:-5}
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
work=$(mktemp -d "$dir/irun.XXXXXX")
trap 'rm -rf "$work"; dropdb --if-exists inc_bench 2>/dev/null || true; dropdb --if-exists inc_restored 2>/dev/null || true' EXIT

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

chain() { # churn script, name -> one line: each round's share, the last one's restore time
  local churn=$1 name=$2 shares="" times="" peak=0 last_id t_last t_full_restore t_full t_inc
  dropdb --if-exists inc_bench; createdb -T "$src" inc_bench
  rm -rf "$work/repo" "$work/reports"
  read -r t_full _ < <(timed "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup)
  local full_stored; full_stored=$("$pgbackd" -c "$work/pgbackd.yaml" list --json | python3 -c '
import json,sys; print([b for b in json.load(sys.stdin) if b["kind"]=="full"][0]["stored_bytes"])')
  for _ in $(seq "$rounds"); do
    "$here/lib/$churn" "$port" inc_bench 1 >/dev/null
    read -r t_inc rss < <(timed "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup --kind incremental)
    [ "$rss" -gt "$peak" ] && peak=$rss
    times="$times $(awk "BEGIN{printf \"%.2fx\", $t_inc / $t_full}")"
    last_id=$(cat "$work/out")
    local stored; stored=$("$pgbackd" -c "$work/pgbackd.yaml" list --json | python3 -c '
import json,sys; print([b for b in json.load(sys.stdin) if b["id"]==sys.argv[1]][0]["stored_bytes"])' "$last_id")
    shares="$shares $(awk "BEGIN{printf \"%.2f%%\", $stored * 100 / $full_stored}")"
  done
  "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn verify "$last_id" --deep >/dev/null
  # a full of the same final state, restored the same way; best of 2, interleaved
  "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup >"$work/full_id"
  local t_last=999999 t_full_restore=999999 t rss_restore=0 r
  for _ in 1 2; do
    for id in "$last_id" "$(cat "$work/full_id")"; do
      dropdb --if-exists inc_restored
      read -r t r < <(timed "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn restore "$id" --target-database inc_restored --create)
      if [ "$id" = "$last_id" ]; then
        t_last=$(awk "BEGIN{print ($t < $t_last) ? $t : $t_last}"); [ "$r" -gt "$rss_restore" ] && rss_restore=$r
      else
        t_full_restore=$(awk "BEGIN{print ($t < $t_full_restore) ? $t : $t_full_restore}")
      fi
    done
  done
  printf '%-28s stored %s | backup time vs the full%s | restore of round %s %.2f s vs a full %.2f s = %s (RSS %s MiB) | backup peak RSS %s MiB\n' \
    "$name" "$shares" "$times" "$rounds" "$t_last" "$t_full_restore" "$(awk "BEGIN{printf \"%.2fx\", $t_last / $t_full_restore}")" \
    "$((rss_restore / 1024))" "$((peak / 1024))"
}

echo
echo "chain: one full, then $rounds rounds of ~1 % change + incremental; each round's stored share of the full"
chain churn.sh "scattered (churn.sh)"
chain churn_clustered.sh "clustered (churn_clustered)"
