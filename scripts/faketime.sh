#!/usr/bin/env bash
# Debian's faketime (libfaketime), for the tests that step the wall clock
# under a running daemon (tests/integration/test_faults_process.py).
#
#   scripts/faketime.sh install   install it if missing (idempotent)
#
# `install` never fails: when it cannot install, it prints one line saying
# why, and the tests that need it report themselves as skipped.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

installed() { compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null; }

case "${1:-}" in
install)
    if ! installed; then
        reason=$(apt_install faketime)
        if [[ -n $reason ]] || ! installed; then
            echo "faketime: ${reason:-not installed}; the clock-step tests will be skipped"
            exit 0
        fi
    fi
    echo "faketime: installed"
    ;;
*)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
