#!/usr/bin/env bash
# util-linux ipcmk / ipcs / ipcrm:
#  - `ipcmk -M 4096` (id parsed from its output); `ipcs -m` lists the segment with
#    the right id, size, perms 644, owner, nattch 0, and the key it shows finds the
#    same id through shmget(key) (perl); `ipcs -m -i ID` shows uid/cuid, mode,
#    bytes, cpid, nattch 0; `ipcs -m -u` counts 1 segment (SHM_INFO);
#  - while another process (python sysv_ipc) holds an attach: nattch 1, lpid =
#    that process, att_time set; after it detached: nattch 0, det_time set;
#  - `ipcrm -m ID` removes it (ipcs: "id N not found");
#  - `ipcmk -M 8192 -p 0600` + `ipcrm -M KEY` (key read from `ipcs -m`) removes it
#    (shmget(key) then fails with ENOENT).
# Under the shim, ipcs reads /proc/sysvipc/shm, which the shim must intercept.
# e2e-timeout: 60
. "$(dirname "$0")/_lib.sh"
command -v ipcmk >/dev/null || skip "util-linux not installed"
UID_=$(id -u)
OWNER=$(id -un)

# line of `ipcs -m` for shmid $1 (empty if none)
ipcs_line() { shm ipcs -m | awk -v id="$1" '$1 ~ /^0x/ && $2 == id'; }
# field NAME=VALUE of `ipcs -m -i` output in $1
field() { tr '\t' '\n' <<<"$1" | sed -n "s/^$2=//p" | sed 's/ *$//'; }
# shmget(key, 0, 0) by a separate program: the id, or the errno name
id_of_key() { shm perl -e 'use Errno; my $k = hex($ARGV[0]); $k -= 2**32 if $k >= 2**31; my $i = shmget($k, 0, 0); print defined $i ? $i : ($!{ENOENT} ? "ENOENT" : "error: $!")' "$1"; }

# ---- 1: ipcmk -M 4096
out=$(shm ipcmk -M 4096)
echo "ipcmk: $out"
ID=$(sed -n 's/^Shared memory id: \([0-9][0-9]*\)$/\1/p' <<<"$out")
[ -n "$ID" ] || die "cannot parse ipcmk output: $out"

line=$(ipcs_line "$ID")
echo "ipcs -m: $line"
[ -n "$line" ] || die "ipcs -m does not list shmid $ID: $(shm ipcs -m)"
read -r KEY sid owner perms bytes nattch status <<<"$line"
expect "ipcs -m owner/perms/bytes/nattch" "$owner $perms $bytes $nattch" "$OWNER 644 4096 0"
[ "$KEY" != 0x00000000 ] || die "ipcmk made an IPC_PRIVATE segment"
expect "shmget(key $KEY) from another process" "$(id_of_key "$KEY")" "$ID"

info=$(shm ipcs -m -i "$ID" 2>&1)
echo "$info"
expect "ipcs -i header" "$(grep -c "^Shared memory Segment shmid=$ID\$" <<<"$info")" 1
expect "ipcs -i uid gid cuid cgid" "$(field "$info" uid) $(field "$info" gid) $(field "$info" cuid) $(field "$info" cgid)" "$UID_ $(id -g) $UID_ $(id -g)"
expect "ipcs -i mode access_perms" "$(field "$info" mode) $(field "$info" access_perms)" "0644 0644"
expect "ipcs -i bytes nattch lpid" "$(field "$info" bytes) $(field "$info" nattch) $(field "$info" lpid)" "4096 0 0"
cpid=$(field "$info" cpid)
[[ "$cpid" =~ ^[1-9][0-9]*$ ]] || die "cpid '$cpid'"
ok "cpid $cpid"
expect "ipcs -i att_time" "$(field "$info" att_time)" "Not set"

summary=$(shm ipcs -m -u)
expect "ipcs -m -u" "$(grep '^segments allocated' <<<"$summary")" "segments allocated 1"

# ---- 2: nattch / lpid / times with an attached process
if [ -n "${E2E_PY:-}" ] && "$E2E_PY" -c 'import sysv_ipc' 2>/dev/null; then
    rm -f "$W/attached" "$W/release"
    shm "$E2E_PY" -c '
import os, sys, time, sysv_ipc
m = sysv_ipc.attach(int(sys.argv[1]))
open(sys.argv[2] + "/attached", "w").write(str(os.getpid()))
for _ in range(600):
    if os.path.exists(sys.argv[2] + "/release"): break
    time.sleep(0.05)
m.detach()
' "$ID" "$W" &
holder=$!
for _ in $(seq 1 200); do [ -s "$W/attached" ] && break; sleep 0.05; done
[ -s "$W/attached" ] || die "python holder did not attach"
hpid=$(cat "$W/attached")
line=$(ipcs_line "$ID")
echo "ipcs -m (attached): $line"
expect "ipcs -m nattch while attached" "$(awk '{print $6}' <<<"$line")" 1
info=$(shm ipcs -m -i "$ID" 2>&1)
expect "ipcs -i nattch lpid while attached" "$(field "$info" nattch) $(field "$info" lpid)" "1 $hpid"
[ "$(field "$info" att_time)" != "Not set" ] || die "att_time not set after attach"
ok "att_time $(field "$info" att_time)"
touch "$W/release"
wait $holder || die "python holder failed"
info=$(shm ipcs -m -i "$ID" 2>&1)
expect "ipcs -i nattch after detach" "$(field "$info" nattch)" 0
[ "$(field "$info" det_time)" != "Not set" ] || die "det_time not set after detach"
ok "det_time $(field "$info" det_time)"
else
    echo "note: python sysv_ipc missing, nattch checks skipped"
fi

# ---- 3: ipcrm -m ID
shm ipcrm -m "$ID" || die "ipcrm -m $ID failed"
expect "ipcs -i after ipcrm -m" "$(shm ipcs -m -i "$ID" 2>&1 | tr -s '\n' ' ' | sed 's/ *$//')" "ipcs: id $ID not found"
expect "ipcs -m line after ipcrm -m" "$(ipcs_line "$ID")" ""
expect "shmget(key $KEY) after ipcrm -m" "$(id_of_key "$KEY")" ENOENT

# ---- 4: ipcmk -M 8192 -p 0600, ipcrm -M KEY
out=$(shm ipcmk -M 8192 -p 0600)
echo "ipcmk: $out"
ID2=$(sed -n 's/^Shared memory id: \([0-9][0-9]*\)$/\1/p' <<<"$out")
[ -n "$ID2" ] || die "cannot parse ipcmk output: $out"
line=$(ipcs_line "$ID2")
echo "ipcs -m: $line"
[ -n "$line" ] || die "ipcs -m does not list shmid $ID2"
read -r KEY2 sid owner perms bytes nattch status <<<"$line"
expect "ipcs -m owner/perms/bytes/nattch" "$owner $perms $bytes $nattch" "$OWNER 600 8192 0"
expect "shmget(key $KEY2)" "$(id_of_key "$KEY2")" "$ID2"
shm ipcrm -M "$KEY2" || die "ipcrm -M $KEY2 failed"
expect "shmget(key $KEY2) after ipcrm -M" "$(id_of_key "$KEY2")" ENOENT
expect "ipcs -m line after ipcrm -M" "$(ipcs_line "$ID2")" ""
expect "ipcs -m -u at the end" "$(shm ipcs -m -u | grep '^segments allocated')" "segments allocated 0"
expect_no_segments "at the end"
