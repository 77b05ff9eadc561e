#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver, for the browser tests of the
# page for people (tests/integration/test_browser_page.py).
#
#   scripts/chromium.sh install   install them if missing (idempotent)
#
# `install` never fails: when it cannot install, it prints one line saying
# why, and the browser tests report themselves as skipped (or fail, under
# ARCHIVERD_REQUIRE_BROWSER=1, as in .ci/run).
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

installed() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }

case "${1:-}" in
install)
    if ! installed; then
        reason=$(apt_install chromium chromium-driver fonts-dejavu-core)
        if [[ -n $reason ]] || ! installed; then
            echo "chromium: ${reason:-not installed}; the browser tests will be skipped"
            exit 0
        fi
    fi
    echo "chromium: installed"
    ;;
*)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
