# tests/e2e/_lib.sh — helpers sourced by every tests/e2e/*.sh test.
#
# A test is run by scripts/e2e twice, in a fresh IPC namespace each time:
#   E2E_MODE=native  no shim: the kernel serves System V shared memory
#   E2E_MODE=shim    the whole test runs inside the seccomp sandbox (target/nosysv:
#                    the kernel's shm* syscalls fail with ENOSYS) and every program
#                    started with `shm`/`shm_as` gets the shim (LD_PRELOAD), with
#                    SHMSHIM_DIR=$E2E_W/ns as its namespace
# Environment from scripts/e2e: E2E_MODE E2E_ROOT E2E_W (private work dir, 0755,
# removed afterwards) E2E_LIB (libshmshim.so) E2E_NOSYSV E2E_SHMSHIM (the shmshim
# binary) E2E_CACHE (downloads) E2E_PY (python interpreter); in shim mode also
# SHMSHIM_DIR, SHMSHIM_SHARED=1 and SHMSHIM_LIB (LD_PRELOAD is never set globally).
# A test prints what it checks, exits 0 iff everything held, 77 to be skipped.
# It must remove every segment it created and stop every process it started.

set -euo pipefail
trap 'echo "CHECK FAILED: exit status $? of \`$BASH_COMMAND\` (${BASH_SOURCE[0]##*/} line $LINENO)"' ERR
: "${E2E_MODE:?run the tests through scripts/e2e}"
W=$E2E_W
cd "$W"

log() { printf '%s %s\n' "$(date +%T.%N | cut -c1-12)" "$*"; }
die() { printf 'CHECK FAILED: %s\n' "$*"; exit 1; }
skip() { printf 'SKIP: %s\n' "$*"; exit 77; }
ok() { printf 'ok: %s\n' "$*"; }
# expect DESC ACTUAL EXPECTED
expect() {
    [ "$2" = "$3" ] || die "$1: expected '$3', got '$2'"
    ok "$1 = $2"
}
is_shim() { [ "$E2E_MODE" = shim ]; }

# shm PROG ARGS... : run an unmodified program that uses SysV shared memory.
shm() {
    if is_shim; then
        env LD_PRELOAD="$E2E_LIB" "$E2E_NOSYSV" "$@"
    else
        "$@"
    fi
}

# shm_as USER PROG ARGS... : the same as another user; the user switch happens
# outside, the shim is loaded inside (its environment is passed explicitly).
shm_as() {
    local user=$1
    shift
    if is_shim; then
        local v vars=()
        for v in $(compgen -e); do
            case "$v" in SHMSHIM_*) vars+=("$v=${!v}") ;; esac
        done
        runuser -u "$user" -- env "${vars[@]}" LD_PRELOAD="$E2E_LIB" "$E2E_NOSYSV" "$@"
    else
        runuser -u "$user" -- "$@"
    fi
}

# segments: the namespace's segments, one line each, `ipcs -m` columns
#   key shmid owner perms bytes nattch [status]
# natively from `ipcs -m` (this IPC namespace), under the shim from `shmshim ls`.
segments() {
    if is_shim; then
        "$E2E_SHMSHIM" ls
    else
        ipcs -m
    fi | awk '$1 ~ /^0x[0-9a-fA-F]+$/ && NF >= 6'
}

# expect_no_segments WHEN
expect_no_segments() {
    local s
    s=$(segments)
    [ -z "$s" ] || die "segments left $1:"$'\n'"$s"
    ok "no segments $1"
}

# wait_gone PID... : wait (up to 20 s) until none of the processes exists
wait_gone() {
    local i p alive
    for i in $(seq 1 200); do
        alive=
        for p in "$@"; do
            if kill -0 "$p" 2>/dev/null; then alive=1; fi
        done
        [ -z "$alive" ] && return 0
        sleep 0.1
    done
    return 1
}

# shm_exec PROG ARGS... : like shm, but replaces the calling (sub)shell, so that
#   (shm_exec PROG ...) &   leaves the program's own pid in $!
shm_exec() {
    if is_shim; then
        exec env LD_PRELOAD="$E2E_LIB" "$E2E_NOSYSV" "$@"
    else
        exec "$@"
    fi
}
