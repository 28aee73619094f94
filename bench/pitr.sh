#!/usr/bin/env bash
# Point-in-time recovery benchmark: the wall time (RTO: to a promoted, ready server) of
# `pgbackd restore-cluster --latest --start` from the repository, against the same recovery from
# a local plain copy of the same base backup and WAL (tar -x of the plain tar, restore_command =
# cp), same run, interleaved, best of RUNS; and pgbackd with wal.prefetch 0 (each segment fetched
# when PostgreSQL asks), to show what fetching ahead is worth.
#
#   [WAL_LOAD=bulk] bench/pitr.sh [SCALE] [WAL_MB] [RUNS]    (default scale 10, 1024 MiB of WAL, 2 runs)
#
# The WAL is pgbench's (-c 2) on its own database after the base backup, or with WAL_LOAD=bulk
# bulk inserts (1M rows of 250 bytes per round, then truncated: WAL written ~20x faster, for the
# 10 GB figure), archived by archive_command = pgbackd archive-push (zstd level 1, local repository).
# Issue 18 target: recovery from the repository <= 1.2x the plain local copy.
set -euo pipefail
scale=${1:-10}; wal_mb=${2:-1024}; runs=${3:-2}
source "$(dirname "$0")/lib/archiving.sh"
bench_start prun
data_set "$scale"
for c in pgbackd prefetch0; do
  prefetch=8; [ "$c" = prefetch0 ] && prefetch=0
  cat >"$work/$c.yaml" <<YAML
local_backup_dir: $work/repo
reports: {dir: $work/reports}
compression: {level: 1}
wal: {name: bench, prefetch: $prefetch, server: {host: 127.0.0.1, port: $port, username: postgres}}
YAML
done
chown -R postgres: "$work"
set_archive_command "$pgbackd -c $work/pgbackd.yaml --log-level warn archive-push %p"
psql -qc "drop database if exists pitr_load" -c "create database pitr_load" postgres
pgbench -i -q -s 20 pitr_load >/dev/null 2>&1

runuser -u postgres -- "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn base-backup >/dev/null
start_lsn=$(psql -Atc "select pg_current_wal_lsn()" postgres)
echo "writing $wal_mb MiB of WAL (${WAL_LOAD:-pgbench}) ..."
[ "${WAL_LOAD:-pgbench}" = bulk ] && psql -qc "create table wal_fill (id bigint, v text)" pitr_load
while [ "$(psql -Atc "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn')::bigint / 1048576" postgres)" -lt "$wal_mb" ]; do
  if [ "${WAL_LOAD:-pgbench}" = bulk ]; then
    # ~300 MiB of WAL per round, the table truncated so the data directory stays the same size
    psql -qc "insert into wal_fill select g, md5(g::text) || repeat('x', 200) from generate_series(1, 1000000) g" \
      -c "truncate wal_fill" pitr_load
  else
    pgbench -c 2 -j 2 -T 10 pitr_load >/dev/null 2>&1
  fi
done
last=$(psql -Atc "select pg_walfile_name(pg_switch_wal())" postgres)
for _ in $(seq 1200); do
  [ "$(psql -Atc "select coalesce(last_archived_wal, '') >= '$last' from pg_stat_archiver" postgres)" = t ] && break
  sleep 0.5
done
wal_total=$(psql -Atc "select round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn') / 1048576.0)" postgres)
sysid=$(psql -Atc "select system_identifier from pg_control_system()" postgres)

# the plain copy: the base backup's tar decompressed, every archived segment fetched as a file
plain=$work/plain; mkdir -p "$plain/wal"
zstd -q -dc "$work"/repo/clusters/bench/*-base-*/base.tar.zst > "$plain/base.tar"
find "$work/repo/clusters/bench/wal/$sysid" -type f -name '*.zst' -printf '%f\n' | sed 's/-.*//' | sort -u |
  while read -r f; do
    "$pgbackd" -c "$work/prefetch0.yaml" --log-level warn archive-get "$f" "$plain/wal/$f" --system-id "$sysid"
  done
chown -R postgres: "$work"
segments=$(ls "$plain/wal" | grep -c -E '^[0-9A-F]{24}$')
echo "base backup of $(du -sh "$plain/base.tar" | cut -f1), $segments WAL segments ($wal_total MiB written), $runs runs"

rport=$((port + 1))
target=$work/restored
stop_restored() {
  [ -f "$target/postmaster.pid" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$target" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$target"
}
bench_on_exit() { stop_restored; psql -qc "drop database if exists pitr_load" postgres; }
better() { [ -z "$2" ] || awk "BEGIN{exit !($1 < $2)}"; }
wait_promoted() {
  until [ "$(psql -h 127.0.0.1 -p "$rport" -Atc "select pg_is_in_recovery()" postgres 2>/dev/null)" = f ]; do
    sleep 0.1
  done
}
# seconds of the plain recovery: extract, settings, start, promoted
plain_once() {
  stop_restored; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  local t0; t0=$(date +%s.%N)
  mkdir -m 700 "$target"; tar -xf "$plain/base.tar" -C "$target"
  cat >>"$target/postgresql.auto.conf" <<CONF
restore_command = 'cp $plain/wal/%f %p'
port = $rport
archive_mode = off
CONF
  touch "$target/recovery.signal"; mkdir -p "$target/pg_wal/archive_status"; chown -R postgres: "$target"
  runuser -u postgres -- "$bin/pg_ctl" -D "$target" -l "$work/plain.log" -W start >/dev/null
  wait_promoted
  awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}"
}
ours_once() {
  stop_restored; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  local t0; t0=$(date +%s.%N)
  runuser -u postgres -- "$pgbackd" -c "$work/$1.yaml" --log-level warn restore-cluster --pgdata "$target" --latest \
    --start --port "$rport" --no-archive >"$work/ours.out" 2>"$work/ours.err" || { cat "$work/ours.err" >&2; exit 1; }
  awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}"
}
best_plain=""; best_ours=""; best_nopf=""
for _ in $(seq "$runs"); do
  t=$(plain_once); better "$t" "$best_plain" && best_plain=$t
  t=$(ours_once pgbackd); better "$t" "$best_ours" && best_ours=$t
  t=$(ours_once prefetch0); better "$t" "$best_nopf" && best_nopf=$t
done
stop_restored

printf '\n%-52s %9s %9s\n' "recovery to the end of the WAL (RTO)" "seconds" "ratio"
printf '%-52s %9s %9s\n' "plain copy: tar -x, restore_command = cp" "$best_plain" "1.00x"
printf '%-52s %9s %9s\n' "pgbackd restore-cluster --latest --start" "$best_ours" \
  "$(awk "BEGIN{printf \"%.2fx\", $best_ours / $best_plain}")"
printf '%-52s %9s %9s\n' "  the same with wal.prefetch 0" "$best_nopf" \
  "$(awk "BEGIN{printf \"%.2fx\", $best_nopf / $best_plain}")"
