#!/usr/bin/env bash
# corrupt.sh — a corrupt registry is refused cleanly and left untouched.
#
#   bash tests/chaos/corrupt.sh        (run by scripts/chaos)
#
# Environment (set by scripts/chaos; defaults for a run from the repository):
#   CHAOS_BIN   directory with the compiled helpers (regcall, nosysv)
#   CHAOS_LIB   libshmshim.so to preload
#   CHAOS_SHMSHIM  the shmshim binary (for `shmshim check`)
#
# For each corruption a fresh namespace is made: a segment is created under the
# shim (so the server runs and holds the registry mapped), then the registry
# file is
#   truncate   truncated to its 4096-byte header (magic and version intact)
#   truncate0  truncated to 0 bytes
#   garbage    overwritten in its first 64 bytes
#   text       replaced (rename over it) by a small text file
#   version    given another layout version (u32 at offset 8)
# and a fresh program under the shim (in the seccomp sandbox) calls shmget,
# shmctl, shmat and shmdt.  It must not crash; shmget, shmctl and shmat must
# fail with ENOSYS (shmdt of a non-attach: ENOSYS or EINVAL); its stderr must
# name the registry file; and the registry file must be byte-identical
# afterwards (checked right after the program and again 0.5 s later, so that
# the server, which still has the file mapped, is covered too).
# `shmshim check` must fail cleanly (non-zero status, no signal) and not
# modify the file either.  The server of each namespace is killed at the end
# if it is still alive, and the directory removed.
#
# Prints "ok VARIANT" or "FAIL VARIANT: reason" lines; exit status 1 on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CHAOS_BIN:-$ROOT/target/chaos}
LIB=${CHAOS_LIB:-$ROOT/target/release/libshmshim.so}
SHMSHIM=${CHAOS_SHMSHIM:-$ROOT/target/release/shmshim}
KEY=0x4b4f5252

failed=0

# pids of processes whose command line names $1 (the server: --dir DIR)
server_pids() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = "$$" ] && continue
        if { tr '\0' '\n' <"$d/cmdline"; } 2>/dev/null | grep -qxF -- "$1"; then
            echo "$pid"
        fi
    done
}

under_shim() { # DIR CMD...
    local dir=$1
    shift
    timeout -k 2 20 env SHMSHIM_DIR="$dir" LD_PRELOAD="$LIB" "$BIN/nosysv" "$@"
}

sum() { sha256sum <"$1" | cut -d' ' -f1; }

corrupt() { # VARIANT FILE
    case $1 in
    truncate) truncate -s 4096 "$2" ;;
    truncate0) truncate -s 0 "$2" ;;
    garbage) head -c 64 /dev/zero | tr '\0' '\335' | dd of="$2" bs=64 count=1 conv=notrunc status=none ;;
    text)
        printf 'this is not a shmshim registry\n' >"$2.new"
        mv -f "$2.new" "$2"
        ;;
    version) printf '\143\000\000\000' | dd of="$2" bs=1 seek=8 count=4 conv=notrunc status=none ;;
    esac
}

for v in truncate truncate0 garbage text version; do
    base=$(mktemp -d "${TMPDIR:-/tmp}/shmshim-corrupt.XXXXXX")
    dir=$base/ns
    reg=$dir/registry
    why=()

    rc=0
    under_shim "$dir" "$BIN/regcall" create "$KEY" >"$base/create.out" 2>"$base/create.err" || rc=$?
    if [ $rc -ne 0 ] || [ ! -f "$reg" ]; then
        why+=("setup: creating a segment under the shim failed (status $rc): $(head -c 300 "$base/create.err" "$base/create.out" | tr '\n' ' ')")
    else
        # The namespace is idle first: the server has applied the creator's exit
        # (a SYNC round trip), so what follows is the corruption's doing alone.
        env SHMSHIM_DIR="$dir" "$SHMSHIM" check >/dev/null 2>&1 || true
        corrupt "$v" "$reg"
        before=$(sum "$reg")

        rc=0
        under_shim "$dir" "$BIN/regcall" call "$KEY" >"$base/call.out" 2>"$base/call.err" || rc=$?
        after=$(sum "$reg")
        if [ $rc -ne 0 ]; then
            if [ $rc -gt 128 ]; then
                why+=("the program was killed by signal $((rc - 128))")
            else
                why+=("the program exited $rc")
            fi
        fi
        while IFS= read -r line; do
            case $line in
            shmdt*' = -1 ENOSYS' | shmdt*' = -1 EINVAL') ;;
            *' = -1 ENOSYS') ;;
            *) why+=("got \"$line\", expected -1 ENOSYS") ;;
            esac
        done <"$base/call.out"
        if [ "$(wc -l <"$base/call.out")" -ne 7 ]; then
            why+=("the program printed $(wc -l <"$base/call.out") of 7 results")
        fi
        if ! grep -qF -- "$reg" "$base/call.err"; then
            why+=("stderr does not name $reg: \"$(head -c 300 "$base/call.err" | tr '\n' ' ')\"")
        fi
        if [ "$before" != "$after" ]; then
            why+=("the program modified the registry file")
        fi

        rc=0
        timeout -k 2 20 env SHMSHIM_DIR="$dir" "$SHMSHIM" check >"$base/check.out" 2>&1 || rc=$?
        if [ $rc -eq 0 ] || [ $rc -gt 128 ]; then
            why+=("shmshim check exited $rc: $(head -c 200 "$base/check.out" | tr '\n' ' ')")
        fi
        if [ "$(sum "$reg")" != "$after" ]; then
            why+=("shmshim check modified the registry file")
            after=$(sum "$reg")
        fi

        sleep 0.5
        if [ "$(sum "$reg")" != "$after" ]; then
            why+=("the registry file changed after the program ended (the server wrote to it)")
        fi
    fi

    for p in $(server_pids "$dir"); do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$base"

    if [ ${#why[@]} -eq 0 ]; then
        echo "ok $v"
    else
        failed=1
        for w in "${why[@]}"; do echo "FAIL $v: $w"; done
    fi
done
exit $failed
