#!/usr/bin/env bash
# The fast lane for contributors: the unit tests, and the integration tests that need only
# PostgreSQL (each starts its own throwaway cluster). Leaves out the tests that need the S3 and
# SMTP servers (their names say s3 or smtp); scripts/test-all.sh runs everything, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo test --locked --lib
cargo test --locked --test it -- --skip s3 --skip smtp
