#!/usr/bin/env bash
# Full-backup benchmark: pgbackd against plain pg_dump pipelines, all measured in one run.
#
#   bench/full.sh [SCALE] [RUNS]      (default scale 30, 3 runs; best run of each is reported)
#
# Starts (or reuses) a throwaway cluster in $BENCH_DIR (default /tmp/pgbackd-bench) on port
# $BENCH_PORT (default 55432), fills database bench_$SCALE with bench/lib/gendata.sh (the shared
# data set: pgbench tables, jsonb documents, incompressible blobs), then measures:
#   limit       pg_dump -Fc -Z0 > /dev/null          (the speed limit: pg_dump itself)
#   pg_dump -Fc pg_dump's own gzip compression
#   zstd pipe   pg_dump -Fc -Z0 | zstd -3 -T0
#   pgbackd     pgbackd backup (wall time, stored bytes, peak RSS)
# and restore: pg_restore of an uncompressed local dump vs pgbackd restore of the backup.
# Targets (issue 2): backup <= 1.15x limit, stored <= pg_dump -Fc, peak RSS <= 64 MiB at any
# scale, restore <= 1.15x pg_restore.
set -euo pipefail
scale=${1:-30}; runs=${2:-3}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
db=bench_$scale
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port"
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$db'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $db ..."
  "$here/lib/gendata.sh" "$port" "$db" "$scale" >/dev/null
fi
work=$(mktemp -d "$dir/run.XXXXXX"); trap 'rm -rf "$work"' EXIT
cat >"$work/pgbackd.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
local_backup_dir: $work/repo
backup: {min_size_ratio: 0}
YAML

# best (lowest) wall time over $runs runs of a shell command; prints "seconds maxrss_kib"
measure() {
  local best="" rss=0
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    read -r t m <"$work/time"
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
    [ "$m" -gt "$rss" ] && rss=$m
  done
  echo "$best $rss"
}
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }

read -r t_limit _ < <(measure "pg_dump -Fc -Z0 $db > /dev/null")
read -r t_fc _ < <(measure "pg_dump -Fc $db > $work/fc.dump")
read -r t_zstd _ < <(measure "pg_dump -Fc -Z0 $db | zstd -q -3 -T0 > $work/pipe.zst")
read -r t_pgb rss_pgb < <(measure "rm -rf $work/repo; $pgbackd -c $work/pgbackd.yaml --log-level warn backup")
raw=$(pg_dump -Fc -Z0 "$db" | tee "$work/raw.dump" | wc -c)
s_fc=$(stat -c %s "$work/fc.dump"); s_zstd=$(stat -c %s "$work/pipe.zst")
s_pgb=$(find "$work/repo" -name data.zst -printf '%s\n' | head -1)
id=$("$pgbackd" -c "$work/pgbackd.yaml" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')

restore_plain="dropdb --if-exists r_plain; createdb r_plain; pg_restore -d r_plain $work/raw.dump"
restore_pgb="dropdb --if-exists r_pgb; $pgbackd -c $work/pgbackd.yaml --log-level warn restore $id --target-database r_pgb --create"
read -r t_rplain _ < <(measure "$restore_plain")
read -r t_rpgb rss_rpgb < <(measure "$restore_pgb")
dropdb --if-exists r_plain; dropdb --if-exists r_pgb

echo
echo "scale $scale: raw dump $raw bytes; best of $runs runs; $(nproc) cores"
printf '%-34s %8s %8s %14s %10s\n' "backup" "seconds" "vs limit" "stored bytes" "peak RSS"
printf '%-34s %8s %8s %14s %10s\n' "pg_dump -Fc -Z0 > /dev/null (limit)" "$t_limit" "1.00x" "-" "-"
printf '%-34s %8s %8s %14s %10s\n' "pg_dump -Fc" "$t_fc" "$(ratio "$t_fc" "$t_limit")" "$s_fc" "-"
printf '%-34s %8s %8s %14s %10s\n' "pg_dump -Fc -Z0 | zstd -3 -T0" "$t_zstd" "$(ratio "$t_zstd" "$t_limit")" "$s_zstd" "-"
printf '%-34s %8s %8s %14s %10s\n' "pgbackd backup" "$t_pgb" "$(ratio "$t_pgb" "$t_limit")" "$s_pgb" "$((rss_pgb / 1024)) MiB"
echo
printf '%-34s %8s %8s %10s\n' "restore" "seconds" "vs plain" "peak RSS"
printf '%-34s %8s %8s %10s\n' "pg_restore of a local -Z0 dump" "$t_rplain" "1.00x" "-"
printf '%-34s %8s %8s %10s\n' "pgbackd restore" "$t_rpgb" "$(ratio "$t_rpgb" "$t_rplain")" "$((rss_rpgb / 1024)) MiB"
echo
echo "stored size vs pg_dump -Fc: $(ratio "$s_pgb" "$s_fc")"
