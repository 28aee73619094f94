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
#   encrypted   pgbackd backup with age encryption to a recipient
# and restore: pg_restore of an uncompressed local dump vs pgbackd restore of the backup (and of
# the encrypted one).
# Targets (issue 2): backup <= 1.15x limit, stored <= pg_dump -Fc, peak RSS <= 64 MiB at any
# scale, restore <= 1.15x pg_restore. Issue 9: encrypted backup <= 1.1x the unencrypted one.
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
# autovacuum off: a restore leaves 600 MB for autovacuum, which would slow whatever runs next
# autovacuum off: each restore leaves 600 MB for autovacuum, which would slow whatever runs next
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
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
"$pgbackd" keygen -o "$work/identity.txt" 2>/dev/null >"$work/recipient"
chmod 600 "$work/pgbackd.yaml"
cat >"$work/pgbackd-enc.yaml" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
local_backup_dir: $work/repo-enc
backup: {min_size_ratio: 0}
encryption: {enabled: true, recipients: [$(cat "$work/recipient")]}
YAML
chmod 600 "$work/pgbackd-enc.yaml"

# one timed run of a shell command: prints "seconds maxrss_kib". Each run starts from the same
# state: no dirty buffers in PostgreSQL or the page cache left over from the previous one.
time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
# best (lowest) wall time and highest RSS of several commands over $runs rounds, interleaved so
# that background work (autovacuum after a restore, checkpoints) hits every command alike.
# usage: measure_all VAR1 "cmd1" VAR2 "cmd2" ...   sets $VAR_t and $VAR_rss
measure_all() {
  local -a names=() cmds=(); while [ $# -gt 0 ]; do names+=("$1"); cmds+=("$2"); shift 2; done
  local i r t m
  for i in "${!names[@]}"; do printf -v "${names[$i]}_t" '%s' ""; printf -v "${names[$i]}_rss" '%s' 0; done
  for r in $(seq "$runs"); do
    for i in "${!names[@]}"; do
      read -r t m < <(time_once "${cmds[$i]}")
      local tv="${names[$i]}_t" rv="${names[$i]}_rss"
      if [ -z "${!tv}" ] || awk "BEGIN{exit !($t < ${!tv})}"; then printf -v "$tv" '%s' "$t"; fi
      if [ "$m" -gt "${!rv}" ]; then printf -v "$rv" '%s' "$m"; fi
    done
  done
}
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }

measure_all limit "pg_dump -Fc -Z0 $db > /dev/null" \
            fc "pg_dump -Fc $db > $work/fc.dump" \
            zstd "pg_dump -Fc -Z0 $db | zstd -q -3 -T0 > $work/pipe.zst" \
            pgb "rm -rf $work/repo; $pgbackd -c $work/pgbackd.yaml --log-level warn backup" \
            enc "rm -rf $work/repo-enc; $pgbackd -c $work/pgbackd-enc.yaml --log-level warn backup"
t_limit=$limit_t t_fc=$fc_t t_zstd=$zstd_t t_pgb=$pgb_t rss_pgb=$pgb_rss t_enc=$enc_t rss_enc=$enc_rss
raw=$(pg_dump -Fc -Z0 "$db" | tee "$work/raw.dump" | wc -c)
s_fc=$(stat -c %s "$work/fc.dump"); s_zstd=$(stat -c %s "$work/pipe.zst")
s_pgb=$(find "$work/repo" -name data.zst -printf '%s\n' | head -1)
s_enc=$(find "$work/repo-enc" -name data.zst.age -printf '%s\n' | head -1)
last_id() { "$pgbackd" -c "$1" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])'; }
id=$(last_id "$work/pgbackd.yaml"); enc_id=$(last_id "$work/pgbackd-enc.yaml")

restore_plain="dropdb --if-exists r_plain; createdb r_plain; pg_restore -d r_plain $work/raw.dump"
# pgbackd restore includes what plain pg_restore does not: checking every frame first and
# counting every table's rows afterwards
restore_pgb="dropdb --if-exists r_pgb; $pgbackd -c $work/pgbackd.yaml --log-level warn restore $id --target-database r_pgb --create"
restore_enc="dropdb --if-exists r_enc; $pgbackd -c $work/pgbackd-enc.yaml --log-level warn restore $enc_id --identity $work/identity.txt --target-database r_enc --create"
measure_all rplain "$restore_plain" rpgb "$restore_pgb" renc "$restore_enc"
t_rplain=$rplain_t t_rpgb=$rpgb_t rss_rpgb=$rpgb_rss t_renc=$renc_t rss_renc=$renc_rss
dropdb --if-exists r_plain; dropdb --if-exists r_pgb; dropdb --if-exists r_enc

echo
echo "scale $scale: raw dump $raw bytes; best of $runs runs; $(nproc) cores"
printf '%-34s %8s %8s %14s %10s\n' "backup" "seconds" "vs limit" "stored bytes" "peak RSS"
printf '%-34s %8s %8s %14s %10s\n' "pg_dump -Fc -Z0 > /dev/null (limit)" "$t_limit" "1.00x" "-" "-"
printf '%-34s %8s %8s %14s %10s\n' "pg_dump -Fc" "$t_fc" "$(ratio "$t_fc" "$t_limit")" "$s_fc" "-"
printf '%-34s %8s %8s %14s %10s\n' "pg_dump -Fc -Z0 | zstd -3 -T0" "$t_zstd" "$(ratio "$t_zstd" "$t_limit")" "$s_zstd" "-"
printf '%-34s %8s %8s %14s %10s\n' "pgbackd backup" "$t_pgb" "$(ratio "$t_pgb" "$t_limit")" "$s_pgb" "$((rss_pgb / 1024)) MiB"
printf '%-34s %8s %8s %14s %10s\n' "pgbackd backup, encrypted (age)" "$t_enc" "$(ratio "$t_enc" "$t_limit")" "$s_enc" "$((rss_enc / 1024)) MiB"
echo
printf '%-34s %8s %8s %10s\n' "restore" "seconds" "vs plain" "peak RSS"
printf '%-34s %8s %8s %10s\n' "pg_restore of a local -Z0 dump" "$t_rplain" "1.00x" "-"
printf '%-34s %8s %8s %10s\n' "pgbackd restore" "$t_rpgb" "$(ratio "$t_rpgb" "$t_rplain")" "$((rss_rpgb / 1024)) MiB"
printf '%-34s %8s %8s %10s\n' "pgbackd restore, encrypted" "$t_renc" "$(ratio "$t_renc" "$t_rplain")" "$((rss_renc / 1024)) MiB"
echo
echo "stored size vs pg_dump -Fc: $(ratio "$s_pgb" "$s_fc")"
echo "encrypted backup time vs unencrypted: $(ratio "$t_enc" "$t_pgb") (target <= 1.10x); restore: $(ratio "$t_renc" "$t_rpgb")"
