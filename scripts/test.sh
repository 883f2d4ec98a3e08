#!/usr/bin/env bash
# Installs what the tests need, checks formatting and lints (warnings are
# errors), then runs every test: the workspace (unit,
# sandbox, storage and API per backend, end-to-end, fleet), the doc
# examples, the guests' own unit tests natively, and a check that the
# benchmarks build and run. The README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# One build from scratch gains nothing from incremental state, which is
# the largest part of a fresh target folder (about 2 GiB): a CI disk ran
# out of room with it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Style and lints first: they fail in seconds, the tests in minutes.
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets
cargo test --workspace --doc
cargo test --manifest-path guest-examples/Cargo.toml
