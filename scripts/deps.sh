#!/usr/bin/env bash
# Installs what pgbackd's demo and tests need on Debian/Ubuntu, when it is missing:
# PostgreSQL server and client binaries (postgresql-15 on Debian 12; no system cluster is created
# or started: the demo and tests start their own throwaway clusters), zstd, openssl, promtool
# (package prometheus), systemd-analyze (package systemd), python3-venv (the test servers' venv),
# chromium and chromium-driver (the status page is tested in a real headless browser), OpenSSH's
# client and server (the SFTP target), npm (Azurite, the Azure emulator).
set -euo pipefail
need=()
server=""
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || server=yes
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
# promtool checks the alert rules and the /metrics output
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# systemd-analyze verifies the shipped unit and scores its sandbox (installing the package
# does not make systemd the init of a container)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# the email notification tests make a self-signed certificate for their SMTP server
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# the status page test drives a headless chromium through chromedriver (WebDriver)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# the SFTP target uses the OpenSSH client; its tests start OpenSSH's sshd and sftp-server
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/sshd ] && [ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-server openssh-sftp-server)
# scripts/s3-tools.sh installs Azurite (the Azure emulator) with npm
command -v npm >/dev/null 2>&1 || need+=(npm)
# scripts/s3-tools.sh makes a venv for the S3 and SMTP test servers
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ] || [ -n "$server" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # no service started by a package (PostgreSQL's cluster, sshd on port 22): policy-rc.d,
  # removed again below
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 0755 /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  if [ -n "$server" ]; then
    # the server binaries only: no main cluster on 5432 (postgresql-common's createcluster.conf)
    $sudo mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf \
      || echo 'create_main_cluster = false' | $sudo tee -a /etc/postgresql-common/createcluster.conf >/dev/null
    if apt-cache show postgresql-15 >/dev/null 2>&1; then need+=(postgresql-15 postgresql-client-15); else need+=(postgresql); fi
  fi
  echo "installing: ${need[*]}"
  # confold: keep the createcluster.conf written above when postgresql-common installs its own
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null
fi
