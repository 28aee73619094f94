#!/usr/bin/env bash
# WAL archiving benchmark: the time of one `pgbackd archive-push` (what archive_command runs
# for every 16 MiB segment), against baselines measured in the same run, interleaved:
#   copy     cp + sync of the segment (the least any durable archive_command does)
#   zstd     zstd -1 of the segment into a file + sync (compressing it, single-threaded)
#   pgbackrest  pgbackrest archive-push (zstd level 1, local repository), when installed
#
#   bench/wal.sh [SEGMENTS] [RUNS]    (default 16 segments, 3 runs; best run of each reported)
#
# Issue 17 target: archive-push of one segment <= 50 ms locally.
set -euo pipefail
segments=${1:-16}; runs=${2:-3}
source "$(dirname "$0")/lib/archiving.sh"
bench_start wrun

# real segments of the bench cluster: written by inserts, collected by an archive_command that
# copies them, then the cluster's own archive_command is put back
mkdir -p "$work/pg_wal"; chown postgres: "$work/pg_wal" 2>/dev/null || true
set_archive_command "cp %p $work/pg_wal/%f"
psql -qc "create table if not exists wal_bench (id bigint, v text)" postgres
for _ in $(seq "$segments"); do
  psql -qc "insert into wal_bench select g, md5(g::text) || repeat('x', 60) from generate_series(1, 60000) g" \
    -c "select pg_switch_wal()" postgres >/dev/null
