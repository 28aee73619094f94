#!/usr/bin/env bash
# Builds pgbackd's release artifacts into dist/ (or --out DIR):
#   pgbackd_<version>_amd64.deb: /usr/bin/pgbackd, the systemd unit, a `pgbackd` system user and
#     group (postinst), /etc/pgbackd/pgbackd.yaml (a conffile, root:pgbackd 0640), bash/zsh/fish
#     completions, man pages, docs in /usr/share/doc/pgbackd;
#   with --musl, pgbackd-<version>-x86_64-linux-musl.tar.gz: a static binary in usr/local/bin with
#     the same unit, completions, man pages and docs (the example config under
#     usr/share/doc/pgbackd/examples; nothing in etc/), for
#     `sudo tar -C / --strip-components=1 -xzf pgbackd-...tar.gz` (needs `rustup target add
#     x86_64-unknown-linux-musl` and Debian's musl-tools).
# Usage: scripts/package.sh [--binary PATH] [--musl] [--out DIR] [--uncompressed]
#   --binary PATH: package this binary instead of building one (the tests package theirs);
#   --uncompressed: a .deb without compression (quick, for tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/dist"; binary=""; musl=""; compression=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --musl) musl=yes; shift ;;
    --uncompressed) compression=(-Znone); shift ;;
    *) echo "usage: $0 [--binary PATH] [--musl] [--out DIR] [--uncompressed]" >&2; exit 2 ;;
  esac
done
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
if [ -z "$binary" ]; then
  echo "building the release binary (cargo build --release --locked)"
  cargo build --release --locked
  binary=target/release/pgbackd
fi
mkdir -p "$out"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# the files both artifacts carry, under a prefix ($1)
payload() {
  local p=$1 bin=$2 bindir=$3
  install -D -m 0755 "$bin" "$p$bindir/pgbackd"
  install -d "$p/lib/systemd/system"
  sed "s|/usr/local/bin/pgbackd|$bindir/pgbackd|g" deploy/pgbackd.service > "$p/lib/systemd/system/pgbackd.service"
  install -D -m 0640 config/pgbackd.yaml "$p/etc/pgbackd/pgbackd.yaml"
  "$bin" completions bash | install -D -m 0644 /dev/stdin "$p/usr/share/bash-completion/completions/pgbackd"
  "$bin" completions zsh | install -D -m 0644 /dev/stdin "$p/usr/share/zsh/vendor-completions/_pgbackd"
  "$bin" completions fish | install -D -m 0644 /dev/stdin "$p/usr/share/fish/vendor_completions.d/pgbackd.fish"
  "$bin" man --dir "$p/usr/share/man/man1"
  gzip -9n "$p"/usr/share/man/man1/*.1
  install -d "$p/usr/share/doc/pgbackd/examples"
  install -m 0644 README.md docs/*.md "$p/usr/share/doc/pgbackd/"
  install -m 0644 config/*.yaml deploy/prometheus-alerts.yml deploy/grafana-dashboard.json "$p/usr/share/doc/pgbackd/examples/"
}

# .deb
deb="$work/deb"
payload "$deb" "$binary" /usr/bin
install -d "$deb/DEBIAN"
cat > "$deb/DEBIAN/control" <<CONTROL
Package: pgbackd
Version: $version
Architecture: amd64
Maintainer: pgbackd developers <pgbackd@localhost>
Depends: adduser, libc6 (>= 2.31)
Recommends: postgresql-client, zstd
Section: database
Priority: optional
Homepage: https://github.com/pgbackd/pgbackd
Installed-Size: $(du -sk "$deb" | cut -f1)
Description: PostgreSQL backups you can prove restore
 pgbackd streams pg_dump and pg_basebackup through compression, SHA-256 and optional
 encryption into local disks and S3, archives the WAL for point-in-time recovery, verifies and
 test-restores on a schedule, and reports through JSON logs, Prometheus metrics and alerts.
CONTROL
echo /etc/pgbackd/pgbackd.yaml > "$deb/DEBIAN/conffiles"
cat > "$deb/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd pgbackd >/dev/null; then
    adduser --system --group --home /var/lib/pgbackd --no-create-home --shell /usr/sbin/nologin pgbackd
  fi
  # the config holds secrets or their references: readable by the service's group only
  chown root:pgbackd /etc/pgbackd /etc/pgbackd/pgbackd.yaml
  chmod 0750 /etc/pgbackd
  chmod 0640 /etc/pgbackd/pgbackd.yaml
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
  fi
  echo "pgbackd: edit /etc/pgbackd/pgbackd.yaml (secrets in /etc/pgbackd/pgbackd.env, 0600), then"
  echo "  pgbackd -c /etc/pgbackd/pgbackd.yaml check-config --connect && systemctl enable --now pgbackd"
fi
POSTINST
cat > "$deb/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop pgbackd.service || true
fi
PRERM
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm"
debfile="$out/pgbackd_${version}_amd64.deb"
dpkg-deb --root-owner-group "${compression[@]}" --build "$deb" "$debfile" >/dev/null
echo "$debfile"

# static tarball
if [ -n "$musl" ]; then
  echo "building the static binary (cargo build --release --locked --target x86_64-unknown-linux-musl)"
  cargo build --release --locked --target x86_64-unknown-linux-musl
  name="pgbackd-$version-x86_64-linux-musl"
  payload "$work/$name" target/x86_64-unknown-linux-musl/release/pgbackd /usr/local/bin
  # unpacked over / it must never replace a config: the example stays in the docs
  rm -r "$work/$name/etc"
  tar -C "$work" --owner=0 --group=0 -czf "$out/$name.tar.gz" "$name"
  echo "$out/$name.tar.gz"
fi
