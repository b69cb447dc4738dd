#!/usr/bin/env bash
# X11 MIT-SHM: Xvfb (unmodified, also under the shim, same namespace) and the
# client tests/e2e/xshm_check.c (built here with -lX11 -lXext): the server attaches
# the client's IPC_PRIVATE segments by id, an image goes through the server and
# back (XShmPutImage / XShmGetImage) and must match the pattern; the server's
# drawing into a shared pixmap must appear in the client's memory; IPC_RMID right
# after XShmAttach; see xshm_check.c. Then Xvfb is stopped; no segment may remain.
# e2e-timeout: 60
. "$(dirname "$0")/_lib.sh"
command -v Xvfb >/dev/null || skip "Xvfb not installed"
[ -e /usr/include/X11/extensions/XShm.h ] || skip "libxext-dev not installed"

gcc -O1 -Wall -Werror -o "$W/xshm_check" "$E2E_ROOT/tests/e2e/xshm_check.c" -lXext -lX11 ||
    die "cannot build xshm_check"

xvfb=
stop_xvfb() {
    if [ -n "$xvfb" ] && kill -0 "$xvfb" 2>/dev/null; then
        kill -TERM "$xvfb" 2>/dev/null || true
        wait_gone "$xvfb" || kill -KILL "$xvfb" 2>/dev/null || true
        wait "$xvfb" 2>/dev/null || true
    fi
    xvfb=
}
trap stop_xvfb EXIT

# Xvfb picks a free display and writes its number to fd 3
# (under the shim it is started with `shmshim run --`, the command users would type)
xargs_=(Xvfb -displayfd 3 -nolisten tcp -screen 0 320x240x24)
if is_shim; then
    (exec "$E2E_SHMSHIM" run -- "${xargs_[@]}" 3>"$W/display" >"$W/xvfb.log" 2>&1) &
else
    (exec "${xargs_[@]}" 3>"$W/display" >"$W/xvfb.log" 2>&1) &
fi
xvfb=$!
for _ in $(seq 1 100); do
    [ -s "$W/display" ] && break
    kill -0 "$xvfb" 2>/dev/null || break
    sleep 0.1
done
disp=$(head -n1 "$W/display" 2>/dev/null | tr -dc 0-9 || true)
[ -n "$disp" ] || { cat "$W/xvfb.log"; die "Xvfb did not start"; }
log "Xvfb pid $xvfb on :$disp"

rc=0
shm "$W/xshm_check" ":$disp" || rc=$?
[ $rc = 0 ] || { echo "--- Xvfb log:"; cat "$W/xvfb.log"; die "xshm_check exited $rc"; }

stop_xvfb
if [ -s "$W/xvfb.log" ]; then echo "--- Xvfb log:"; cat "$W/xvfb.log"; fi
expect_no_segments "after Xvfb exited"