done
psql -qc "drop table wal_bench" -c "select pg_switch_wal()" postgres >/dev/null
for _ in $(seq 100); do [ "$(ls "$work/pg_wal" | wc -l)" -ge "$segments" ] && break; sleep 0.2; done
set_archive_command "$old_archive_command"
mapfile -t files < <(ls "$work/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -n "$segments")
n=${#files[@]}
echo "archiving $n segments of 16 MiB, $runs runs"

cat >"$work/pgbackd.yaml" <<YAML
local_backup_dir: $work/repo
wal: {name: bench}
compression: {level: 1}
YAML
have_pgbackrest=0
if command -v pgbackrest >/dev/null; then
  have_pgbackrest=1
  pgbackrest_conf
fi

# per-segment milliseconds of "$@" FILE over every segment
per_segment() {
  local start end
  start=$(date +%s%N)
  for f in "${files[@]}"; do "$@" "$work/pg_wal/$f"; done
  end=$(date +%s%N)
  awk "BEGIN{printf \"%.1f\", ($end - $start) / $n / 1e6}"
}
push_pgbackd() { "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn archive-push "$1"; }
push_copy() { cp "$1" "$work/copy/"; sync "$work/copy/$(basename "$1")"; }
push_zstd() { zstd -q -1 -c "$1" >"$work/copy/$(basename "$1").zst"; sync "$work/copy/$(basename "$1").zst"; }
push_pgbackrest() { runuser -u postgres -- pgbackrest --config="$work/pgbackrest.conf" --stanza=bench archive-push "$1"; }
better() { [ -z "$2" ] || awk "BEGIN{exit !($1 < $2)}"; }

best_ours=""; best_copy=""; best_zstd=""; best_pgbr=""
for _ in $(seq "$runs"); do
  rm -rf "$work/repo" "$work/copy"; mkdir -p "$work/copy"
  t=$(per_segment push_copy); if better "$t" "$best_copy"; then best_copy=$t; fi
  t=$(per_segment push_zstd); if better "$t" "$best_zstd"; then best_zstd=$t; fi
  t=$(per_segment push_pgbackd); if better "$t" "$best_ours"; then best_ours=$t; fi
  if [ "$have_pgbackrest" = 1 ]; then
    rm -rf "$work/pgbr/archive/bench/"*/0000*
    t=$(per_segment push_pgbackrest); if better "$t" "$best_pgbr"; then best_pgbr=$t; fi
  fi
done
stored=$(du -sb "$work/repo" | cut -f1)

printf '\n%-34s %12s %10s\n' "archive_command" "ms/segment" "vs copy"
row() { printf '%-34s %12s %10s\n' "$1" "$2" "$(awk "BEGIN{printf \"%.2fx\", $2 / $best_copy}")"; }
row "cp + sync" "$best_copy"
row "zstd -1 + sync" "$best_zstd"
[ "$have_pgbackrest" = 1 ] && row "pgbackrest archive-push (zst 1)" "$best_pgbr"
row "pgbackd archive-push" "$best_ours"
echo "pgbackd stored $(awk "BEGIN{printf \"%.1f\", $stored / $n / 1048576}") MiB per 16 MiB segment"

# ---------------------------------------------------------------------------------------------
# Under load: pgbench -c 4 at full speed for LOAD_SECONDS (default 30), archive lag sampled
# every 0.25 s, once with archive_command = pgbackd archive-push and once streaming
# (wal.method: stream, the daemon's pg_receivewal). Issue 17 targets: archive lag < 10 s; for
# streaming < 1 segment.
load=${LOAD_SECONDS:-30}
data_dir=$(psql -Atc "show data_directory" postgres)
if [ "$(psql -Atc "select count(*) from pg_database where datname = 'wal_load'" postgres)" = 0 ]; then
  psql -qc "create database wal_load" postgres
  pgbench -i -s 10 -q wal_load >/dev/null 2>&1
fi
segno() { echo $((16#${1:8:8} * 256 + 16#${1:16:8})); }
current_segment() { psql -Atc "select pg_walfile_name(pg_current_wal_lsn())" postgres; }
# the newest segment stored in repository $1 (local target)
newest_stored() {
  find "$1" -type f -name '[0-9A-F]*.zst' -printf '%f\n' 2>/dev/null | grep -E '^[0-9A-F]{24}-' | sort | tail -1 | cut -c1-24
}
run_pgbench() { pgbench -c 4 -j 2 -T "$load" -n wal_load >"$work/pgbench.out" 2>&1; }
tps() { awk '/^tps/ {printf "%.0f", $3; exit}' "$work/pgbench.out"; }

# archive_command: segments PostgreSQL completed and has not archived yet (archive_status/*.ready),
# and how long the oldest of them has waited
cat >"$work/load.yaml" <<YAML
local_backup_dir: $work/lrepo
reports: {dir: $work/lreports}
wal: {name: bench}
YAML
chown -R postgres: "$work"
set_archive_command "$pgbackd -c $work/load.yaml --log-level warn archive-push %p"
start_lsn=$(psql -Atc "select pg_current_wal_lsn()" postgres)
run_pgbench & bench_pid=$!
max_ready=0; max_age=0; max_archive_lag=0
while kill -0 "$bench_pid" 2>/dev/null; do
  now=$(date +%s.%N)
  read -r ready oldest < <(find "$data_dir/pg_wal/archive_status" -name '*.ready' -printf '%T@\n' |
    sort -n | awk 'NR == 1 {o = $1} END {print NR, (NR ? o : 0)}')
  [ "$ready" -gt "$max_ready" ] && max_ready=$ready
  read -r archived now_b < <(psql -Atc "select coalesce(last_archived_wal, ''),
    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint from pg_stat_archiver" postgres | tr '|' ' ')
  if [ -n "$archived" ] && [ "${#archived}" = 24 ]; then
    lag=$(( now_b - ($(segno "$archived") + 1) * 16777216 ))
    [ "$lag" -gt "$max_archive_lag" ] && max_archive_lag=$lag
  fi
  if [ "$ready" -gt 0 ]; then
    age=$(awk "BEGIN{printf \"%.2f\", $now - $oldest}")
    awk "BEGIN{exit !($age > $max_age)}" && max_age=$age
  fi
  sleep 0.25
done
wait "$bench_pid" || { cat "$work/pgbench.out" >&2; exit 1; }
end_lsn=$(psql -Atc "select pg_current_wal_lsn()" postgres)
wal_rate=$(psql -Atc "select round(pg_wal_lsn_diff('$end_lsn', '$start_lsn') / 1048576.0 / $load, 1)" postgres)
archive_tps=$(tps)
drained=$(date +%s.%N)
for _ in $(seq 600); do
  [ -z "$(find "$data_dir/pg_wal/archive_status" -name '*.ready')" ] && break
  sleep 0.1
done
drain_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $drained}")
set_archive_command "$old_archive_command"

# streaming: how far the server's WAL is ahead of the end of the newest segment stored in the
# repository (under one segment: every segment is stored before the next one is complete)
cat >"$work/stream.yaml" <<YAML
local_backup_dir: $work/srepo
reports: {dir: $work/sreports}
monitoring: {listen: off}
wal: {name: bench, method: stream, spool_dir: $work/spool, server: {host: 127.0.0.1, port: $port, username: postgres}}
YAML
chown -R postgres: "$work"
runuser -u postgres -- "$pgbackd" -c "$work/stream.yaml" --log-level warn run >"$work/daemon.log" 2>&1 &
daemon_pid=$!
bench_on_exit() {
  kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  psql -qAtc "select pg_drop_replication_slot('pgbackd_bench') from pg_replication_slots where slot_name = 'pgbackd_bench'" \
    postgres >/dev/null || true
}
# the receiver's walsender: the one on the daemon's slot
receiver="from pg_stat_replication r join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = 'pgbackd_bench'"
receiving() { [ "$(psql -Atc "select count(*) $receiver" postgres)" = 1 ]; }
# the daemon's first base backup, then the receiver on its slot
for _ in $(seq 300); do
  ls "$work/srepo/clusters/bench/"*-base-*/manifest.json >/dev/null 2>&1 && receiving && break
  sleep 0.2
done
receiving || { echo "the daemon's receiver did not start:" >&2; cat "$work/daemon.log" >&2; exit 1; }
run_pgbench & bench_pid=$!
max_lag=0
while kill -0 "$bench_pid" 2>/dev/null; do
  stored=$(newest_stored "$work/srepo")
  now=$(psql -Atc "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint" postgres)
  if [ -n "$stored" ]; then
    # the server's WAL beyond the end of the newest stored segment
    lag=$(( now - ($(segno "$stored") + 1) * 16777216 ))
    [ "$lag" -gt "$max_lag" ] && max_lag=$lag
  fi
  sleep 0.25
done
wait "$bench_pid" || { cat "$work/pgbench.out" >&2; exit 1; }
stream_tps=$(tps)
bench_on_exit

# WAL written between a segment's end and the moment it is in the repository: the lag beyond the
# newest stored segment, less the segment being written (which is never stored before it ends)
beyond() { awk "BEGIN{l = $1 - 16777216; printf \"%.1f\", (l > 0 ? l : 0) / 1048576}"; }
printf '\nunder pgbench -c 4 -j 2 for %s s (%s MiB/s of WAL with archive_command)\n' "$load" "$wal_rate"
printf '%-40s %9s  %s\n' "" "" "max WAL written after a segment ended before it was stored (target < 16 MiB)"
printf '%-40s %9s  %s\n' "archive_command = pgbackd archive-push" "$archive_tps tps" \
  "$(beyond "$max_archive_lag") MiB; oldest waiting segment $max_age s (target < 10 s), max $max_ready waiting; all archived ${drain_s} s after the load"
printf '%-40s %9s  %s\n' "wal.method: stream (pg_receivewal)" "$stream_tps tps" "$(beyond "$max_lag") MiB"
