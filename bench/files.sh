#!/usr/bin/env bash
# File backup benchmark: pgbackd backup-files / restore-files against tar | zstd, measured in
# one run, and the size of a daily incremental after 1 % of the files changed.
#
#   bench/files.sh [FILES] [KIB_PER_FILE]     (default 2000 files of 100 KiB: ~200 MB, photo-like)
#
# Works in $BENCH_DIR (default /tmp/pgbackd-bench). Prints seconds, stored bytes and peak RSS.
set -euo pipefail
files=${1:-2000}; kib=${2:-100}
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
dir=${BENCH_DIR:-/tmp/pgbackd-bench}
(cd "$root" && cargo build --release --quiet)
pgbackd=$root/target/release/pgbackd
mkdir -p "$dir"
work=$(mktemp -d "$dir/files.XXXXXX"); trap 'rm -rf "$work"' EXIT
src=$work/src
echo "generating $files files of $kib KiB (incompressible, like photos) in $src ..."
python3 - "$src" "$files" "$kib" <<'PY'
import os, sys
src, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(src, f"{i % 50:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"upload-{i}.jpg"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
cat >"$work/pgbackd.yaml" <<YAML
databases: [unused]
local_backup_dir: $work/repo
monitoring: {listen: off}
files:
  - name: uploads
    paths: [$src]
YAML
chmod 600 "$work/pgbackd.yaml"
run() { # label command...: prints "seconds maxrss_kib"
  sync; /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
read -r t_tar _ < <(run bash -c "tar -cf - -C / ${src#/} | zstd -q -3 -T0 > $work/baseline.tar.zst")
s_tar=$(stat -c %s "$work/baseline.tar.zst")
read -r t_full rss_full < <(run "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup-files --name uploads)
s_full=$(find "$work/repo/files" -name 'data.tar*' -printf '%s\n' | head -1)
# a day's change: 1 % of the files rewritten, 1 % new
python3 - "$src" "$files" "$kib" <<'PY'
import os, sys
src, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(0, n, 100):
    with open(os.path.join(src, f"{i % 50:02d}", f"upload-{i}.jpg"), "wb") as f:
        f.write(os.urandom(kib * 1024))
    with open(os.path.join(src, f"{i % 50:02d}", f"new-{i}.jpg"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
read -r t_inc rss_inc < <(run "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn backup-files --name uploads)
s_inc=$(ls -t $(find "$work/repo/files" -name 'data.tar*') | head -1 | xargs stat -c %s)
mkdir -p "$work/plain"
read -r t_untar _ < <(run bash -c "zstd -q -d < $work/baseline.tar.zst | tar -x -C $work/plain")
read -r t_restore rss_restore < <(run "$pgbackd" -c "$work/pgbackd.yaml" --log-level warn restore-files --latest --name uploads --to "$work/restored")
ratio() { awk "BEGIN{printf \"%.2fx\", $1 / $2}"; }
echo
echo "$files files of $kib KiB; $(nproc) cores"
printf '%-40s %8s %8s %14s %10s\n' "" "seconds" "vs tar" "stored bytes" "peak RSS"
printf '%-40s %8s %8s %14s %10s\n' "tar | zstd -3 -T0" "$t_tar" "1.00x" "$s_tar" "-"
printf '%-40s %8s %8s %14s %10s\n' "pgbackd backup-files (full)" "$t_full" "$(ratio "$t_full" "$t_tar")" "$s_full" "$((rss_full / 1024)) MiB"
printf '%-40s %8s %8s %14s %10s\n' "pgbackd backup-files (after 1% change)" "$t_inc" "$(ratio "$t_inc" "$t_tar")" "$s_inc" "$((rss_inc / 1024)) MiB"
printf '%-40s %8s %8s %14s %10s\n' "zstd -d | tar -x" "$t_untar" "1.00x" "-" "-"
printf '%-40s %8s %8s %14s %10s\n' "pgbackd restore-files (incremental)" "$t_restore" "$(ratio "$t_restore" "$t_untar")" "-" "$((rss_restore / 1024)) MiB"
echo
echo "incremental stored vs full: $(awk "BEGIN{printf \"%.2f%%\", 100 * $s_inc / $s_full}")"
