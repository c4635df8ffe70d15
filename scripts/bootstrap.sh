#!/usr/bin/env bash
# Create the virtual environment and install teeserve with every pinned dependency.
# Used by the Makefile (and so by CI): a fresh machine of this kind needs nothing else.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
    echo "teeserve needs Python 3.11 (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[tensorflow,plot,deploy,dev]'
# The official TensorFlow Serving client stubs are the compatibility oracle of the tests. The package
# declares a dependency on the full `tensorflow` wheel, which would install a second copy of TensorFlow
# over tensorflow-cpu; its real needs (grpcio, protobuf, tensorflow) are already installed above.
"$VENV/bin/python" -m pip install --quiet --no-deps tensorflow-serving-api==2.21.0
# Debian packages: nginx with its stream module (TLS passthrough) for the multi-replica tests; strace
# for the test that traces what a real server writes to the file system (nothing); g++, pkg-config and
# gRPC's C++ library for the benchmarks' C++ load generator (benchmarks/grpcload) and its tests.
APT_PACKAGES=${TEESERVE_APT_PACKAGES-nginx libnginx-mod-stream strace g++ pkg-config libgrpc++-dev}
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
        # The tests start their own nginx on loopback; the distribution's service is not needed.
        (command -v systemctl >/dev/null 2>&1 && systemctl disable --now nginx) >/dev/null 2>&1 || true
        (service nginx stop) >/dev/null 2>&1 || true
    else
        echo "note: Debian packages missing and not installable here (need root + apt):$missing" >&2
    fi
fi
