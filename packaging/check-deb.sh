#!/bin/sh
# Installs the Debian package that packaging/build-deb.sh built, checks it
# the way an operator uses it, and removes it again:
#   - dpkg -i creates the certgate user and /etc/certgate (root:certgate 0750)
#     and installs the example config as a conffile;
#   - the installed example passes `certgate check`, run as the service
#     user, once the certificates it names are next to it;
#   - `man certgate` renders and the bash completion loads;
#   - the certbot deploy hook of docs/certificates.md, run as certbot runs
#     it, installs a renewed pair that `check` accepts and refuses a pair
#     whose key does not match;
#   - `systemd-analyze verify` passes on the installed units;
#   - dpkg -r removes the program and keeps the example; dpkg --purge
#     removes the example and /etc/certgate with it.
# Needs root, on a machine where certgate is not installed and
# /etc/certgate does not exist (it refuses to touch either).
#
# Usage: packaging/check-deb.sh [DEB] [CERTGATE_WITH_DEV_TOOLS]
#   DEB defaults to the newest target/debian/certgate_*.deb; the second
#   binary (default: the debug build the tests use) writes the certificates
#   with `dev-pki`, which the packaged production build leaves out.
set -eu
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
deb=${1:-$(ls -t "$target"/debian/certgate_*.deb 2>/dev/null | head -n 1)}
devtools=${2:-$target/debug/certgate}
fail() { echo "check-deb.sh: $*" >&2; exit 1; }
[ -f "$deb" ] || fail "no package (run packaging/build-deb.sh first)"
[ -x "$devtools" ] || fail "no certgate with dev-pki at $devtools (cargo build)"
if dpkg-query -W -f='${Status}' certgate 2>/dev/null | grep -q ' installed'; then
    fail "certgate is installed on this machine already; not touching it"
fi
[ ! -e /etc/certgate ] || fail "/etc/certgate exists; not touching it"
had_user=no
if getent passwd certgate >/dev/null; then had_user=yes; fi

pki=$(mktemp -d)
placed="server.pem server.key clients-ca.pem clients.crl.pem certgate.toml server-bundle.pem .server-bundle.pem.new"
cleanup() {
    dpkg --purge certgate >/dev/null 2>&1 || true
    for f in $placed; do rm -f "/etc/certgate/$f"; done
    rmdir /etc/certgate 2>/dev/null || true
    if [ "$had_user" = no ]; then
        userdel certgate 2>/dev/null || true
        groupdel certgate 2>/dev/null || true
    fi
    rm -rf "$pki"
}
trap cleanup EXIT INT TERM

echo "--- dpkg -i $deb"
# Minimal images exclude man pages from every package (path-exclude in
# /etc/dpkg/dpkg.cfg.d); this check needs certgate's.
dpkg --path-include='/usr/share/man/*' -i "$deb"
getent passwd certgate >/dev/null || fail "dpkg -i did not create the certgate user"
[ "$(stat -c '%U:%G %a' /etc/certgate)" = "root:certgate 750" ] \
    || fail "/etc/certgate is $(stat -c '%U:%G %a' /etc/certgate), expected root:certgate 750"
dpkg-query -W -f='${Conffiles}\n' certgate | grep -q ' /etc/certgate/certgate.toml.example ' \
    || fail "the example config is not a conffile"

echo "--- certgate check on the installed example, as the certgate user"
"$devtools" dev-pki --out "$pki" >/dev/null
install -m 0640 -o root -g certgate "$pki/server.pem" /etc/certgate/server.pem
install -m 0640 -o root -g certgate "$pki/server.key" /etc/certgate/server.key
install -m 0640 -o root -g certgate "$pki/ca.pem" /etc/certgate/clients-ca.pem
install -m 0640 -o root -g certgate "$pki/crl.pem" /etc/certgate/clients.crl.pem
runuser -u certgate -- /usr/bin/certgate check -c /etc/certgate/certgate.toml.example \
    || fail "certgate check refuses the installed example"
if runuser -u nobody -- cat /etc/certgate/server.key >/dev/null 2>&1; then
    fail "other users can read /etc/certgate/server.key"
fi
# The production build has no development tools.
if /usr/bin/certgate dev-pki --out "$pki/x" >/dev/null 2>&1; then
    fail "the packaged binary has dev-pki"
fi

