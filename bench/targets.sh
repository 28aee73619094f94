#!/usr/bin/env bash
# Storage target benchmark: the same full backup to a local repository only, then to Azure only
# (Azurite), GCS only (fake-gcs-server) and SFTP only (OpenSSH's sshd and sftp-server, as
# postgres when run as root), all real servers on 127.0.0.1, interleaved, best of RUNS.
#
#   bench/targets.sh [SCALE] [RUNS]      (default scale 30, 3 runs)
#
# Issue 21 targets: wall time to each target <= 1.3x local; peak RSS within the configured
# buffers (Azure: part_size x (max_concurrent_parts + 1) = 16 MiB x 5; GCS: 2 chunks of 16 MiB;
# SFTP: max_concurrent_writes x 255 KiB = 4 MiB) on top of what a local backup needs.
set -euo pipefail
scale=${1:-30}; runs=${2:-3}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}; port=${BENCH_PORT:-55432}
db=bench_$scale
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
tools=${PGBACKD_TEST_TOOLS:-$HOME/.cache/pgbackd-test}

(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
[ -x "$tools/azurite/node_modules/.bin/azurite-blob" ] || "$root/scripts/s3-tools.sh"
fakegcs=$(find "$tools/localstack/lib" -path '*fake-gcs-server/bin/fake-gcs-server-linux-amd64' | head -1)
mkdir -p "$dir"
pg_isready -q -h 127.0.0.1 -p "$port" || "$here/lib/pgcluster.sh" start "$dir/cluster" "$port" autovacuum=off
if [ "$(psql -Atc "select count(*) from pg_database where datname = '$db'" postgres)" = 0 ]; then
  echo "generating scale $scale data set into $db ..."
  "$here/lib/gendata.sh" "$port" "$db" "$scale" >/dev/null
fi
work=$(mktemp -d "$dir/targets.XXXXXX")
chmod 755 "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT

azport=$(free_port)
"$tools/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$azport" --disableTelemetry \
  --skipApiVersionCheck --location "$work/azurite" >/dev/null 2>&1 &
pids+=($!)
gport=$(free_port)
"$fakegcs" -scheme http -host 127.0.0.1 -port "$gport" -public-host "127.0.0.1:$gport" \
  -external-url "http://127.0.0.1:$gport" -backend filesystem -filesystem-root "$work/gcs" -log-level warn >/dev/null 2>&1 &
pids+=($!)
sport=$(free_port)
user=$(id -un); run_as=()
if [ "$(id -u)" = 0 ]; then user=postgres; run_as=(runuser -u postgres --); fi
mkdir -p "$work/ssh" "$work/sftp"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_key"; ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client_key"
cp "$work/ssh/client_key.pub" "$work/ssh/authorized_keys"
cat >"$work/ssh/sshd_config" <<CONF
Port $sport
ListenAddress 127.0.0.1
HostKey $work/ssh/host_key
AuthorizedKeysFile $work/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $work/ssh/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
echo "[127.0.0.1]:$sport $(cut -d' ' -f1,2 "$work/ssh/host_key.pub")" >"$work/known_hosts"
[ "$user" = postgres ] && chown -R postgres "$work/ssh" "$work/sftp"
"${run_as[@]}" /usr/sbin/sshd -D -f "$work/ssh/sshd_config" >/dev/null 2>&1 &
pids+=($!)
wait_port "$azport"; wait_port "$gport"; wait_port "$sport"
curl -fsS -X POST -d '{"name":"bench"}' "http://127.0.0.1:$gport/storage/v1/b" >/dev/null
# the Azure container, created with a SharedKey-signed request
python3 - "$azport" <<'PY'
import base64, hmac, hashlib, datetime, sys, urllib.request
port, acct = sys.argv[1], "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
d = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
sts = "PUT\n" + "\n" * 11 + f"x-ms-date:{d}\nx-ms-version:2021-08-06\n/{acct}/{acct}/bench\nrestype:container"
sig = base64.b64encode(hmac.new(key, sts.encode(), hashlib.sha256).digest()).decode()
r = urllib.request.Request(f"http://127.0.0.1:{port}/{acct}/bench?restype=container", method="PUT",
    headers={"x-ms-date": d, "x-ms-version": "2021-08-06", "Authorization": f"SharedKey {acct}:{sig}"})
urllib.request.urlopen(r)
PY

base="database: {host: 127.0.0.1, port: $port, username: postgres, database: $db}
backup: {min_size_ratio: 0}"
printf '%s\nlocal_backup_dir: %s\n' "$base" "$work/repo" >"$work/local.yaml"
printf '%s\nstorage:\n  - {name: azure, type: azure, endpoint: "http://127.0.0.1:%s/devstoreaccount1", container: bench, prefix: p, connection_string: "UseDevelopmentStorage=true"}\n' \
  "$base" "$azport" >"$work/azure.yaml"
printf '%s\nstorage:\n  - {name: gcs, type: gcs, endpoint: "http://127.0.0.1:%s", bucket: bench, prefix: p, anonymous: true}\n' \
  "$base" "$gport" >"$work/gcs.yaml"
printf '%s\nstorage:\n  - {name: sftp, type: sftp, host: 127.0.0.1, port: %s, user: %s, path: %s, key_file: %s, known_hosts: %s}\n' \
  "$base" "$sport" "$user" "$work/sftp/p" "$work/ssh/client_key" "$work/known_hosts" >"$work/sftp.yaml"
chmod 600 "$work"/*.yaml

time_once() {
  psql -q -c CHECKPOINT postgres >/dev/null; sync
  /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$1" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
declare -A best rss
for _ in $(seq "$runs"); do
  for t in local azure gcs sftp; do
    # a fresh repository each run: every run is a full backup of the same size
    sed -i "s#prefix: p[0-9]*#prefix: p$RANDOM#; s#path: $work/sftp/p[0-9]*#path: $work/sftp/p$RANDOM#" "$work/$t.yaml"
    read -r s m < <(time_once "rm -rf $work/repo; $pgbackd -c $work/$t.yaml --log-level warn backup")
    if [ -z "${best[$t]:-}" ] || awk "BEGIN{exit !($s < ${best[$t]})}"; then best[$t]=$s; fi
    if [ "$m" -gt "${rss[$t]:-0}" ]; then rss[$t]=$m; fi
  done
done
echo
echo "scale $scale: best of $runs runs, interleaved; every server on 127.0.0.1 (part_size 16 MiB, 4 in flight)"
printf '%-14s %8s %8s %10s\n' "backup to" "seconds" "vs local" "peak RSS"
for t in local azure gcs sftp; do
  printf '%-14s %8s %8s %10s\n' "$t" "${best[$t]}" "$(awk "BEGIN{printf \"%.2fx\", ${best[$t]} / ${best[local]}}")" "$((rss[$t] / 1024)) MiB"
done
