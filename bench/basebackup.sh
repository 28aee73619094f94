#!/usr/bin/env bash
# Base backup benchmark: `pgbackd base-backup` (pg_basebackup -Ft -X none streamed through the
# tar filter, compression, SHA-256 and the local target, committed once its last WAL segment is
# archived) against `pg_basebackup -Ft -D - -X none --checkpoint=fast > /dev/null` of the same
# cluster, same run, interleaved, best of RUNS; with pgbackd's peak RSS.
#
#   [TABLESPACE=1] bench/basebackup.sh [SCALE] [RUNS]    (default scale 10, 3 runs)
#
# `pg_basebackup | zstd -1 -T2 > file` is the same compression in C without any hashing: the cost
# of compressing beside the server on this machine.
# Both run with the cluster's archive_command set to `pgbackd archive-push` (a base backup is
# kept only once its WAL is archived, and pg_basebackup waits for the archiver too).
# With pgbackrest installed, its full backup of the same cluster (zst level 1, local repository,
# process-max 2, start-fast, no archive check) is timed too.
# Issue 17 target: wall time <= 1.15x pg_basebackup, peak RSS <= 64 MiB.
set -euo pipefail
scale=${1:-10}; runs=${2:-3}
source "$(dirname "$0")/lib/archiving.sh"
bench_start brun
data_set "$scale"
cat >"$work/pgbackd.yaml" <<YAML
local_backup_dir: $work/repo
reports: {dir: $work/reports}
wal: {name: bench, server: {host: 127.0.0.1, port: $port, username: postgres}}
YAML
chown -R postgres: "$work"
set_archive_command "$pgbackd -c $work/pgbackd.yaml --log-level warn archive-push %p"
size=$(psql -Atc "select pg_size_pretty(sum(pg_database_size(oid))) from pg_database" postgres)
echo "cluster of $size, $runs runs"

# seconds and peak RSS (KiB) of one command
time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
better() { [ -z "$2" ] || awk "BEGIN{exit !($1 < $2)}"; }
have_pgbackrest=0
if command -v pgbackrest >/dev/null; then
  have_pgbackrest=1
  pgbackrest_conf
fi
best_pg=""; best_ours=""; best_pgbr=""; best_zstd=""; rss=0
for _ in $(seq "$runs"); do
  read -r t _ < <(time_once "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D - -Ft -X none \
    --checkpoint=fast --manifest-checksums=SHA256)
  if better "$t" "$best_pg"; then best_pg=$t; fi
  # the same compression in C, without hashing: what compressing alone costs next to the server
  read -r t _ < <(time_once bash -c "'$bin/pg_basebackup' -h 127.0.0.1 -p $port -U postgres -D - -Ft -X none \
    --checkpoint=fast --manifest-checksums=SHA256 | zstd -q -1 -T2 > '$work/zstd.tar.zst'")
  if better "$t" "$best_zstd"; then best_zstd=$t; fi
  rm -rf "$work/repo/clusters/bench/"*-base-* "$work/zstd.tar.zst"
  read -r t m < <(time_once runuser -u postgres -- "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn base-backup)
  if better "$t" "$best_ours"; then best_ours=$t; fi
  [ "$m" -gt "$rss" ] && rss=$m
  if [ "$have_pgbackrest" = 1 ]; then
    read -r t _ < <(time_once runuser -u postgres -- pgbackrest --config="$work/pgbackrest.conf" --stanza=bench \
      --type=full backup)
    if better "$t" "$best_pgbr"; then best_pgbr=$t; fi
  fi
done
stored=$(du -sb "$work/repo/clusters/bench/"*-base-*/base.tar* | cut -f1)

printf '\n%-44s %9s %9s\n' "base backup" "seconds" "ratio"
printf '%-44s %9s %9s\n' "pg_basebackup -Ft -D - -X none > /dev/null" "$best_pg" "1.00x"
printf '%-44s %9s %9s\n' "pg_basebackup | zstd -1 -T2 > file" "$best_zstd" \
  "$(awk "BEGIN{printf \"%.2fx\", $best_zstd / $best_pg}")"
printf '%-44s %9s %9s\n' "pgbackd base-backup (zstd, SHA-256, local)" "$best_ours" \
  "$(awk "BEGIN{printf \"%.2fx\", $best_ours / $best_pg}")"
[ "$have_pgbackrest" = 1 ] && printf '%-44s %9s %9s\n' "pgbackrest backup --type=full (zst 1, 2 processes)" \
  "$best_pgbr" "$(awk "BEGIN{printf \"%.2fx\", $best_pgbr / $best_pg}")"
echo "pgbackd peak RSS $(awk "BEGIN{printf \"%.1f\", $rss / 1024}") MiB; stored $(awk "BEGIN{printf \"%.1f\", $stored / 1048576}") MiB"

# ---------------------------------------------------------------------------------------------
# TABLESPACE=1: the same with a user tablespace holding a copy of the largest table: pgbackd
# reads pg_basebackup's tars from a spool while they grow (`-D DIR`, not `-D -`), against
# `pg_basebackup -Ft -D DIR` writing the tars to disk; the tablespace is dropped afterwards.
if [ "${TABLESPACE:-0}" = 1 ]; then
  ts=$dir/ts_bench; mkdir -p "$ts"; chown postgres: "$ts"
  big=$(psql -Atc "select relname from pg_class where relkind = 'r' and relnamespace = 'public'::regnamespace
    order by pg_relation_size(oid) desc limit 1" "$data")
  psql -qc "create tablespace ts_bench location '$ts'" postgres
  psql -qc "create table ts_copy tablespace ts_bench as select * from $big" "$data"
  bench_on_exit() { psql -qc "drop table if exists ts_copy" "$data"; psql -qc "drop tablespace if exists ts_bench" postgres; }
  echo "tablespace ts_bench: $(psql -Atc "select pg_size_pretty(pg_tablespace_size('ts_bench'))" postgres)"
  best_dir=""; best_ts=""; rss_ts=0
  for _ in $(seq "$runs"); do
    rm -rf "$work/tars"
    read -r t _ < <(time_once "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$work/tars" -Ft \
      -X none --checkpoint=fast --manifest-checksums=SHA256)
    if better "$t" "$best_dir"; then best_dir=$t; fi
    rm -rf "$work/tars" "$work/repo/clusters/bench/"*-base-*
    read -r t m < <(time_once runuser -u postgres -- "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn base-backup)
    if better "$t" "$best_ts"; then best_ts=$t; fi
    [ "$m" -gt "$rss_ts" ] && rss_ts=$m
  done
  printf '\n%-44s %9s %9s\n' "with a tablespace" "seconds" "ratio"
  printf '%-44s %9s %9s\n' "pg_basebackup -Ft -D DIR -X none (to disk)" "$best_dir" "1.00x"
  printf '%-44s %9s %9s\n' "pgbackd base-backup (tars from the spool)" "$best_ts" \
    "$(awk "BEGIN{printf \"%.2fx\", $best_ts / $best_dir}")"
  echo "pgbackd peak RSS $(awk "BEGIN{printf \"%.1f\", $rss_ts / 1024}") MiB"
fi
