#!/bin/sh
# Checks the files in this directory the way systemd will read them:
#   - certgate.service and certgate.socket with `systemd-analyze verify`;
#   - certgate.sysusers with systemd-sysusers, then certgate.tmpfiles with
#     systemd-tmpfiles, and the owner and mode they give /etc/certgate and
#     its keys.
# Everything happens in a throwaway root (--root), so it works as root on a
# machine or container where systemd is installed but not running, and
# touches nothing outside that root.
#
# Usage: systemd/verify.sh [CERTGATE_BINARY]
#   (default: release, else debug certgate under $CARGO_TARGET_DIR or target/)
# `systemd-analyze verify` only warns about unknown keys, bad values and
# missing commands and still exits 0, so any output counts as a failure.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
    target=${CARGO_TARGET_DIR:-$here/../target}
    for candidate in "$target/release/certgate" "$target/debug/certgate"; do
        if [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "verify.sh: no certgate binary (build it, or pass its path)" >&2
    exit 2
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM

# The commands the units run must exist inside the root: verify resolves
# them there. An absolute symlink would point outside it, so link or copy.
place() {
    mkdir -p "$(dirname "$2")"
    ln "$1" "$2" 2>/dev/null || cp "$1" "$2"
}
place "$bin" "$root/usr/bin/certgate"
place /bin/kill "$root/bin/kill"
# The targets the units order against (network-online.target, sockets.target, ...).
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$here/certgate.service" "$here/certgate.socket" "$root/etc/systemd/system/"

status=0
out=$(systemd-analyze verify --root="$root" certgate.service certgate.socket 2>&1) || status=$?
if [ "$status" -ne 0 ] || [ -n "$out" ]; then
    echo "systemd-analyze verify (exit $status):" >&2
    echo "$out" >&2
    exit 1
fi

systemd-sysusers --root="$root" "$here/certgate.sysusers" >/dev/null 2>&1
gid=$(awk -F: '$1 == "certgate" { print $3 }' "$root/etc/group")
if [ -z "$gid" ] || ! grep -q '^certgate:' "$root/etc/passwd"; then
    echo "certgate.sysusers did not create the certgate user and group" >&2
    exit 1
fi
systemd-tmpfiles --root="$root" --create "$here/certgate.tmpfiles"
# The key rule applies to keys that already exist: put one there, run again.
install -m 0600 /dev/null "$root/etc/certgate/server.key"
systemd-tmpfiles --root="$root" --create "$here/certgate.tmpfiles"

expect() {
    got=$(stat -c '%u:%g %a' "$root$1")
    if [ "$got" != "$2" ]; then
        echo "$1: owner and mode $got, expected $2" >&2
        exit 1
    fi
}
expect /etc/certgate "0:$gid 750"
expect /etc/certgate/server.key "0:$gid 640"

echo "systemd units, sysusers and tmpfiles: ok"
