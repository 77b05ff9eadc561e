#!/usr/bin/env bash
# A throwaway Ceph radosgw (real S3) on loopback for the integration tests.
#
#   scripts/radosgw.sh install          install Debian's packages if missing
#   scripts/radosgw.sh check            exit 0 if usable, else print why and exit 1
#   scripts/radosgw.sh start DIR [PORT] a single-node cluster under DIR, S3 on
#                                       127.0.0.1:PORT (default: a free port)
#   scripts/radosgw.sh stop DIR         kill what `start DIR` started, remove DIR
#
# The cluster is one monitor, one memstore OSD and radosgw, with no
# authentication (ms_mon_client_mode = crc is what makes that work: without
# it radosgw insists on secure mode and hangs). The S3 user's keys are
# $RADOSGW_ACCESS_KEY / $RADOSGW_SECRET_KEY (default: testing / testing, the
# fake credentials the suite already exports for moto). `start` prints
# `endpoint_url=http://127.0.0.1:PORT` last. With RADOSGW_OWNER_PID set, a
# watchdog stops the cluster when that process dies, so a killed test run
# leaves nothing behind.
#
# `install` never fails: when it cannot install (not root, no apt-get, apt
# failing) it prints one line saying why, records it for `check`, and exits
# 0, so that the tests report themselves as skipped with that reason.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

PACKAGES=(radosgw ceph-mon ceph-osd ceph-common)
COMMANDS=(radosgw radosgw-admin ceph-mon ceph-osd ceph ceph-authtool monmaptool)
# Where `install` records why it could not install, for `check` to report.
MARKER="${TMPDIR:-/tmp}/archiverd-radosgw-unavailable"
ACCESS_KEY="${RADOSGW_ACCESS_KEY:-testing}"
SECRET_KEY="${RADOSGW_SECRET_KEY:-testing}"
START_TIMEOUT="${RADOSGW_START_TIMEOUT:-90}"

say() { echo "radosgw: $*"; }
die() { echo "radosgw: $*" >&2; exit 1; }

missing_commands() {
    local cmd missing=()
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    echo "${missing[*]}"
}

cmd_install() {
    local missing reason=""
    missing=$(missing_commands)
    if [[ -z $missing ]]; then
        rm -f "$MARKER"
        say "installed ($(radosgw --version 2>/dev/null | awk '{print $3}'))"
        return 0
    fi
    say "installing ${PACKAGES[*]} (about 60 MiB)"
    reason=$(apt_install "${PACKAGES[@]}")
    if [[ -z $reason && -n $(missing_commands) ]]; then
        reason="cannot install: still missing after apt-get: $(missing_commands)"
    fi
    if [[ -n $reason ]]; then
        echo "$reason" >"$MARKER"
        say "$reason; the tests against it will be skipped"
        return 0
    fi
    rm -f "$MARKER"
    say "installed ($(radosgw --version 2>/dev/null | awk '{print $3}'))"
}

cmd_check() {
    local missing
    missing=$(missing_commands)
    [[ -z $missing ]] && { say "ok"; return 0; }
    if [[ -s $MARKER ]]; then
        say "$(cat "$MARKER")"
    else
        say "not installed (missing $missing; run scripts/radosgw.sh install)"
    fi
    return 1
}

free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 30000))
        # Nothing answers a connect: free (racy, as every such check is).
        if ! listening "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# True when the S3 frontend answers HTTP on $1.
s3_answers() {
    local reply
    # shellcheck disable=SC2016 # $1 is the inner shell's
    reply=$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        head -c 12 <&3' _ "$1" 2>/dev/null) || return 1
    [[ $reply == HTTP/1.* ]]
}

# Start "$name" "$@" in the background, detached, with its pid in run/.
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/pids/$name.pid"
}

# True when something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Poll "$@" until it succeeds; fail early if a daemon started so far exits.
wait_until() {
    local what=$1 deadline=$((SECONDS + START_TIMEOUT)) f
    shift
    until "$@"; do
        for f in "$DIR"/pids/{mon,osd,rgw}.pid; do
            [[ -f $f ]] || continue
            kill -0 "$(cat "$f")" 2>/dev/null ||
                fail "$(basename "$f" .pid) exited while waiting for $what"
        done
        ((SECONDS < deadline)) || fail "timed out waiting for $what"
        sleep 0.1
    done
}

# Run a short ceph command (stdin: ours), bounded in time.
ceph_run() {
    timeout 60 "$@" >>"$DIR/log/setup.out" 2>&1 ||
        fail "'$*' failed or timed out"
}

fail() {
    echo "radosgw: start failed: $*" >&2
    local f
    for f in "$DIR"/log/*; do
        [[ -s $f ]] || continue
        echo "--- ${f##*/} (last lines)" >&2
        tail -n 15 "$f" >&2
    done
    cmd_stop "$DIR" >/dev/null 2>&1 || true
    exit 1
}

