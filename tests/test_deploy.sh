#!/bin/sh
# kiln-test: build-independent (checks files and `make run`, not the build under test)
# test_deploy.sh — every file in deploy/ and the Dockerfile checked by
# something runnable here (docker itself is not: no engine on this machine).
#   1. kilnd.service: `systemd-analyze verify` clean (no warning at all), the
#      required hardening present, `systemd-analyze security` exposure <= 2.5;
#   2. kilnd.env: defines every ${VAR} the unit's ExecStart uses, parses as sh;
#   3. nginx-kiln.conf: `nginx -t` with a throwaway self-signed certificate
#      and a temporary prefix; client_max_body_size == KILND_MAX_UPLOAD;
#   4. packages.txt / install-deps.sh / Dockerfile: `make deps` runs the
#      script, the Dockerfile installs only through it (build section in the
#      build stage, runtime section in the runtime stage, no apt-get of its
#      own), every listed package is known to apt, and the runtime section
#      covers every shared library build/kilnd links directly.
# Run from the repository root; KILN_BUILD / KILN_DAEMON as set by tests/run.sh.
set -u
root=$(pwd)
build=${KILN_BUILD:-build}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-deploy-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fails=0
pass=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fails=$((fails + 1)); echo "FAIL $*"; }

unit=deploy/kilnd.service
envf=deploy/kilnd.env
ngx=deploy/nginx-kiln.conf

# ---- 1. systemd unit --------------------------------------------------------
daemon=${KILN_DAEMON:-$build/kilnd}
[ -x "$daemon" ] || daemon=build/kilnd
case "$daemon" in /*) ;; *) daemon="$root/$daemon" ;; esac
if [ ! -x "$daemon" ]; then
    bad "no kilnd binary at $daemon (build it first)"
else
    # verify checks that ExecStart's binary exists: point it at the built one.
    mkdir -p "$tmp/unit"
    sed "s#/usr/local/bin/kilnd#$daemon#" "$unit" >"$tmp/unit/kilnd.service"
    out=$(systemd-analyze verify "$tmp/unit/kilnd.service" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then ok "systemd-analyze verify $unit"
    else bad "systemd-analyze verify $unit (rc $rc): $out"; fi
    sec=$(systemd-analyze security --offline=yes "$tmp/unit/kilnd.service" 2>&1 |
          sed -n 's/.*Overall exposure level for kilnd.service: \([0-9.]*\).*/\1/p')
    if [ -n "$sec" ] && awk -v s="$sec" 'BEGIN { exit !(s <= 2.5) }'; then
        ok "systemd-analyze security: exposure $sec <= 2.5"
    else bad "systemd-analyze security: exposure '${sec:-?}' (want <= 2.5)"; fi
fi
for d in User=kiln Group=kiln StateDirectory=kiln NoNewPrivileges=yes ProtectSystem=strict \
         ProtectHome=yes PrivateTmp=yes PrivateDevices=yes CapabilityBoundingSet= \
         EnvironmentFile=/etc/kiln/kilnd.env; do
    if grep -qx "$d" "$unit"; then ok "$unit has $d"; else bad "$unit lacks $d"; fi
done

# ---- 2. environment file ----------------------------------------------------
if (set -e; . "./$envf") 2>"$tmp/env.err"; then ok "$envf parses as sh"
else bad "$envf does not parse: $(cat "$tmp/env.err")"; fi
for v in $(grep '^ExecStart=' "$unit" | grep -o '\${[A-Z_]*}' | tr -d '${}'); do
    if grep -q "^$v=." "$envf"; then ok "$envf defines $v (used by ExecStart)"
    else bad "$envf does not define $v, which ExecStart uses"; fi
done
for v in KILND_STATE KILN_DATA; do
    if grep -q "^$v=" "$envf"; then ok "$envf sets $v"; else bad "$envf lacks $v"; fi
done
state=$(sed -n 's/^KILND_STATE=//p' "$envf")
[ "$state" = /var/lib/kiln ] && ok "KILND_STATE is StateDirectory=kiln's path" ||
    bad "KILND_STATE=$state is not /var/lib/kiln (StateDirectory=kiln)"

# ---- 3. nginx ---------------------------------------------------------------
if ! command -v nginx >/dev/null 2>&1; then
    bad "nginx is not installed (test section of deploy/packages.txt; run make deps)"
else
    n="$tmp/nginx"
    mkdir -p "$n/logs" "$n/tmp"
    if openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kiln.test \
           -keyout "$n/key.pem" -out "$n/cert.pem" >/dev/null 2>&1; then
        sed -e "s#/etc/ssl/kiln/fullchain.pem#$n/cert.pem#" -e "s#/etc/ssl/kiln/privkey.pem#$n/key.pem#" \
            "$ngx" >"$n/kiln.conf"
        cat >"$n/nginx.conf" <<EOF
pid $n/nginx.pid;
error_log $n/logs/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $n/tmp;
    include $n/kiln.conf;
}
EOF
        if out=$(nginx -t -p "$n" -c "$n/nginx.conf" 2>&1); then ok "nginx -t $ngx"
        else bad "nginx -t $ngx: $out"; fi
        # A broken directive must make the same command fail (the check bites).
        sed 's/proxy_buffering off;/proxy_buffering sideways;/' "$n/kiln.conf" >"$n/kiln.bad" &&
            sed "s#$n/kiln.conf#$n/kiln.bad#" "$n/nginx.conf" >"$n/nginx.bad"
        if nginx -t -p "$n" -c "$n/nginx.bad" >/dev/null 2>&1; then bad "nginx -t accepted a broken config"
        else ok "nginx -t refuses a broken copy"; fi
    else
        bad "openssl could not make a self-signed certificate"
    fi
