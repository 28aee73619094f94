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
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
work=$(mktemp -d "$dir/wrun.XXXXXX"); trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

# real segments of the bench cluster: written by inserts, collected by an archive_command that
# copies them, then the cluster's own archive_command is put back
mkdir -p "$work/pg_wal"; chown postgres: "$work/pg_wal" 2>/dev/null || true
old=$(psql -Atc "show archive_command" postgres)
psql -qc "alter system set archive_command = 'cp %p $work/pg_wal/%f'" -c "select pg_reload_conf()" postgres >/dev/null
psql -qc "create table if not exists wal_bench (id bigint, v text)" postgres
for _ in $(seq "$segments"); do
  psql -qc "insert into wal_bench select g, md5(g::text) || repeat('x', 60) from generate_series(1, 60000) g" \
    -c "select pg_switch_wal()" postgres >/dev/null
done
psql -qc "drop table wal_bench" -c "select pg_switch_wal()" postgres >/dev/null
for _ in $(seq 100); do [ "$(ls "$work/pg_wal" | wc -l)" -ge "$segments" ] && break; sleep 0.2; done
psql -qc "alter system set archive_command = '${old//\'/\'\'}'" -c "select pg_reload_conf()" postgres >/dev/null
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
  cat >"$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr
compress-type=zst
compress-level=1
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock
[bench]
pg1-path=$dir/cluster/data
pg1-port=$port
pg1-host-user=postgres
CONF
  chown -R postgres: "$work"
  runuser -u postgres -- pgbackrest --config="$work/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
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
