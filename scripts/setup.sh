#!/usr/bin/env bash
# Installs what building and testing Sandmill needs, when it is missing.
# Idempotent: a second run only checks.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi
