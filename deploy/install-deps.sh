#!/bin/sh
# install-deps.sh — install kiln's Debian packages from deploy/packages.txt.
#
#   deploy/install-deps.sh [SECTION...]     install (as root); default: all
#   deploy/install-deps.sh --list SECTION.. print the packages, one a line
#
# SECTION is build, runtime or test (see packages.txt); with none, the
# KILN_DEPS environment variable (e.g. KILN_DEPS=build make deps) or else all
# three. Idempotent: a package already installed — or provided by an installed
# package (nodesource's nodejs provides npm) — is skipped, and apt-get runs only
# when something is missing. Used by `make deps` and by the Dockerfile.
set -eu
here=$(dirname "$0")
list=$here/packages.txt

# Packages of the given sections, in file order.
packages() {
    awk -v want=" $* " '
        /^# \[[a-z]+\]$/ { sec = substr($2, 2, length($2) - 2); known[sec] = 1; next }
        /^#/ || /^[ \t]*$/ { next }
        { if (sec == "") { print "packages.txt: " $1 " is outside any section" > "/dev/stderr"; exit 2 }
          if (index(want, " " sec " ")) print $1 }
        END { n = split(want, w, " "); for (i = 1; i <= n; i++) if (!(w[i] in known)) {
                  print "packages.txt: no section [" w[i] "]" > "/dev/stderr"; exit 2 } }
    ' "$list"
}

if [ "${1:-}" = "--list" ]; then
    shift
    [ $# -gt 0 ] || set -- build runtime test
    packages "$@"
    exit
fi
[ $# -gt 0 ] || set -- ${KILN_DEPS:-build runtime test}
pkgs=$(packages "$@")

# "installed pkg, provided, ..." for every installed package, to test Provides.
provided=$(dpkg-query -W -f='${db:Status-Status} ${Package}, ${Provides},\n' 2>/dev/null |
           awk '$1 == "installed" { $1 = ""; print }' | tr -d ' ' | sed 's/([^)]*)//g')
missing=""
for p in $pkgs; do
    if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then continue; fi
    if printf '%s\n' "$provided" | tr ',' '\n' | grep -qx "$p"; then continue; fi
    missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "deps ($*): all installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing:$missing — run as root (or with sudo)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing
echo "deps ($*): installed$missing"
