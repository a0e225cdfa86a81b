#!/bin/sh
# Make sure the system commands the lab needs exist. Arguments: COMMAND:DEBIAN_PACKAGE ...
# (a COMMAND that starts with / is a file that must exist: a package with no command)
# As root, missing packages are installed with apt-get; otherwise the exact command is
# printed and the script fails, so nothing half-works.
set -eu
missing=""
for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    case $cmd in
    /*) [ -e "$cmd" ] || missing="$missing $pkg" ;;
    *) command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg" ;;
    esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
    exit 0
fi
echo "Missing system packages:$missing" >&2
echo "Install them with:  sudo apt-get install -y$missing" >&2
exit 1
