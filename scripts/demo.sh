#!/usr/bin/env bash
# Builds everything and runs word count on a sample text, embedded, in this
# process: the first command of the README.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "demo: building the guest examples (wasm32-wasip2)" >&2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
echo "demo: building sandmill" >&2
cargo build --quiet -p sandmill-server

wc=guest-examples/target/wasm32-wasip2/release/wordcount.wasm
echo "demo: the ten most frequent words of examples/alice.txt" >&2
target/debug/sandmill exec "$wc" --kind map --input examples/alice.txt --timeout 10s \
    | sort -k2,2nr -k1,1 | head -n 10
