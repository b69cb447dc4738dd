#!/usr/bin/env bash
# Python sysv_ipc (from PyPI, a C extension calling shmget/shmat/shmdt/shmctl):
#  1. the unit tests its sdist ships (tests/test_memory.py and tests/test_module.py;
#     the sdist is downloaded by scripts/e2e into target/e2e/cache) must all pass;
#  2. a producer and a consumer in separate processes exchange data through a
#     segment found by key, while both are attached: producer writes 4000 seeded
#     random bytes and a flag, the consumer (started first, waiting for the key)
#     checks the attributes it sees (key, size 10000, mode 0600, cuid, creator pid,
#     number_attached 2), answers with the sha256 of the data; the producer checks
#     the answer, number_attached, last_pid (= consumer after its detach), then
#     removes the segment;
#  3. the extension loaded with RTLD_DEEPBIND (sys.setdlopenflags), as
#     interpreters may load their extensions: a segment it creates by key is found,
#     read and removed by an ordinary process, in the same namespace.
# e2e-timeout: 120
. "$(dirname "$0")/_lib.sh"
PY=${E2E_PY:-}
[ -n "$PY" ] && "$PY" -c 'import sysv_ipc' 2>/dev/null || skip "python3 module sysv_ipc not installed"
"$PY" -c 'import sysv_ipc; print("sysv_ipc", sysv_ipc.VERSION, "at", sysv_ipc.__file__)'

# ---- 1: the sdist's own tests
sdist=$(ls "$E2E_CACHE"/sysv_ipc-*.tar.gz 2>/dev/null | tail -n1 || true)
if [ -n "$sdist" ] && tar -tzf "$sdist" | grep -c '/tests/test_memory.py$' >/dev/null; then
    mkdir -p "$W/sdist"
    tar -xzf "$sdist" -C "$W/sdist" --strip-components=1 --wildcards '*/tests/*'
    log "running the sdist's tests ($(basename "$sdist"))"
    rc=0
    (cd "$W/sdist" && shm "$PY" -m unittest tests.test_memory tests.test_module) >"$W/unittest.out" 2>&1 || rc=$?
    grep -E '^(Ran|OK|FAILED)|^(ERROR|FAIL):' "$W/unittest.out" || true
    if [ $rc -ne 0 ]; then
        grep -B2 -A12 -E '^(ERROR|FAIL):' "$W/unittest.out" | head -n 60
        die "sysv_ipc's own tests failed"
    fi
    grep -q '^OK' "$W/unittest.out" || die "unittest did not say OK"
    ok "sysv_ipc's own tests: $(grep '^Ran' "$W/unittest.out")"
else
    echo "note: sysv_ipc sdist with tests not found in $E2E_CACHE; own tests not run"
fi
expect_no_segments "after the sdist tests"

# ---- 2: producer / consumer by key
KEY=$((0x5e2e0002))
cat >"$W/pc.py" <<'PY'
import hashlib, os, random, sys, time
import sysv_ipc
role, key = sys.argv[1], int(sys.argv[2])
SIZE = 10000
DATA_OFF, DATA_LEN, ANSWER_OFF = 64, 4000, 8192
data = random.Random(1234).randbytes(DATA_LEN)

def wait_for(cond, what, secs=20):
    end = time.time() + secs
    while not cond():
        if time.time() > end:
            sys.exit(f"{role}: timed out waiting for {what}")
        time.sleep(0.01)

if role == "consumer":
    mem = None
    def found():
        global mem
        try:
            mem = sysv_ipc.SharedMemory(key)
            return True
        except sysv_ipc.ExistentialError:
            return False
    wait_for(found, "the key")
    wait_for(lambda: mem.read(4, 0) == b"RDY\0", "the data")
    print(f"consumer: key={mem.key:#x} size={mem.size} mode={mem.mode & 0o777:o} "
          f"cuid_ok={mem.cuid == os.geteuid()} creator_is_other={mem.creator_pid != os.getpid()} "
          f"nattch={mem.number_attached}")
    got = mem.read(DATA_LEN, DATA_OFF)
    assert got == data, "consumer read different data"
    mem.write(hashlib.sha256(got).hexdigest().encode(), ANSWER_OFF)
    mem.write(str(os.getpid()).encode() + b"\0", 32)
    mem.write(b"ACK\0", 8)
    wait_for(lambda: mem.read(4, 16) == b"FIN\0", "FIN")
    mem.detach()
    print("consumer: done")
