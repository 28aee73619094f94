#!/usr/bin/env bash
# S3 benchmark: the same full backup to a local repository only and to S3 only (s3s-fs, a real
# S3 server with signature checks, on 127.0.0.1), interleaved, best of RUNS.
#
#   bench/s3.sh [SCALE] [RUNS]      (default scale 30, 5 runs)
#
# Issue 3 targets: S3 wall time <= 1.3x local; peak RSS within the foundation's 64 MiB plus the
# part buffers (part_size x (max_concurrent_parts + 1) = 16 MiB x 5 = 80 MiB by default).
set -euo pipefail
scale=${1:-30}; runs=${2:-5}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
db=bench_$scale
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
tools=${PGBACKD_TEST_TOOLS:-$HOME/.cache/pgbackd-test}

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
[ -x "$tools/bin/s3s-fs" ] || "$root/scripts/s3-tools.sh"
mkdir -p "$dir"
# autovacuum off: a restore elsewhere would leave work that slows whatever runs next
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$db'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $db ..."
  "$here/lib/gendata.sh" "$port" "$db" "$scale" >/dev/null
fi
work=$(mktemp -d "$dir/s3run.XXXXXX")
s3port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
"$tools/bin/s3s-fs" --host 127.0.0.1 --port "$s3port" --access-key benchkey --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
trap 'kill $s3pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$s3port") 2>/dev/null && break; sleep 0.1; done

cat >"$work/local.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
local_backup_dir: $work/repo
backup: {min_size_ratio: 0}
YAML
cat >"$work/s3.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
storage:
  - {name: s3, type: s3, endpoint: "http://127.0.0.1:$s3port", bucket: bench, prefix: pgbackd,
     access_key: benchkey, secret_key: benchsecret}
backup: {min_size_ratio: 0}
YAML

time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
best_local=""; best_s3=""; rss_local=0; rss_s3=0
for _ in $(seq "$runs"); do
  read -r t m < <(time_once "rm -rf $work/repo; $pgbackd -c $work/local.yaml --log-level warn backup")
  if [ -z "$best_local" ] || awk "BEGIN{exit !($t < $best_local)}"; then best_local=$t; fi
  if [ "$m" -gt "$rss_local" ]; then rss_local=$m; fi
  read -r t m < <(time_once "rm -rf $work/s3/bench/pgbackd; $pgbackd -c $work/s3.yaml --log-level warn backup")
  if [ -z "$best_s3" ] || awk "BEGIN{exit !($t < $best_s3)}"; then best_s3=$t; fi
  if [ "$m" -gt "$rss_s3" ]; then rss_s3=$m; fi
done
size=$(find "$work/s3/bench" -name data.zst -printf '%s\n' | head -1)
echo
echo "scale $scale: best of $runs runs, interleaved; S3 = s3s-fs on 127.0.0.1 (part_size 16 MiB, 4 in flight)"
printf '%-24s %8s %8s %10s\n' "backup to" "seconds" "vs local" "peak RSS"
printf '%-24s %8s %8s %10s\n' "local only" "$best_local" "1.00x" "$((rss_local / 1024)) MiB"
printf '%-24s %8s %8s %10s\n' "S3 only" "$best_s3" "$(awk "BEGIN{printf \"%.2fx\", $best_s3 / $best_local}")" "$((rss_s3 / 1024)) MiB"
echo "stored object on S3: $size bytes"
