#!/usr/bin/env bash
# Prepare a fresh machine: Debian packages the tests use (when root), and the virtual
# environment in .venv with probenet and its dev tools. Safe to run again: it only does
# what is missing.
#   scripts/setup.sh           system packages + venv
#   scripts/setup.sh --venv    venv only (enough for the demo)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SYSTEM_PACKAGES=(mosquitto prometheus prometheus-alertmanager victoria-metrics nftables iproute2 tmux chromium)

install_system_packages() {
    local missing=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
    # tests/ha run a VictoriaMetrics single-node beside the Prometheus pair.
    command -v victoria-metrics >/dev/null || [ -x /usr/bin/victoria-metrics ] || missing+=(victoria-metrics)
    command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
    command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing+=(iproute2)
    command -v tmux >/dev/null || missing+=(tmux)
    # tests/browser drive Debian's chromium through Playwright (no browser download).
    command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: not root (or no apt-get): skipping system packages ${missing[*]};" \
             "the tests that need them will be skipped" >&2
        return 0
    fi
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_venv() {
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating .venv" >&2
        "$PYTHON" -m venv .venv
    fi
    local stamp=.venv/.probenet-installed
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "setup: installing probenet and its dev tools into .venv" >&2
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e '.[dev]'
        echo "$want" > "$stamp"
    fi
}

if [ "${1:-}" != "--venv" ]; then
    install_system_packages
fi
install_venv
