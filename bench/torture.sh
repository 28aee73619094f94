#!/usr/bin/env bash
# Torture rounds: random kill -9, SIGTERM, corruption and races against a real cluster, each on
# a fresh copy of a repository holding two good backups; after each round the checks that must
# hold are run and counted. Prints a table (tried / correct per check) for docs/reliability.md.
#
#   bench/torture.sh [ROUNDS] [SEED]      (default 30 rounds, seed from the clock)
#
# Rounds, chosen at random:
#   kill9-backup   kill -9 of `pgbackd backup` at a random moment (0 - 1.2x a backup's time)
#   sigterm-backup SIGTERM of `pgbackd backup` at a random moment
#   kill9-restore  kill -9 of `pgbackd restore --jobs 2` at a random moment
#   corrupt        one stored file of a random backup flipped, truncated, emptied or deleted (the
#                  empty manifest digest file: renamed to another digest, or deleted)
#   race           `pgbackd restore` of the oldest backup in one process while `pgbackd
#                  retention` (keep_last 1) runs in another
# Checks:
#   listed-verify   every listed backup passes `verify --all --deep` (no partial backup listed)
#   outcome         the exit status matches what is listed: a backup that exited 0 is listed,
#                   one that did not is not (except one killed by kill -9 after its manifest's
#                   commit: complete, listed, and read whole by listed-verify)
#   no-secrets-tmp  nothing is left in the process's TMPDIR (password files, spools)
#   leftovers-shown leftovers of a killed write are shown by `verify` before they are swept
#   swept           the next backup leaves no temp file and no backup directory without manifest
#   unblocked       a later retention run is not blocked by a killed process's lock
#   caught          corruption fails `verify --deep` naming the backup
#   refused         a restore of the corrupted backup fails and leaves no database behind
#   race-restore    the racing restore succeeds with the right data
#   race-kept       retention kept the backup being read until the restore ended
#
# Works in $BENCH_DIR (default /tmp/pgbackd-bench) with a cluster on $TORTURE_PORT (55439).
set -euo pipefail
rounds=${1:-30}; seed=${2:-$(date +%s)}
RANDOM=$seed
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${TORTURE_PORT:-55439}
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/torture-cluster" "$port" autovacuum=off >/dev/null
db=torture
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$db'" postgres)" = 0 ]; then
  echo "generating the data set into $db ..."
  "$here/lib/gendata.sh" "$port" "$db" 3 >/dev/null
fi
work=$(mktemp -d "$dir/torture.XXXXXX")
trap 'rm -rf "$work"' EXIT

config() { # config FILE REPO [extra yaml]
  cat >"$1" <<YAML
database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
local_backup_dir: $2
reports: {dir: $2-reports}
backup: {min_size_ratio: 0}
retention:
  orphan_grace: 0s
  full_backup: {keep_last: 100}
locks: {wait: 60s}
monitoring: {listen: off, min_free_space: 0}
${3:-}
YAML
  chmod 600 "$1"
}

# the baseline: two good backups
config "$work/base.yaml" "$work/base"
"$pgbackd" -c "$work/base.yaml" --log-level error backup >/dev/null
start=$(date +%s%N)
"$pgbackd" -c "$work/base.yaml" --log-level error backup >/dev/null
backup_ms=$((($(date +%s%N) - start) / 1000000))
rows=$(psql -Atc "select count(*) from pgbench_accounts" "$db")
echo "seed $seed, $rounds rounds; a backup takes ${backup_ms} ms; $(psql -Atc "select pg_size_pretty(pg_database_size('$db'))" postgres)"

declare -A tried correct
failures=()
check() { # check NAME ROUND_LABEL CONDITION...
  local name=$1 label=$2; shift 2
  tried[$name]=$((${tried[$name]:-0} + 1))
  if "$@"; then correct[$name]=$((${correct[$name]:-0} + 1)); else failures+=("$label: $name"); fi
}
listed() { "$pgbackd" -c "$cfg" --log-level error list --json 2>/dev/null | python3 -c '
import json, sys
print(" ".join(e["id"] for e in json.load(sys.stdin) if e.get("status", "ok") == "ok"))'; }
tmp_empty() { [ -z "$(ls -A "$tmp")" ]; }
verify_all() { "$pgbackd" -c "$cfg" --log-level error verify --all --deep >"$r/verify.out" 2>"$r/verify.err"; }
no_leftovers() {
  [ -z "$(find "$repo" -name '.pgbackd-tmp-*')" ] || return 1
  for d in "$repo/$db"/*/; do [ -f "$d/manifest.json" ] || return 1; done
}
db_absent() { [ "$(psql -Atc "select count(*) from pg_database where datname = '$1'" postgres)" = 0 ]; }
drop_db() { psql -qc "drop database if exists $1" postgres 2>/dev/null || true; }
random_ms() { echo $((RANDOM * $1 / 32768)); }
sleep_ms() { sleep "$(awk "BEGIN{print $1 / 1000}")"; }

for ((i = 1; i <= rounds; i++)); do
  r=$work/round-$i; mkdir -p "$r"
  repo=$r/repo; cp -a "$work/base" "$repo"; cp -a "$work/base-reports" "$repo-reports"
  cfg=$r/pgbackd.yaml; config "$cfg" "$repo"
  tmp=$r/tmp; mkdir -p "$tmp"
  before=$(listed)
  scenarios=(kill9-backup sigterm-backup kill9-restore corrupt race)
  scenario=${scenarios[$((RANDOM % ${#scenarios[@]}))]}
  label="round $i ($scenario)"
  failed_before=${#failures[@]}
  round_start=$(date +%s%N)
  case $scenario in
    kill9-backup|sigterm-backup)
      sig=KILL; [ "$scenario" = sigterm-backup ] && sig=TERM
      TMPDIR=$tmp "$pgbackd" -c "$cfg" --log-level error backup >"$r/out" 2>"$r/err" &
      pid=$!
      sleep_ms "$(random_ms $((backup_ms * 12 / 10)))"
      kill -$sig $pid 2>/dev/null || true
      status=0; wait $pid 2>/dev/null || status=$?
      sleep 0.3  # a pg_dump orphaned by kill -9 exits on its broken pipe
      after=$(listed)
      if [ $status = 0 ]; then
        check outcome "$label" test "$(wc -w <<<"$after")" = 3
      elif [ $sig = KILL ] && [ "$(wc -w <<<"$after")" = 3 ]; then
        # killed between the manifest's commit and the exit: the backup is complete (listed-verify
        # reads it whole); the exit status says failed, which errs on the safe side
        check outcome "$label" test "${after#"$before "}" != "$after"
        committed_late=$((${committed_late:-0} + 1))
      else
        check outcome "$label" test "$after" = "$before"
      fi
      check listed-verify "$label" verify_all
      check no-secrets-tmp "$label" tmp_empty
      if ! no_leftovers; then
        check leftovers-shown "$label" grep -qE "leftovers? of stopped processes" "$r/verify.err"
      fi
      "$pgbackd" -c "$cfg" --log-level error backup >/dev/null 2>"$r/next.err" || true
      check swept "$label" no_leftovers
      ;;
    kill9-restore)
      target=torture_r$i
      TMPDIR=$tmp "$pgbackd" -c "$cfg" --log-level error restore --latest --target-database $target --create --jobs 2 \
        >"$r/out" 2>"$r/err" &
      pid=$!
      sleep_ms "$(random_ms $((backup_ms * 2)))"
      kill -KILL $pid 2>/dev/null || true
      wait $pid 2>/dev/null || true
      sleep 0.3
      check no-secrets-tmp "$label" tmp_empty
      check outcome "$label" test "$(listed)" = "$before"
      config "$cfg" "$repo" "" && sed -i 's/keep_last: 100/keep_last: 1/' "$cfg"
      check unblocked "$label" timeout 30 "$pgbackd" -c "$cfg" --log-level error retention >/dev/null 2>"$r/ret.err"
      drop_db $target
      ;;
    corrupt)
      ids=($before); id=${ids[$((RANDOM % 2))]}
      files=("$repo/$db/$id"/*); file=${files[$((RANDOM % ${#files[@]}))]}
      damage=$((RANDOM % 4))
      # an empty file (the manifest digest: its name is its content) can only be renamed or deleted
      if [ ! -s "$file" ]; then damage=$((4 + RANDOM % 2)); fi
      case $damage in
        0) python3 -c "
import sys, random
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
if b:
    i = random.randrange(len(b)); b[i] ^= 1 << random.randrange(8)
open(p, 'wb').write(b)" "$file"; how=flipped ;;
        1) truncate -s $(($(stat -c %s "$file") / 2)) "$file"; how=truncated ;;
        2) : >"$file"; how=emptied ;;
        3|5) rm -f "$file"; how=deleted ;;
        4) name=$(basename "$file"); last=${name: -1}; [ "$last" = 0 ] && new=1 || new=0
           mv "$file" "$(dirname "$file")/${name%?}$new"; how=renamed ;;
      esac
      label="$label: $(basename "$file") $how"
      check caught "$label" bash -c "! '$pgbackd' -c '$cfg' --log-level error verify --all --deep >'$r/verify.out' 2>&1 && grep -q '$id' '$r/verify.out'"
      target=torture_c$i
      check refused "$label" bash -c "! '$pgbackd' -c '$cfg' --log-level error restore $id --target-database $target --create --globals >'$r/restore.out' 2>&1"
      check refused-clean "$label" db_absent $target
      drop_db $target
      ;;
    race)
      ids=($before); oldest=${ids[0]}
      target=torture_race$i
      "$pgbackd" -c "$cfg" --log-level error restore "$oldest" --target-database $target --create >"$r/out" 2>"$r/err" &
      pid=$!
      sleep_ms "$(random_ms $((backup_ms / 2)))"
      sed -i 's/keep_last: 100/keep_last: 1/' "$cfg"
      "$pgbackd" -c "$cfg" --log-level error retention >"$r/ret.out" 2>"$r/ret.err" || true
      status=0; wait $pid || status=$?
      check race-restore "$label" test "$status:$(psql -Atc "select count(*) from pgbench_accounts" $target 2>/dev/null)" = "0:$rows"
      # retention ran while the restore held its lock: the oldest backup survives that run
      # unless the restore had already finished
      if grep -q "in use by" "$r/ret.out"; then
        check race-kept "$label" test -f "$repo/$db/$oldest/manifest.json"
      fi
      drop_db $target
      ;;
  esac
  # keep what a failed round left, for a look
  [ ${#failures[@]} = "$failed_before" ] && rm -rf "$r"
  [ -n "${TORTURE_VERBOSE:-}" ] && echo "$label: $((($(date +%s%N) - round_start) / 1000000)) ms" || printf '.'
done
echo
printf '%-16s %6s %8s\n' check tried correct
for k in outcome listed-verify no-secrets-tmp leftovers-shown swept unblocked caught refused refused-clean race-restore race-kept; do
  [ -n "${tried[$k]:-}" ] && printf '%-16s %6s %8s\n' "$k" "${tried[$k]}" "${correct[$k]:-0}"
done
[ -n "${committed_late:-}" ] && echo "($committed_late backups killed after their commit were complete and listed)"
if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}"
  echo "(keep the work directory: rerun with the same seed $seed)"
  trap - EXIT
  exit 1
fi
echo "all checks held (seed $seed)"
