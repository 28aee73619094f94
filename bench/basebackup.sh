#!/usr/bin/env bash
# Base backup benchmark: `pgbackd base-backup` (pg_basebackup -Ft -X none streamed through the
# tar filter, compression, SHA-256 and the local target, committed once its last WAL segment is
# archived) against `pg_basebackup -Ft -D - -X none --checkpoint=fast > /dev/null` of the same
# cluster, same run, interleaved, best of RUNS; with pgbackd's peak RSS.
#
#   bench/basebackup.sh [SCALE] [RUNS]    (default scale 10, 3 runs)
#
# Both run with the cluster's archive_command set to `pgbackd archive-push` (a base backup is
# kept only once its WAL is archived, and pg_basebackup waits for the archiver too).
# Issue 17 target: wall time <= 1.15x pg_basebackup, peak RSS <= 64 MiB.
set -euo pipefail
scale=${1:-10}; runs=${2:-3}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
data=bench_$scale
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$data'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $data ..."
  "$here/lib/gendata.sh" "$port" "$data" "$scale" >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d "$dir/brun.XXXXXX")
old=$(psql -Atc "show archive_command" postgres)
restore_archive_command() {
  psql -qc "alter system set archive_command = '${old//\'/\'\'}'" -c "select pg_reload_conf()" postgres >/dev/null || true
  rm -rf "$work"
}
trap restore_archive_command EXIT
cat >"$work/pgbackd.yaml" <<YAML
local_backup_dir: $work/repo
reports: {dir: $work/reports}
wal: {name: bench, server: {host: 127.0.0.1, port: $port, username: postgres}}
YAML
chmod 755 "$work"; chown -R postgres: "$work"
psql -qc "alter system set archive_command = '$pgbackd -c $work/pgbackd.yaml --log-level warn archive-push %p'" \
  -c "select pg_reload_conf()" postgres >/dev/null
size=$(psql -Atc "select pg_size_pretty(sum(pg_database_size(oid))) from pg_database" postgres)
echo "cluster of $size, $runs runs"

# seconds and peak RSS (KiB) of one command
time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
better() { [ -z "$2" ] || awk "BEGIN{exit !($1 < $2)}"; }
best_pg=""; best_ours=""; rss=0
for _ in $(seq "$runs"); do
  read -r t _ < <(time_once "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D - -Ft -X none \
    --checkpoint=fast --manifest-checksums=SHA256)
  if better "$t" "$best_pg"; then best_pg=$t; fi
  rm -rf "$work/repo/clusters/bench/"*-base-*
  read -r t m < <(time_once runuser -u postgres -- "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn base-backup)
  if better "$t" "$best_ours"; then best_ours=$t; fi
  [ "$m" -gt "$rss" ] && rss=$m
done
stored=$(du -sb "$work/repo/clusters/bench/"*-base-*/base.tar* | cut -f1)

printf '\n%-44s %9s %9s\n' "base backup" "seconds" "ratio"
printf '%-44s %9s %9s\n' "pg_basebackup -Ft -D - -X none > /dev/null" "$best_pg" "1.00x"
printf '%-44s %9s %9s\n' "pgbackd base-backup (zstd, SHA-256, local)" "$best_ours" \
  "$(awk "BEGIN{printf \"%.2fx\", $best_ours / $best_pg}")"
echo "pgbackd peak RSS $(awk "BEGIN{printf \"%.1f\", $rss / 1024}") MiB; stored $(awk "BEGIN{printf \"%.1f\", $stored / 1048576}") MiB"