fi
for d in 'proxy_buffering off;' 'proxy_request_buffering off;' 'listen 443 ssl' 'ssl_certificate ' \
         'proxy_pass http://kilnd;'; do
    if grep -q "$d" "$ngx"; then ok "$ngx has '$d'"; else bad "$ngx lacks '$d'"; fi
done
body=$(sed -n 's/^ *client_max_body_size \([0-9]*[kmg]\?\);.*/\1/p' "$ngx" | head -1)
bytes=$(echo "$body" | awk '/k$/ { print $0 * 1024; next } /m$/ { print $0 * 1048576; next }
                             /g$/ { print $0 * 1073741824; next } { print $0 + 0 }')
cap=$(sed -n 's/^KILND_MAX_UPLOAD=//p' "$envf")
[ -n "$cap" ] && [ "$bytes" = "$cap" ] && ok "client_max_body_size $body == KILND_MAX_UPLOAD $cap" ||
    bad "client_max_body_size '$body' ($bytes bytes) != KILND_MAX_UPLOAD '$cap'"
# kilnd's built-in default cap (server/main.c) is what `make run` uses.
def=$(sed -n 's/.*max_upload = (uint64_t)\([0-9]*\) << 20;.*/\1/p' server/main.c | head -1)
[ -n "$def" ] && [ "$((def * 1048576))" = "$cap" ] && ok "KILND_MAX_UPLOAD equals kilnd's default ${def} MiB" ||
    bad "KILND_MAX_UPLOAD $cap differs from kilnd's default (${def:-?} MiB, server/main.c)"

# ---- 4. one package list ----------------------------------------------------
make -n deps 2>/dev/null | grep -q 'deploy/install-deps.sh' && ok "make deps runs deploy/install-deps.sh" ||
    bad "make deps does not run deploy/install-deps.sh"
for s in build runtime test; do
    c=$(deploy/install-deps.sh --list "$s" | wc -l)
    [ "$c" -gt 0 ] && ok "packages.txt section [$s]: $c packages" || bad "packages.txt section [$s] is empty"
done
deploy/install-deps.sh --list nosuch >/dev/null 2>&1 && bad "install-deps.sh accepted an unknown section" ||
    ok "install-deps.sh refuses an unknown section"
all=$(deploy/install-deps.sh --list)
unknown=""
for p in $all; do
    if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed &&
       ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        # provided by an installed package (nodesource's nodejs provides npm)?
        dpkg-query -W -f='${db:Status-Status} ${Provides}\n' 2>/dev/null | grep '^installed' |
            grep -qw "$p" || unknown="$unknown $p"
    fi
done
[ -z "$unknown" ] && ok "every package in packages.txt is known to apt" || bad "unknown to apt:$unknown"

df=Dockerfile
[ "$(grep -c '^FROM debian:12' $df)" -ge 2 ] && ok "$df: two debian:12 stages" || bad "$df: not multi-stage on debian:12"
if grep -n 'apt-get install\|apt install' $df; then bad "$df installs packages without deploy/packages.txt"
else ok "$df has no apt-get install of its own"; fi
# The build stage installs the build section and runs make deps + make; the
# runtime stage installs exactly the runtime section.
awk '/^FROM /{stage=$NF} /^RUN /{print stage ": " $0}' $df >"$tmp/runs"
grep -q '^build: RUN KILN_DEPS=build deploy/install-deps.sh' "$tmp/runs" &&
grep -q '^build: .*KILN_DEPS=build make deps && make' "$tmp/runs" && ok "$df build stage: install-deps.sh build, make deps, make" ||
    bad "$df build stage does not install with deploy/install-deps.sh build + make deps + make"
grep -q '^runtime: RUN /tmp/deploy/install-deps.sh runtime' "$tmp/runs" && ok "$df runtime stage: install-deps.sh runtime" ||
    bad "$df runtime stage does not install the runtime section"
grep -q '^COPY deploy/packages.txt deploy/install-deps.sh' $df && ok "$df copies deploy/packages.txt" ||
    bad "$df does not copy deploy/packages.txt"
grep -q '^USER kiln' $df && ok "$df runs as a non-root user" || bad "$df lacks USER kiln"
grep -q '^VOLUME /var/lib/kiln' $df && ok "$df: VOLUME /var/lib/kiln" || bad "$df lacks VOLUME /var/lib/kiln"
grep -A1 '^HEALTHCHECK' $df | grep -q '/v1/health' && ok "$df: HEALTHCHECK on /v1/health" || bad "$df lacks a /v1/health HEALTHCHECK"
deploy/install-deps.sh --list runtime | grep -qx curl &&
    ok "curl (healthcheck) is in the runtime section" || bad "the healthcheck's curl is not in the runtime section"

# The runtime section must cover every library kilnd links directly, or the
# slim image would not start. (libc6 is in every debian:12 image.)
rel=build/kilnd
[ -x "$rel" ] || rel=$daemon
runtime=$(deploy/install-deps.sh --list runtime)
missing=""
for lib in $(readelf -d "$rel" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')
    [ -n "$path" ] || { missing="$missing $lib(not-found)"; continue; }
    pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1)
    [ -n "$pkg" ] || pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1)
    case "$pkg" in libc6|libasan*|libubsan*|libgcc-s1) continue ;; esac
    echo "$runtime" | grep -qx "$pkg" || missing="$missing $lib($pkg)"
done
[ -z "$missing" ] && ok "runtime section covers kilnd's libraries ($(readelf -d "$rel" | grep -c NEEDED) NEEDED)" ||
    bad "runtime section lacks:$missing"

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