cmd_start() {
    DIR=${1:?usage: $0 start DIR [PORT]}
    local port=${2:-}
    cmd_check >/dev/null || die "$(cmd_check || true)"
    [[ -e $DIR && -n $(ls -A "$DIR" 2>/dev/null) ]] && die "$DIR is not empty"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    mkdir -p "$DIR"/{run,log,pids,mon,osd,rgw}
    [[ -n $port ]] || port=$(free_port)
    local mon_port fsid osd_uuid started=$SECONDS
    mon_port=${RADOSGW_MON_PORT:-$(free_port)}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    export CEPH_CONF="$DIR/ceph.conf"
    # No mgr: nothing here needs one (pool creation is the monitor's job).
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_mon_client_mode = crc
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_data_avail_crit = 1
# Each monitor change (a pool, a user) waits for the next proposal, 1 s by
# default: 0.05 s takes a start from 12 s to 2 s.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
osd_objectstore = memstore
memstore_device_bytes = ${RADOSGW_MEMSTORE_BYTES:-1073741824}
run_dir = $DIR/run
log_file = $DIR/log/\$name.log
admin_socket = $DIR/run/\$name.asok
pid_file = $DIR/run/\$name.pid
keyring = $DIR/keyring
mon_data = $DIR/mon/\$name
osd_data = $DIR/osd/\$name
rgw_data = $DIR/rgw/\$name
rgw_frontends = beast endpoint=127.0.0.1:$port
rgw_enable_usage_log = false
rgw_init_timeout = 60
EOF
    echo "$port" >"$DIR/port"
    ceph_run ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. \
        --cap mon 'allow *'
    ceph_run monmaptool --create --fsid "$fsid" \
        --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap"
    ceph_run ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
    spawn mon ceph-mon -f -i a -c "$CEPH_CONF"
    if [[ -n ${RADOSGW_OWNER_PID:-} ]]; then
        # Stops the cluster when the owner dies; `stop` spares its own pid.
        # shellcheck disable=SC2016 # $1.. are the inner shell's
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
            exec "$2" stop "$3"' _ "$RADOSGW_OWNER_PID" "$(realpath "$0")" \
            "$DIR" </dev/null >>"$DIR/log/watchdog.out" 2>&1 &
        echo $! >"$DIR/pids/watchdog.pid"
    fi
    wait_until "the monitor on port $mon_port" listening "$mon_port"
    local osd_id
    osd_id=$(timeout 60 ceph --connect-timeout 30 osd new "$osd_uuid" 2>>"$DIR/log/setup.out") ||
        fail "the monitor did not answer 'ceph osd new'"
    mkdir -p "$DIR/osd/osd.$osd_id" "$DIR/rgw/client.rgw.a"
    ceph_run ceph-osd -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" -c "$CEPH_CONF"
    spawn osd ceph-osd -f -i "$osd_id" -c "$CEPH_CONF"
    # radosgw would create its pools one by one as it first needs them (the
    # first bucket and the first multipart upload would wait seconds each):
    # create them all now, in one client session.
    local pool pools=(.rgw.root default.rgw.log default.rgw.control
        default.rgw.meta default.rgw.buckets.index default.rgw.buckets.data
        default.rgw.buckets.non-ec)
    for pool in "${pools[@]}"; do
        echo "osd pool create $pool"
        echo "osd pool application enable $pool rgw"
    done >"$DIR/pools.txt"
    ceph_run ceph --connect-timeout 30 <"$DIR/pools.txt"
    # Blocks until the OSD is up and the rgw pools are writable.
    ceph_run radosgw-admin user create --uid=test --display-name=test \
        --access-key="$ACCESS_KEY" --secret="$SECRET_KEY"
    spawn rgw radosgw -f -n client.rgw.a -c "$CEPH_CONF"
    wait_until "S3 on port $port" s3_answers "$port"
    say "up in $((SECONDS - started)) s under $DIR"
    echo "endpoint_url=http://127.0.0.1:$port"
}

cmd_stop() {
    local dir=${1:?usage: $0 stop DIR}
    [[ -d $dir ]] || return 0
    dir=$(cd "$dir" && pwd)
    local f pid pids=()
    for f in "$dir"/pids/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        [[ $pid =~ ^[0-9]+$ && $pid -ne $$ ]] || continue
        # Only processes started for this DIR (guards against pid reuse).
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir" || continue
        pids+=("$pid")
    done
    # The data is thrown away, so no clean shutdown is needed (a memstore
    # OSD's would write all its objects to disk first).
    ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for pid in "${pids[@]}"; do
            [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] &&
                alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    rm -rf "$dir"
    say "stopped; removed $dir"
}

case ${1:-} in
install) cmd_install ;;
check) cmd_check ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
*) die "usage: $0 install | check | start DIR [PORT] | stop DIR" ;;
esac
