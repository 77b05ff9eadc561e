#!/usr/bin/env bash
# Debian's redis-server, for the integration tests (tests/integration/
# redis_fixture.py starts its own server on a free loopback port; this script
# only installs it).
#
#   scripts/redis.sh install   install redis-server if missing (idempotent)
#   scripts/redis.sh check     exit 0 if usable, else print why and exit 1
#
# `install` never fails: when it cannot install (not root, no apt-get, apt
# failing) it prints one line saying why, records it for `check`, and exits
# 0, so that the tests report themselves as skipped with that reason (or fail,
# under ARCHIVERD_REQUIRE_REDIS=1).
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

PACKAGES=(redis-server)
# Where `install` records why it could not install, for `check` to report.
MARKER="${TMPDIR:-/tmp}/archiverd-redis-unavailable"

say() { echo "redis: $*"; }
die() { echo "redis: $*" >&2; exit 1; }

installed() { command -v redis-server >/dev/null 2>&1; }

version() { redis-server --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p'; }

cmd_install() {
    local reason=""
    if installed; then
        rm -f "$MARKER"
        say "installed ($(version))"
        return 0
    fi
    reason=$(apt_install "${PACKAGES[@]}")
    if [[ -z $reason ]] && ! installed; then
        reason="cannot install: no redis-server after apt-get"
    fi
    if [[ -n $reason ]]; then
        echo "$reason" >"$MARKER"
        say "$reason; the tests against it will be skipped"
        return 0
    fi
    # The package starts a system-wide server on port 6379; the tests start
    # their own and need none (and no process left listening on a container).
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
    rm -f "$MARKER"
    say "installed ($(version))"
}

cmd_check() {
    if installed; then
        say "ok ($(version))"
        return 0
    fi
    if [[ -s $MARKER ]]; then
        say "$(cat "$MARKER")"
    else
        say "not installed (run scripts/redis.sh install)"
    fi
    return 1
}

case ${1:-} in
install) cmd_install ;;
check) cmd_check ;;
*) die "usage: $0 install | check" ;;
esac