else:
    mem = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=SIZE)
    # sysv_ipc fills a new segment with init_character (default b" ")
    assert mem.read(SIZE) == b" " * SIZE, "new segment is not filled with init_character"
    mem.write(data, DATA_OFF)
    mem.write(b"RDY\0", 0)
    wait_for(lambda: mem.read(4, 8) == b"ACK\0", "ACK")
    nattch_both = mem.number_attached
    answer = mem.read(64, ANSWER_OFF).decode()
    cpid = int(mem.read(16, 32).split(b"\0")[0])
    print(f"producer: answer_ok={answer == hashlib.sha256(data).hexdigest()} nattch_both={nattch_both}")
    mem.write(b"FIN\0", 16)
    wait_for(lambda: mem.number_attached == 1, "the consumer's detach")
    print(f"producer: key={mem.key:#x} size={mem.size} mode={mem.mode & 0o777:o} "
          f"creator_is_me={mem.creator_pid == os.getpid()} last_is_consumer={mem.last_pid == cpid} "
          f"nattch={mem.number_attached} dtime_set={mem.last_detach_time > 0}")
    mem.detach()
    mem.remove()
    try:
        sysv_ipc.SharedMemory(key)
        print("producer: key still exists after remove")
    except sysv_ipc.ExistentialError:
        print("producer: removed")
PY
shm "$PY" "$W/pc.py" consumer $KEY >"$W/consumer.out" 2>&1 &
cons=$!
sleep 0.3 # let the consumer start waiting for the key first
rc=0
shm "$PY" "$W/pc.py" producer $KEY >"$W/producer.out" 2>&1 || rc=$?
crc=0
wait $cons || crc=$?
cat "$W/producer.out" "$W/consumer.out"
[ $rc = 0 ] || die "producer exited $rc"
[ $crc = 0 ] || die "consumer exited $crc"
expect "consumer's view" "$(grep '^consumer: key' "$W/consumer.out")" \
    "consumer: key=$(printf '%#x' $KEY) size=10000 mode=600 cuid_ok=True creator_is_other=True nattch=2"
expect "producer's answer check" "$(grep '^producer: answer' "$W/producer.out")" "producer: answer_ok=True nattch_both=2"
expect "producer's view" "$(grep '^producer: key' "$W/producer.out")" \
    "producer: key=$(printf '%#x' $KEY) size=10000 mode=600 creator_is_me=True last_is_consumer=True nattch=1 dtime_set=True"
expect "removal" "$(tail -n1 "$W/producer.out")" "producer: removed"
expect_no_segments "at the end"

# ---- 3: the extension loaded with RTLD_DEEPBIND
KEY3=$((0x5e2e0003))
rc=0
shm "$PY" -c '
import os, sys
sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
import sysv_ipc
m = sysv_ipc.SharedMemory(int(sys.argv[1]), sysv_ipc.IPC_CREX, mode=0o600, size=4096)
m.write(b"deep\0", 0)
try:
    sysv_ipc.SharedMemory(int(sys.argv[1]), sysv_ipc.IPC_CREX, size=4096)
    print("deepbind: second IPC_CREX succeeded")
except sysv_ipc.ExistentialError:
    print("deepbind: created, EEXIST on a second create, nattch=%d" % m.number_attached)
m.detach()
' $KEY3 >"$W/deep.out" 2>&1 || rc=$?
cat "$W/deep.out"
[ $rc = 0 ] || die "the RTLD_DEEPBIND process exited $rc"
expect "RTLD_DEEPBIND extension" "$(tail -n1 "$W/deep.out")" "deepbind: created, EEXIST on a second create, nattch=1"
rc=0
shm "$PY" -c '
import sys, sysv_ipc
m = sysv_ipc.SharedMemory(int(sys.argv[1]))
print("plain: read %r nattch=%d" % (m.read(4, 0), m.number_attached))
m.detach()
m.remove()
' $KEY3 >"$W/plain.out" 2>&1 || rc=$?
cat "$W/plain.out"
[ $rc = 0 ] || die "the ordinary process exited $rc"
expect "ordinary process finds the RTLD_DEEPBIND segment" "$(tail -n1 "$W/plain.out")" "plain: read b'deep' nattch=1"
expect_no_segments "after the RTLD_DEEPBIND part"
