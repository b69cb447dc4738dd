#!/usr/bin/env bash
# PostgreSQL 15 (Debian's, unmodified, run as user postgres):
#  A. shared_memory_type = sysv (and dynamic_shared_memory_type = sysv, so the
#     dynamic segments of parallel queries are SysV segments too): initdb, start
#     (unix socket in the work dir, listen_addresses = ''), the main segment (key =
#     the data directory's inode number) is listed with nattch >= 1 and a size >= shared_buffers;
#     pgbench -i, a parallel query (workers launched, right count), pgbench -T 3
#     (transactions done, none failed); clean stop: no segment left.
#  B. crash: start, kill -9 the postmaster and its children; the segments stay
#     (nattch 0); start again — PostgreSQL inspects the old segment (IPC_STAT,
#     shm_nattch), removes it and comes up; crash recovery keeps the data; the old
#     segments are gone; clean stop: no segment left.
#  C. the default shared_memory_type = mmap: only the small SysV interlock
#     segment exists while it runs; clean stop: no segment left.
# e2e-timeout: 240
. "$(dirname "$0")/_lib.sh"
PGBIN=/usr/lib/postgresql/15/bin
[ -x $PGBIN/initdb ] && [ -x $PGBIN/pgbench ] || skip "PostgreSQL 15 not installed"
id postgres >/dev/null 2>&1 || skip "no user postgres"

D=$W/data
S=$W/sock
L=$W/log # owned by postgres: the server writes its log there
install -d -o postgres -m 700 "$D" "$S"
install -d -o postgres -m 755 "$L"
is_shim && install -d -o postgres -m 700 "$SHMSHIM_DIR"

pg() { shm_as postgres "$PGBIN/$1" "${@:2}"; }
sql() { "$PGBIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$S" -U postgres -d postgres -c "$1"; }
start() { # extra postgres options
    pg pg_ctl -D "$D" -l "$L/server.log" -w -t 60 -o "$*" start >/dev/null ||
        { tail -n 30 "$L/server.log"; die "pg_ctl start failed"; }
}
stop() {
    pg pg_ctl -D "$D" -w -t 60 -m fast stop >/dev/null ||
        { tail -n 30 "$L/server.log"; die "pg_ctl stop failed"; }
}
cleanup() { # whatever happened: no server may survive the test
    if [ -f "$D/postmaster.pid" ]; then
        pg pg_ctl -D "$D" -w -t 20 -m immediate stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
# PostgreSQL's first key for its main segment: the data directory's inode number
PM_KEY=$(printf '0x%08x' $(($(stat -c %i "$D") & 0xffffffff)))

log "initdb"
pg initdb -D "$D" -A trust -U postgres -E UTF8 --locale=C --no-sync >"$W/initdb.log" 2>&1 ||
    { tail -n 30 "$W/initdb.log"; die "initdb failed"; }
ok "initdb"
cat >>"$D/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$S'
port = 5432
shared_buffers = 32MB
max_connections = 20
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
SYSV="-c shared_memory_type=sysv -c dynamic_shared_memory_type=sysv"

# ---- A: sysv
start "$SYSV"
expect "shared_memory_type" "$(sql 'SHOW shared_memory_type')" sysv
expect "dynamic_shared_memory_type" "$(sql 'SHOW dynamic_shared_memory_type')" sysv
segs=$(segments)
echo "$segs"
main=$(awk -v k=$PM_KEY '$1 == k' <<<"$segs")
[ -n "$main" ] || die "no segment with key $PM_KEY"
read -r _ mid _ _ mbytes mnattch _ <<<"$main"
[ "$mbytes" -ge $((32 * 1024 * 1024)) ] || die "main segment has $mbytes bytes"
[ "$mnattch" -ge 1 ] || die "main segment nattch $mnattch"
ok "main segment id $mid, $mbytes bytes, nattch $mnattch"

log "pgbench -i"
"$PGBIN/pgbench" -i -s 1 -q -h "$S" -U postgres postgres >"$W/pgbench-i.log" 2>&1 ||
    { cat "$W/pgbench-i.log"; die "pgbench -i failed"; }
ok "pgbench -i"
par=$(sql "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM pgbench_accounts")
echo "$par"
grep -Eq 'Workers Launched: [1-9]' <<<"$par" || die "no parallel worker launched"
expect "parallel count(*)" "$(sql "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SELECT count(*) FROM pgbench_accounts")" 100000
log "pgbench -T 3"
"$PGBIN/pgbench" -T 3 -c 4 -j 2 -h "$S" -U postgres postgres >"$W/pgbench.log" 2>&1 ||
    { cat "$W/pgbench.log"; die "pgbench failed"; }
grep -E 'processed|failed' "$W/pgbench.log" || true
n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$W/pgbench.log")
[ "${n:-0}" -gt 0 ] || die "pgbench processed no transaction"
grep -q '^number of failed transactions: 0 ' "$W/pgbench.log" || die "pgbench had failed transactions"
ok "pgbench: $n transactions"
sum=$(sql 'SELECT sum(abalance) FROM pgbench_accounts')
stop
expect_no_segments "after a clean stop (sysv)"

# ---- B: crash with kill -9, restart
start "$SYSV"
before=$(segments)
pm=$(head -n1 "$D/postmaster.pid")
kids=$(ps -o pid= --ppid "$pm" | tr -s ' \n' ' ' || true)
log "kill -9 postmaster $pm and children $kids"
kill -KILL "$pm" $kids
wait_gone "$pm" $kids || die "postgres processes survived kill -9"
after=$(segments)
echo "$after"
expect "segments after kill -9 (ids)" "$(awk '{print $2}' <<<"$after" | sort -n | tr '\n' ' ')" \
    "$(awk '{print $2}' <<<"$before" | sort -n | tr '\n' ' ')"
expect "nattch of every segment after kill -9" "$(awk '{print $6}' <<<"$after" | sort -u | tr '\n' ' ')" "0 "
start "$SYSV"
ok "restarted after kill -9"
grep -E 'not properly shut down|automatic recovery|redo' "$L/server.log" | tail -n 3 || true
expect "data after crash recovery" "$(sql 'SELECT sum(abalance) FROM pgbench_accounts')" "$sum"
now=$(segments)
echo "$now"
common=$(comm -12 <(awk '{print $2}' <<<"$before" | sort) <(awk '{print $2}' <<<"$now" | sort) | tr '\n' ' ')
expect "segments of the crashed server still present" "$common" ""
expect "main segment (key $PM_KEY) present" "$(awk -v k=$PM_KEY '$1 == k' <<<"$now" | wc -l)" 1
stop
expect_no_segments "after a clean stop (after the crash)"

# ---- C: default shared_memory_type = mmap
start ""
expect "shared_memory_type" "$(sql 'SHOW shared_memory_type')" mmap
segs=$(segments)
echo "$segs"
expect "SysV segments with mmap" "$(wc -l <<<"$segs")" 1
read -r k _ _ _ bytes nattch _ <<<"$segs"
[ "$bytes" -lt 65536 ] || die "the interlock segment has $bytes bytes"
[ "$nattch" -ge 1 ] || die "the interlock segment has nattch $nattch"
ok "interlock segment key $k, $bytes bytes, nattch $nattch"
expect "pgbench_accounts" "$(sql 'SELECT count(*) FROM pgbench_accounts')" 100000
stop
expect_no_segments "after a clean stop (mmap)"
