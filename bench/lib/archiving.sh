# Sourced by the benchmarks of a cluster whose WAL pgbackd archives (basebackup.sh, wal.sh,
# pitr.sh): builds the release binary, starts the bench cluster when it is not running, makes a
# work directory `$work` (removed on exit), and puts the cluster's archive_command back on exit
# whatever a benchmark set it to.
#   bench_start PREFIX      (work directory $dir/PREFIX.XXXXXX)
#   data_set SCALE          (the realistic data set in database $data = bench_SCALE, made once)
#   set_archive_command CMD
#   pgbackrest_conf         ($work/pgbackrest.conf for stanza "bench", stanza created)
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgbackd=$root/target/release/pgbackd

bench_start() {
  (cd "$root" && cargo build --release --quiet)
  mkdir -p "$dir"
  pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
  work=$(mktemp -d "$dir/$1.XXXXXX")
  chmod 755 "$work"
  old_archive_command=$(psql -Atc "show archive_command" postgres)
  trap bench_cleanup EXIT
}

# run on exit: the benchmark's own cleanup (bench_on_exit, if defined), then the cluster's setting
bench_cleanup() {
  if declare -F bench_on_exit >/dev/null; then bench_on_exit || true; fi
  set_archive_command "$old_archive_command" || true
  rm -rf "$work"
}

data_set() {
  data=bench_$1
  if [ "$(psql -Atc "select count(*) from pg_database where datname = '$data'" postgres)" = 0 ]; then
    echo "generating scale $1 data set into $data ..."
    "$here/lib/gendata.sh" "$port" "$data" "$1" >/dev/null
  fi
}

set_archive_command() {
  psql -qc "alter system set archive_command = '${1//\'/\'\'}'" -c "select pg_reload_conf()" postgres >/dev/null
}

pgbackrest_conf() {
  cat >"$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr
repo1-retention-full=1
compress-type=zst
compress-level=1
process-max=2
start-fast=y
archive-check=n
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock
[bench]
pg1-path=$(psql -Atc "show data_directory" postgres)
pg1-port=$port
pg1-socket-path=$(psql -Atc "show unix_socket_directories" postgres | cut -d, -f1)
CONF
  chown -R postgres: "$work"
  runuser -u postgres -- pgbackrest --config="$work/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
}
