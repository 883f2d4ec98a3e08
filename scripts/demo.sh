#!/usr/bin/env bash
# Builds everything and runs the word count job on a sample text in embedded
# mode (`sandmill run`): the first command of the README.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what building and running needs: no database server, browser or NATS.
bash scripts/setup.sh build

echo "demo: building the guest examples (wasm32-wasip2)" >&2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
echo "demo: building sandmill" >&2
cargo build --quiet -p sandmill-server

echo "demo: sandmill run examples/wordcount-mapreduce.toml (embedded: SQLite, in-process broker, workers)" >&2
echo "demo: a map per split of examples/corpus/*.txt, two reduces; the ten most frequent words:" >&2
target/debug/sandmill run examples/wordcount-mapreduce.toml | sort -k2,2nr -k1,1 | head -n 10
