#!/bin/bash
# tests/integration/nbd-tool-listed.sh -- our server, as clients list it:
# qemu-nbd --list (and ours) against "blockgraph nbd ARGS" print exactly
# what they print against "qemu-nbd ARGS" (export name, description, size,
# transmission flags per -r/-e, block sizes, -B/-A contexts and their order).
set -u
. "$(dirname "$0")/lib-nbd-tool.sh"

S=$WORK/s.sock
make_list_image

echo "== qemu-nbd --list: our server looks like qemu-nbd"
for args in "-x ex -D hello" "-r" "-e 2 -B b0 -A" "-e 0 -B b1 -B b0 -x multi" "-r -A -D a,description"; do
    # shellcheck disable=SC2086
    if start_qemu_nbd "$S" -t $args img.qcow2; then
        want=$(qemu-nbd --list -k "$S" 2>&1)
        stop "$LAST_PID"
    else
        bad "qemu-nbd $args did not start"
        continue
    fi
    # shellcheck disable=SC2086
    if start_bg_nbd "$S" -t $args img.qcow2; then
        got=$(qemu-nbd --list -k "$S" 2>&1)
        ours=$("$BLOCKGRAPH" nbd --list -k "$S" 2>&1)
        stop "$LAST_PID"
        same_text "qemu-nbd --list, server args '$args'" "$want" "$got"
        same_text "blockgraph nbd --list, server args '$args'" "$want" "$ours"
    else
        bad "blockgraph nbd $args did not start: $(tail -1 "$WORK/server.err")"
    fi
done

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"
