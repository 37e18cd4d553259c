#!/bin/bash
# tests/integration/dropin-links.sh -- blockgraph run through links named
# qemu-img, qemu-io, qemu-nbd and qemu-storage-daemon (tools/dropin.h): each
# behaves as its tool, prints messages starting with the link's name and a
# --version line in QEMU's form; scripts/qemu-links.sh creates the links and
# refuses to replace anything else. Fast: small images, no servers.
SRC=${BG_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
. "$(dirname "$0")/img-lib.sh"

LINKS=$WORK/bin
mkdir -p "$LINKS"
for n in qemu-img qemu-io qemu-nbd qemu-storage-daemon; do ln -s "$B" "$LINKS/$n"; done

# starts_with DESC PREFIX FILE: the first line of FILE starts with PREFIX.
starts_with() {
    local first
    first=$(head -n 1 "$3")
    if [ "${first#"$2"}" != "$first" ]; then
        ok "$1"
    else
        bad "$1: first line '$first', want it to start with '$2'"
    fi
}

echo "== each name behaves as its tool"
"$LINKS/qemu-img" create -f qcow2 ours.qcow2 1M >ours.out 2>&1
qemu-img create -f qcow2 theirs.qcow2 1M >theirs.out 2>&1
if [ "$(sed 's/ours/X/' ours.out)" = "$(sed 's/theirs/X/' theirs.out)" ]; then
    ok "qemu-img create: same output as QEMU's"
else
    bad "qemu-img create: '$(cat ours.out)' vs QEMU's '$(cat theirs.out)'"
fi
qemu_accepts "image made by the qemu-img link" ours.qcow2
expect_rc "qemu-io -c write" 0 "$LINKS/qemu-io" -c "write -P 0x5a 0 4k" ours.qcow2
if qemu-io -c "read -P 0x5a 0 4k" ours.qcow2 | grep -q '^read 4096/4096'; then
    ok "data written through the qemu-io link reads back with qemu-io"
else
    bad "data written through the qemu-io link does not read back"
fi
expect_rc "qemu-nbd --help" 0 "$LINKS/qemu-nbd" --help
grep -q 'nbd' "$WORK/last.out" && ok "qemu-nbd --help is the nbd tool's help" || bad "qemu-nbd --help: $(head -n 2 "$WORK/last.out")"
expect_rc "qemu-storage-daemon --help" 0 "$LINKS/qemu-storage-daemon" --help
grep -q -- '--blockdev' "$WORK/last.out" && ok "qemu-storage-daemon --help is the daemon's help" ||
    bad "qemu-storage-daemon --help: $(head -n 2 "$WORK/last.out")"

echo "== messages start with the name it was run as"
expect_rc "qemu-img info on a missing file" 1 "$LINKS/qemu-img" info missing.qcow2
starts_with "qemu-img: prefix" "qemu-img: Could not open 'missing.qcow2'" "$WORK/last.err"
expect_rc "qemu-img without arguments" 1 "$LINKS/qemu-img"
qemu-img >/dev/null 2>theirs.err
if cmp -s "$WORK/last.err" theirs.err; then ok "qemu-img without arguments: same stderr as QEMU's"; else
    bad "qemu-img without arguments: '$(cat "$WORK/last.err")' vs '$(cat theirs.err)'"; fi
expect_rc "qemu-io on a missing file" 1 "$LINKS/qemu-io" -c "read 0 1" missing.qcow2
starts_with "qemu-io: prefix" "qemu-io: can't open device missing.qcow2:" "$WORK/last.err"
expect_rc "qemu-io bad option" 1 "$LINKS/qemu-io" --no-such-option
starts_with "qemu-io: option prefix" "qemu-io: unrecognized option '--no-such-option'" "$WORK/last.err"
expect_rc "qemu-nbd without a file" 1 "$LINKS/qemu-nbd"
starts_with "qemu-nbd: prefix" "qemu-nbd: " "$WORK/last.err"
expect_rc "qemu-storage-daemon bad option" 1 "$LINKS/qemu-storage-daemon" --no-such-option
starts_with "qemu-storage-daemon: prefix" "qemu-storage-daemon: " "$WORK/last.err"
expect_rc "argv[0] qemu-img (no link)" 1 bash -c 'exec -a qemu-img "$0" info missing.qcow2' "$B"
starts_with "argv[0] qemu-img: prefix" "qemu-img: Could not open 'missing.qcow2'" "$WORK/last.err"
expect_rc "argv[0] with a directory" 1 bash -c 'exec -a /some/where/qemu-io "$0" -c "read 0 1" missing.qcow2' "$B"
starts_with "argv[0] /some/where/qemu-io: prefix" "qemu-io: " "$WORK/last.err"
expect_rc "blockgraph img keeps its prefix" 1 "$B" img info missing.qcow2
starts_with "blockgraph img: prefix" "blockgraph img: Could not open 'missing.qcow2'" "$WORK/last.err"
expect_rc "a name that is no QEMU tool is blockgraph" 1 bash -c 'exec -a qemu-system-x86_64 "$0" nosuchcmd' "$B"
starts_with "other name: blockgraph's message" "blockgraph: unknown command 'nosuchcmd'" "$WORK/last.err"

echo "== --version in QEMU's form"
for n in qemu-img qemu-io qemu-storage-daemon; do
    expect_rc "$n --version" 0 "$LINKS/$n" --version
    starts_with "$n --version: first line" "$n version 7.2.0 (blockgraph " "$WORK/last.out"
done
expect_rc "qemu-nbd --version" 0 "$LINKS/qemu-nbd" --version
starts_with "qemu-nbd --version: first line" "qemu-nbd 7.2.0 (blockgraph " "$WORK/last.out"
expect_rc "blockgraph img --version" 0 "$B" img --version
starts_with "blockgraph img --version" "blockgraph img version " "$WORK/last.out"

echo "== scripts/qemu-links.sh"
D=$WORK/inst/bin
mkdir -p "$D"
cp "$B" "$D/blockgraph"
expect_rc "install the links" 0 "$SRC/scripts/qemu-links.sh" install "$D"
for n in qemu-img qemu-io qemu-nbd qemu-storage-daemon; do
    [ "$(readlink "$D/$n")" = blockgraph ] && ok "$n -> blockgraph" || bad "$n is not a link to blockgraph"
done
expect_rc "install again (links already there)" 0 "$SRC/scripts/qemu-links.sh" install "$D"
expect_rc "the installed qemu-img link runs" 0 "$D/qemu-img" info ours.qcow2
expect_rc "uninstall" 0 "$SRC/scripts/qemu-links.sh" uninstall "$D"
[ ! -e "$D/qemu-img" ] && [ -x "$D/blockgraph" ] && ok "uninstall removed the links only" || bad "uninstall"
printf '#!/bin/sh\necho real\n' >"$D/qemu-io"
chmod +x "$D/qemu-io"
expect_rc "refuse to replace a real qemu-io" 1 "$SRC/scripts/qemu-links.sh" install "$D"
grep -q "refusing to replace $D/qemu-io" "$WORK/last.err" && ok "refusal says why" || bad "refusal message: $(cat "$WORK/last.err")"
[ "$("$D/qemu-io")" = real ] && [ ! -e "$D/qemu-img" ] && ok "refusal changed nothing" || bad "refusal changed files"
expect_rc "uninstall leaves a real qemu-io" 0 "$SRC/scripts/qemu-links.sh" uninstall "$D"
[ "$("$D/qemu-io")" = real ] && ok "real qemu-io kept" || bad "real qemu-io removed"

finish
