#!/usr/bin/env bash
# Installs what the tests need, then runs every test: the workspace (unit,
# sandbox, storage and API per backend, end-to-end, fleet), the doc
# examples, the guests' own unit tests natively, and a check that the
# benchmarks build and run. The README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo test --workspace --all-targets
cargo test --workspace --doc
cargo test --manifest-path guest-examples/Cargo.toml
