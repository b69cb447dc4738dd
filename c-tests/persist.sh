# persist.sh — S127 S85 S120 S122 S93: segments outlive the processes that
# made them.  One process creates a keyed and a private segment, writes a
# pattern and exits; unrelated processes find them by key and by id, attach,
# check; a process that exits attached and one killed with SIGKILL while
# attached leave nattch at 0; a last process removes both.
# Run by scripts/test with $T = directory of the compiled c-tests.
set -euo pipefail
: "${T:?T must name the compiled c-tests directory}"

out=$("$T/_persist" create)
printf '%s\n' "$out"
id=$(printf '%s\n' "$out" | sed -n 's/^S127 create shmget(KEY, .*) = \([0-9]*\)$/\1/p' | head -n1)
id2=$(printf '%s\n' "$out" | sed -n 's/^S127 create shmget(IPC_PRIVATE, .*) = \([0-9]*\)$/\1/p' | head -n1)
if [ -z "$id" ] || [ -z "$id2" ]; then
    echo "no ids from create"
    exit 1
fi

"$T/_persist" find "$id" "$id2"
"$T/_persist" attach-exit "$id2"
"$T/_persist" stat "$id2" "S120 after attach-exit"

# S122: a holder killed with SIGKILL
fifo=$(mktemp -u)
mkfifo "$fifo"
"$T/_persist" hold "$id" >"$fifo" &
holder=$!
while IFS= read -r line; do
    printf '%s\n' "$line"
    [ "$line" = held ] && break
done <"$fifo"
"$T/_persist" stat "$id" "S122 while held"
kill -KILL "$holder"
wait "$holder" 2>/dev/null || true
rm -f "$fifo"
"$T/_persist" stat "$id" "S122 after SIGKILL"

"$T/_persist" remove "$id" "$id2"
