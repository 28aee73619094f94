#!/usr/bin/env bash
# Verification benchmark: deep verify of a backup against the backup itself, same data, same run.
#
#   bench/verify.sh [SCALE] [RUNS]      (default scale 30, 5 runs; best run of each)
#
# Issue 5 target: deep verify wall time <= 0.5x the backup time. Deep verify reads every stored
# byte, checks every SHA-256, decodes every frame, and streams the archive through
# `pg_restore -f /dev/null`; a test restore of the same backup is shown for comparison.
set -euo pipefail
scale=${1:-30}; runs=${2:-5}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
db=bench_$scale
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
# autovacuum off: a restore leaves work that would slow whatever runs next
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$db'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $db ..."
  "$here/lib/gendata.sh" "$port" "$db" "$scale" >/dev/null
fi
work=$(mktemp -d "$dir/vrun.XXXXXX"); trap 'rm -rf "$work"' EXIT
cat >"$work/pgbackd.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
local_backup_dir: $work/repo
reports: {dir: $work/reports}
backup: {min_size_ratio: 0}
YAML
cfg=$work/pgbackd.yaml

time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
better() { [ -z "$2" ] || awk "BEGIN{exit !($1 < $2)}"; }

"$pgbackd" -c "$cfg" --log-level warn backup >/dev/null
id=$("$pgbackd" -c "$cfg" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
t_backup=""; t_verify=""; rss_verify=0
for _ in $(seq "$runs"); do
  read -r t _ < <(time_once "$pgbackd -c $cfg --log-level warn backup")
  if better "$t" "$t_backup"; then t_backup=$t; fi
  read -r t m < <(time_once "$pgbackd -c $cfg --log-level warn verify $id --deep")
  if better "$t" "$t_verify"; then t_verify=$t; fi
  if [ "$m" -gt "$rss_verify" ]; then rss_verify=$m; fi
done
read -r t_tr _ < <(time_once "$pgbackd -c $cfg --log-level warn test-restore $id")

echo
echo "scale $scale: best of $runs runs, interleaved"
printf '%-34s %8s %9s %10s\n' "job" "seconds" "vs backup" "peak RSS"
printf '%-34s %8s %9s %10s\n' "backup" "$t_backup" "1.00x" "-"
printf '%-34s %8s %9s %10s\n' "verify --deep" "$t_verify" "$(awk "BEGIN{printf \"%.2fx\", $t_verify / $t_backup}")" "$((rss_verify / 1024)) MiB"
printf '%-34s %8s %9s %10s\n' "test-restore (one run)" "$t_tr" "$(awk "BEGIN{printf \"%.2fx\", $t_tr / $t_backup}")" "-"
