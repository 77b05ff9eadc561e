# shellcheck shell=bash
# Sourced by scripts/*.sh: install Debian packages for the test suite.

# apt_install PACKAGE...: install them; print nothing when that worked, else
# one line saying why not (the caller records it, and the tests skip with it).
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "cannot install: no apt-get on this machine (needs: $*)"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "cannot install: not root (run: sudo $0 install)"
        return 0
    fi
    local log
    log=$(mktemp)
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "$@"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "cannot install: apt-get failed ($(tail -n 1 "$log"))"
    fi
    rm -f "$log"
}
