#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, runs unit and
# integration tests (which start their own PostgreSQL clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/s3-tools.sh
cargo fmt --check
cargo clippy --locked --all-targets --quiet -- -D warnings
# the build without the optional features (S3, email) stays honest
cargo check --locked --quiet --no-default-features --lib --bins
cargo test --locked --all-targets
