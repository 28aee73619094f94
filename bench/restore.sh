#!/usr/bin/env bash
# Restore benchmark: `pgbackd restore --create` (with its checks: every frame's SHA-256, row
# counts, database properties) against plain `pg_restore` of a `pg_dump -Fc --compress=0` file of
# the same database into a new database, same data, same run, interleaved, best of RUNS.
#
#   bench/restore.sh [SCALE] [RUNS] [TABLES]   (default scale 10, 3 runs, a 540-table schema)
#
# Issue 16 target: every restore mode <= 1.10x the matching plain pg_restore (jobs 1 and 2),
# post-restore checks included, on the gendata.sh data set and on a schema of many small tables.
set -euo pipefail
scale=${1:-10}; runs=${2:-3}; tables=${3:-540}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
data=bench_$scale; many=bench_tables_$tables
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$data'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $data ..."
  "$here/lib/gendata.sh" "$port" "$data" "$scale" >/dev/null
fi
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$many'" postgres)" = 0 ]; then
  echo "generating $tables small tables into $many ..."
  psql -qc "create database $many" postgres
  psql -q "$many" <<SQL
do \$\$ begin for i in 1..$tables loop
  execute format('create table t%s (id int primary key, v text, at timestamptz default now())', i);
  execute format('insert into t%s (id, v) select g, md5(g::text) from generate_series(1, 20) g', i);
end loop; end \$\$;
SQL
fi
work=$(mktemp -d "$dir/rrun.XXXXXX"); trap 'rm -rf "$work"' EXIT

time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
better() { [ -z "$2" ] || awk "BEGIN{exit !($1 < $2)}"; }
drop() { psql -qc "drop database if exists $1" postgres 2>/dev/null; }

printf '\n%-22s %-6s %10s %10s %7s\n' "database" "jobs" "pg_restore" "pgbackd" "ratio"
for db in $data $many; do
  cat >"$work/$db.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
local_backup_dir: $work/repo
reports: {dir: $work/reports}
backup: {min_size_ratio: 0}
YAML
  cfg=$work/$db.yaml; chmod 600 "$cfg"
  id=$("$pgbackd" -c "$cfg" --log-level warn backup)
  # the baseline: pg_dump's own file (with data offsets), uncompressed as pgbackd's archive is
  pg_dump -Fc --compress=0 -f "$work/$db.dump" "$db"
  for jobs in 1 2; do
    plain=""; ours=""
    for _ in $(seq "$runs"); do
      drop r_plain; drop r_ours
      read -r t < <(time_once "createdb r_plain && pg_restore -j $jobs -d r_plain $work/$db.dump")
      if better "$t" "$plain"; then plain=$t; fi
      read -r t < <(time_once "$pgbackd -c $cfg --log-level warn restore $id --target-database r_ours --create --jobs $jobs")
      if better "$t" "$ours"; then ours=$t; fi
    done
    drop r_plain; drop r_ours
    printf '%-22s %-6s %10s %10s %7s\n' "$db" "$jobs" "$plain" "$ours" "$(awk "BEGIN{printf \"%.2fx\", $ours / $plain}")"
  done
done
