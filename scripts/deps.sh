#!/usr/bin/env bash
# Installs what pgbackd's demo and tests need on Debian/Ubuntu, when it is missing:
# PostgreSQL server and client binaries (a throwaway cluster is started from them), zstd, openssl,
# promtool (package prometheus), systemd-analyze (package systemd).
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
# promtool checks the alert rules and the /metrics output
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# systemd-analyze verifies the shipped unit and scores its sandbox (installing the package
# does not make systemd the init of a container)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# the email notification tests make a self-signed certificate for their SMTP server
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
