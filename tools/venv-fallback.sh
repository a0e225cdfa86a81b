#!/bin/sh
# `python3 -m venv` failed: on Debian and Ubuntu the venv module is a package of its own.
# As root install it and try again; otherwise print the command to run.
set -eu
python=$1
venv=$2
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing python$version-venv (the venv module)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$version-venv" >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    exec "$python" -m venv "$venv"
fi
echo "Python's venv module is missing. Install it with:  sudo apt-get install -y python3-venv" >&2
exit 1
