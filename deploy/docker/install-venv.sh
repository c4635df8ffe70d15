#!/bin/sh
# install-venv.sh PYTHON VENV WHEEL [EXTRAS]
#
# The one install step of every teeserve image, and of CI's check of the images' build steps
# (tests/deploy/test_docker.py runs this very script): a fresh venv made with --copies (real files,
# no symlinks: Gramine trusted files must be regular files and the manifest's libos.entrypoint is the
# venv's own interpreter), the teeserve wheel with its pinned dependencies, a dependency check, and
# the console script's --help as a smoke test. pip and setuptools are removed from the result: the
# runtime never installs anything, and every file left in the venv is a trusted (measured) file.
#
# EXTRA_SITE_PACKAGES (CI only): a site-packages directory to resolve dependencies from, with
# PIP_NO_INDEX=1, so the check runs without a package index. Images never set it.
set -eu

if [ "$#" -lt 3 ]; then
    echo "usage: install-venv.sh PYTHON VENV WHEEL [EXTRAS]" >&2
    exit 2
fi
python=$1
venv=$2
wheel=$3
extras=${4:-}

if [ -e "$venv" ]; then
    echo "install-venv.sh: $venv already exists" >&2
    exit 1
fi
"$python" -m venv --copies "$venv"
if [ -n "${EXTRA_SITE_PACKAGES:-}" ]; then
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    printf '%s\n' "$EXTRA_SITE_PACKAGES" > "$site/_teeserve_ci_deps.pth"
fi
spec=$wheel
if [ -n "$extras" ]; then
    spec="$wheel[$extras]"
fi
"$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --no-compile "$spec"
"$venv/bin/python" -m pip check --disable-pip-version-check
"$venv/bin/python" -m pip uninstall --yes --quiet --disable-pip-version-check pip setuptools 2>/dev/null || true
"$venv/bin/teeserve" --version
"$venv/bin/teeserve" --help > /dev/null
echo "install-venv.sh: teeserve installed in $venv"
