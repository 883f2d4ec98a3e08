#!/usr/bin/env bash
# Installs what the tests need, then runs every test: the workspace (unit,
# sandbox, end-to-end), the guests' own unit tests natively, and a check
# that the benchmarks build and run. The README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

cargo test --workspace --all-targets
cargo test --manifest-path guest-examples/Cargo.toml