echo "--- the certbot deploy hook from docs/certificates.md"
# The first sh block that is a script using RENEWED_LINEAGE, verbatim.
awk '/^```sh$/ { block = 1; text = ""; next }
     /^```$/ { if (block && text ~ /^#!\/bin\/sh/ && text ~ /RENEWED_LINEAGE/) { printf "%s", text; exit }
               block = 0; next }
     block { text = text $0 "\n" }' docs/certificates.md > "$pki/hook"
grep -q RENEWED_LINEAGE "$pki/hook" || fail "no deploy hook found in docs/certificates.md"
chmod 0755 "$pki/hook"
sed -e 's/^cert = "server.pem".*/cert = "server-bundle.pem"/' \
    -e 's/^key = "server.key".*/key = "server-bundle.pem"/' \
    /etc/certgate/certgate.toml.example > "$pki/certgate.toml"
install -m 0640 -o root -g certgate "$pki/certgate.toml" /etc/certgate/certgate.toml
"$devtools" dev-pki --out "$pki/renewed" >/dev/null
mkdir "$pki/live"
cp "$pki/renewed/server.pem" "$pki/live/fullchain.pem"
cp "$pki/renewed/server.key" "$pki/live/privkey.pem"
RENEWED_LINEAGE="$pki/live" RENEWED_DOMAINS="other.example" "$pki/hook" \
    || fail "the hook fails for another certificate's renewal"
[ ! -e /etc/certgate/server-bundle.pem ] || fail "the hook installed another certificate's renewal"
RENEWED_LINEAGE="$pki/live" RENEWED_DOMAINS="www.example.org gw.example.org" "$pki/hook" \
    || fail "the deploy hook refuses a good renewal"
[ "$(stat -c '%U:%G %a' /etc/certgate/server-bundle.pem)" = "root:certgate 640" ] \
    || fail "the hook wrote server-bundle.pem as $(stat -c '%U:%G %a' /etc/certgate/server-bundle.pem)"
cat "$pki/live/fullchain.pem" "$pki/live/privkey.pem" | cmp -s - /etc/certgate/server-bundle.pem \
    || fail "server-bundle.pem is not fullchain.pem then privkey.pem"
runuser -u certgate -- /usr/bin/certgate check -c /etc/certgate/certgate.toml >/dev/null \
    || fail "certgate check refuses the config the hook serves"
cp /etc/certgate/server-bundle.pem "$pki/bundle.before"
cp "$pki/server.key" "$pki/live/privkey.pem"   # another certificate's key
if RENEWED_LINEAGE="$pki/live" RENEWED_DOMAINS="gw.example.org" "$pki/hook" 2>/dev/null; then
    fail "the deploy hook installed a key that does not match its certificate"
fi
cmp -s "$pki/bundle.before" /etc/certgate/server-bundle.pem \
    || fail "a refused renewal changed server-bundle.pem"

echo "--- man certgate, completions"
page=$(MANPAGER=cat MANWIDTH=80 man certgate 2>&1) || fail "man certgate: $page"
for want in "certgate-check(1)" "EXIT STATUS" "CERTGATE_CONFIG"; do
    echo "$page" | grep -qF "$want" || fail "man certgate lacks '$want'"
done
MANPAGER=cat man certgate-check >/dev/null 2>&1 || fail "man certgate-check"
bash -c '. /usr/share/bash-completion/completions/certgate && complete -p certgate' >/dev/null \
    || fail "the bash completion does not load"
for f in /usr/share/zsh/vendor-completions/_certgate /usr/share/fish/vendor_completions.d/certgate.fish; do
    [ -s "$f" ] || fail "$f missing"
done

echo "--- systemd-analyze verify on the installed units"
out=$(systemd-analyze verify /usr/lib/systemd/system/certgate.service /usr/lib/systemd/system/certgate.socket 2>&1) \
    || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"

echo "--- dpkg -r, dpkg --purge"
dpkg -r certgate
[ ! -e /usr/bin/certgate ] || fail "dpkg -r left /usr/bin/certgate"
[ ! -e /usr/lib/systemd/system/certgate.service ] || fail "dpkg -r left the unit"
[ -f /etc/certgate/certgate.toml.example ] || fail "dpkg -r removed the conffile"
# What an operator would have added goes first, so that the purge can be
# seen to leave nothing behind.
for f in $placed; do rm -f "/etc/certgate/$f"; done
dpkg --purge certgate
[ ! -e /etc/certgate ] || fail "dpkg --purge left /etc/certgate: $(ls -A /etc/certgate)"

echo "Debian package: installs, checks, documents, verifies and removes cleanly"
