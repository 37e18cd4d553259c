#!/bin/bash
# tests/integration/io-interactive.sh -- "blockgraph io" reading commands
# from standard input.
#
#  - the same input through qemu-io and blockgraph io gives the same output
#    (qemu-io's prompts, which it prints even when stdin is not a terminal,
#    are filtered out: blockgraph io prompts only on a terminal);
#  - a last line without a newline still runs; "quit" stops reading;
#  - a session fed from a fifo keeps the image open and locked between
#    commands (qemu-img convert is refused, -U works), aio requests complete
#    while the tool waits for input, and the data is there after "quit";
#  - on a terminal the prompt "qemu-io> " is printed (checked with script(1)
#    when it is installed).
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-interactive: $BLOCKGRAPH against $(qemu-io --version | head -1)"

fresh_images raw 1M
OPTS=(-f raw)
compare_stdin "commands from stdin" 'write -P 1 0 4k
read -P 1 0 4k

   length
nosuch
read -P 2 0 4k
aio_write -P 3 8k 4k
aio_flush
read -P 3 8k 4k
quit
write -P 4 0 4k
'
compare_stdin "last line without a newline" 'write -P 5 0 512
read -P 5 0 512'
compare_stdin "empty input" ''

# A session that stays open.
HOLDER_PID=
stop_holder() {
    if [ -n "$HOLDER_PID" ]; then
        exec 3>&- 2>/dev/null
        kill "$HOLDER_PID" 2>/dev/null
        wait "$HOLDER_PID" 2>/dev/null
        HOLDER_PID=
    fi
}
io_cleanup_hooks+=(stop_holder)

# wait_output PATTERN: waits up to 10 s for the session's output to contain
# a line matching PATTERN.
wait_output() {
    for _ in $(seq 100); do
        grep -qE -- "$1" "$WORK/session.out" && return 0
        kill -0 "$HOLDER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

IMG=$WORK/b/img.raw
mkfifo "$WORK/fifo"
"$BLOCKGRAPH" io -f raw "$IMG" <"$WORK/fifo" >"$WORK/session.out" 2>&1 &
HOLDER_PID=$!
exec 3>"$WORK/fifo"
echo "write -P 0x71 0 64k" >&3
if wait_output '^wrote 65536/65536 bytes at offset 0$'; then
    ok "session: a command from the fifo runs"
else
    bad "session: no output for the first command"
    sed 's/^/        /' "$WORK/session.out"
fi
echo "aio_write -P 0x72 983040 64k" >&3
if wait_output '^wrote 65536/65536 bytes at offset 983040$'; then
    ok "session: an aio request completes while the tool waits for input"
else
    bad "session: the aio request did not complete while waiting for input"
    sed 's/^/        /' "$WORK/session.out"
fi
if out=$(qemu-img convert -f raw -O raw "$IMG" "$WORK/copy.raw" 2>&1); then
    bad "session: qemu-img convert succeeded on the open image"
elif grep -qF 'Failed to get shared "write" lock' <<<"$out"; then
    ok "session: the image stays locked between commands (qemu-img convert refused)"
else
    bad "session: qemu-img convert failed unexpectedly: $out"
fi
if qemu-io -r -U -f raw -c 'read -P 0x71 0 64k' "$IMG" >/dev/null 2>&1; then
    ok "session: qemu-io -r -U reads what the session wrote"
else
    bad "session: qemu-io -r -U cannot read the session's data"
fi
printf 'read -P 0x72 983040 64k\nquit\n' >&3
exec 3>&-
wait "$HOLDER_PID"
rc=$?
HOLDER_PID=
if [ $rc = 0 ] && grep -q '^read 65536/65536 bytes at offset 983040$' "$WORK/session.out"; then
    ok "session: quit ends it with status 0"
else
    bad "session: status $rc"
    sed 's/^/        /' "$WORK/session.out"
fi
if qemu-img convert -f raw -O raw "$IMG" "$WORK/copy.raw" >/dev/null 2>&1 &&
    qemu-io -f raw -c 'read -P 0x71 0 64k' -c 'read -P 0x72 983040 64k' "$IMG" >/dev/null 2>&1; then
    ok "session: after quit the image is unlocked and holds the data"
else
    bad "session: image still locked or data missing after quit"
fi

# The prompt, on a terminal.
if command -v script >/dev/null; then
    out=$(printf 'length\nquit\n' | script -qec "'$BLOCKGRAPH' io -f raw '$IMG'" /dev/null 2>&1 | tr -d '\r')
    # The terminal echoes the input, interleaved with the output in any
    # order: count the prompts (one per command read) and find the result.
    if [ "$(grep -o 'qemu-io> ' <<<"$out" | wc -l)" = 2 ] && grep -q '1 MiB' <<<"$out"; then
        ok "terminal: prompt 'qemu-io> ' before each command"
    else
        bad "terminal: no prompt in: $out"
    fi
else
    echo "  (terminal prompt not checked: script(1) missing)"
fi
out=$(printf 'length\n' | "$BLOCKGRAPH" io -f raw "$IMG" 2>&1)
if [ "$out" = "1 MiB" ]; then
    ok "pipe: no prompt when stdin is not a terminal"
else
    bad "pipe: output '$out'"
fi

finish
