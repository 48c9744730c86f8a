#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: the data (Debian's Fashion-MNIST package
# when we are root), the tools the tests use, and the virtualenv in .venv.
#   scripts/setup.sh [--tests]
# --tests also prepares .venvs/example-flwr-1.39 and -1.42: Flower alone (no fedgma, no torch),
# where tests/e2e/test_example.py runs examples/sign-agreement/README.md as written.
set -euo pipefail
cd "$(dirname "$0")/.."
for_tests=0
if [ "${1:-}" = --tests ]; then for_tests=1; fi

PYTHON=${PYTHON:-python3.11}
DEBIAN_DATA=/usr/share/datasets/fashion-mnist

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    [ -d "$DEBIAN_DATA" ] || missing+=(dataset-fashion-mnist)
    command -v ss >/dev/null || missing+=(iproute2)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)   # SuperNode keys (auth tests)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
elif [ ! -d "$DEBIAN_DATA" ]; then
    echo "setup: $DEBIAN_DATA is absent and we are not root: torchvision will download" \
         "Fashion-MNIST on first use (needs internet), or install dataset-fashion-mnist." >&2
fi

if ! command -v "$PYTHON" >/dev/null; then
    echo "setup: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.fedgma-installed
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    echo "setup: installing the project and its dependencies into .venv (torch: a few GB)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
    cp pyproject.toml "$stamp"
fi

if [ "$for_tests" = 1 ]; then
    for flwr in 1.39 1.42; do
        venv=.venvs/example-flwr-$flwr
        if [ ! -f "$venv/.flwr-$flwr" ]; then
            echo "setup: $venv (flwr[simulation]==$flwr.*, for tests/e2e/test_example.py)"
            rm -rf "$venv"
            "$PYTHON" -m venv "$venv"
            "$venv/bin/python" -m pip install -q --disable-pip-version-check "flwr[simulation]==$flwr.*"
            touch "$venv/.flwr-$flwr"
        fi
    done
fi
