#!/bin/bash
# tests/integration/io-errors.sh -- "blockgraph io" on bad input.
#
# Every case must print exactly the expected line (naming the culprit), exit
# non-zero, and leave the files alone: no file created, none changed (size,
# mtime and checksum compared). Where qemu-io prints the same message the
# case also compares with it. Also: the exit status after a failed pattern
# check, and -r refusing writes.
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "io-errors: $BLOCKGRAPH"
cd "$WORK" || exit 1
qemu-img create -q -f raw img.raw 1M
qemu-io -f raw -c 'write -P 0x61 0 64k' img.raw >/dev/null
mkdir dir
P="blockgraph io"

# expect_error DESC EXPECTED_LINE ARGS...: "blockgraph io ARGS..." must fail
# with exactly EXPECTED_LINE, and change nothing in $WORK.
expect_error() {
    local desc=$1 want=$2
    shift 2
    local before after
    before=$(find . -mindepth 1 -not -name '*.state' | sort; state_of img.raw)
    expect_lines "$desc" 1 "$want" -- "$BLOCKGRAPH" io "$@"
    after=$(find . -mindepth 1 -not -name '*.state' | sort; state_of img.raw)
    if [ "$before" != "$after" ]; then
        bad "$desc: files changed"
        diff <(echo "$before") <(echo "$after") | sed 's/^/        /'
    fi
}

# same_as_qemu DESC ARGS...: qemu-io ARGS... prints the same (after
# io_filter) and fails too.
same_as_qemu() {
    local desc=$1 q b qrc=0 brc=0
    shift
    q=$(qemu-io "$@" 2>&1 | io_filter; exit "${PIPESTATUS[0]}") || qrc=$?
    b=$("$BLOCKGRAPH" io "$@" 2>&1) || brc=$?
    if [ "$q" = "$b" ] && [ $qrc -ne 0 ] && [ $brc -ne 0 ]; then
        ok "$desc: same as qemu-io"
    else
        bad "$desc: differs from qemu-io (status $qrc vs $brc):"
        diff <(echo "$q") <(echo "$b") | sed 's/^/        /'
    fi
}

echo "opening"
expect_error "missing file" \
    "$P: can't open device nonexistent.raw: Could not open 'nonexistent.raw': No such file or directory" \
    -f raw -c 'write 0 1' nonexistent.raw
same_as_qemu "missing file" -f raw -c 'write 0 1' nonexistent.raw
expect_error "missing file, format probed" \
    "$P: can't open device nonexistent.raw: Could not open 'nonexistent.raw': No such file or directory" \
    -c 'read 0 1' nonexistent.raw
expect_error "directory" "$P: can't open device dir: Could not open 'dir': Is a directory" -f raw -c 'read 0 1' dir
same_as_qemu "directory" -f raw -c 'read 0 1' dir
expect_error "directory, read-only" "$P: can't open device dir: 'file' driver requires 'dir' to be a regular file" \
    -r -f raw -c 'read 0 1' dir
expect_error "unknown driver (-f foo)" "$P: can't open device img.raw: Unknown driver 'foo'" \
    -f foo -c 'write 0 1' img.raw
same_as_qemu "unknown driver (-f foo)" -f foo -c 'write 0 1' img.raw
expect_error "unknown driver (--image-opts)" "$P: can't open: Unknown driver 'foo'" \
    --image-opts -c 'write 0 1' driver=foo,file.filename=img.raw
expect_error "node name used twice (--image-opts JSON)" \
    "$P: can't open: file.node-name: node name 'n0' is used more than once" \
    --image-opts -c 'write 0 1' \
    '{"driver":"raw","node-name":"n0","file":{"driver":"file","node-name":"n0","filename":"img.raw"}}'
expect_error "node name used twice (json:)" \
    "$P: can't open device json:{\"driver\":\"raw\",\"node-name\":\"n0\",\"file\":{\"driver\":\"file\",\"node-name\":\"n0\",\"filename\":\"img.raw\"}}: file.node-name: node name 'n0' is used more than once" \
    -c 'write 0 1' 'json:{"driver":"raw","node-name":"n0","file":{"driver":"file","node-name":"n0","filename":"img.raw"}}'
expect_error "child reference to an unknown node" "$P: can't open: file: no node named 'nosuch'" \
    --image-opts -c 'write 0 1' 'driver=raw,file=nosuch'
expect_error "child reference to an unknown node (json:)" \
    "$P: can't open device json:{\"driver\":\"raw\",\"file\":\"nosuch\"}: file: no node named 'nosuch'" \
    -c 'write 0 1' 'json:{"driver":"raw","file":"nosuch"}'
expect_error "raw offset past EOF" \
    "$P: can't open: Offset (2097152) cannot be greater than size of the containing file (1048576)" \
    --image-opts -c 'write 0 1' 'driver=raw,offset=2M,file.driver=file,file.filename=img.raw'
expect_error "raw offset + size past EOF" \
    "$P: can't open: The sum of offset (512) and size (1048576) has to be smaller or equal to the  actual size of the containing file (1048576)" \
    --image-opts -c 'write 0 1' 'driver=raw,offset=512,size=1M,file.driver=file,file.filename=img.raw'
expect_error "unknown key" "$P: can't open: Block format 'raw' does not support the option 'bogus'" \
    --image-opts -c 'write 0 1' 'driver=raw,bogus=1,file.filename=img.raw'
expect_error "bad JSON in json:" \
    "$P: can't open device json:{\"driver\":\"raw\": JSON: syntax error while parsing object - unexpected end of input; expected '}' at position 15" \
    -c 'write 0 1' 'json:{"driver":"raw"'
expect_error "-U without -r" "$P: can't open device img.raw: force-share=on can only be used with read-only images" \
    -U -f raw -c 'write 0 1' img.raw
same_as_qemu "-U without -r" -U -f raw -c 'write 0 1' img.raw
expect_error "--aio native without cache.direct" \
    "$P: can't open device img.raw: aio=native was specified, but it requires cache.direct=on, which was not specified." \
    --aio native -f raw -c 'write 0 1' img.raw
same_as_qemu "--aio native without cache.direct" --aio native -f raw -c 'write 0 1' img.raw

# Permission denied: as root, drop to nobody (root may open anything).
chmod 0444 img.raw
chmod 0755 "$WORK"
if [ "$(id -u)" = 0 ]; then
    if command -v setpriv >/dev/null; then
        as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    else
        as_user=()
    fi
else
    as_user=(env)
fi
if [ ${#as_user[@]} -gt 0 ]; then
    before=$(state_of img.raw)
    expect_lines "permission denied" 1 \
        "$P: can't open device img.raw: Could not open 'img.raw': Permission denied" -- \
        "${as_user[@]}" "$BLOCKGRAPH" io -f raw -c 'write 0 1' img.raw
    expect_lines "permission denied, but -r works" 0 "read 1/1 bytes at offset 0
1 bytes, 1 ops; TIME" -- \
        bash -c '"$@" 2>&1 | sed -E "s/^([^,]*, [0-9]+ ops); .*/\1; TIME/"' _ \
        "${as_user[@]}" "$BLOCKGRAPH" io -r -f raw -c 'read -P 0x61 0 1' img.raw
    [ "$before" = "$(state_of img.raw)" ] && ok "permission denied: image unchanged" ||
        bad "permission denied: image changed"
else
    echo "  (permission-denied case not run: root without setpriv)"
fi
chmod 0644 img.raw

echo "command line"
expect_error "bad cache mode" "$P: Invalid cache option: bogus" -t bogus -c 'write 0 1' img.raw
same_as_qemu "bad cache mode" -t bogus -c 'write 0 1' img.raw
expect_error "bad aio mode" "$P: Invalid aio option: bogus" --aio bogus -c 'write 0 1' img.raw
expect_error "bad discard mode" "$P: Invalid discard option: bogus" -d bogus -c 'write 0 1' img.raw
expect_error "--image-opts with -f" "$P: --image-opts and -f are mutually exclusive" \
    --image-opts -f raw -c 'write 0 1' driver=raw,file.filename=img.raw
expect_error "two images" "$P: expected at most one image, got 'img.raw' and 'other.raw'; see 'blockgraph io --help'" \
    -c 'write 0 1' img.raw other.raw
expect_error "unknown option" "$P: invalid option -- 'Z'
Try '$P --help' for more information" -Z -c 'write 0 1' img.raw
expect_error "unknown long option" "$P: unrecognized option '--bogus'
Try '$P --help' for more information" --bogus -c 'write 0 1' img.raw
expect_error "missing option argument" "$P: option requires an argument -- 'f'
Try '$P --help' for more information" img.raw -f

echo "exit status"
expect_lines "pattern mismatch: exit 1" 1 "Pattern verification failed at offset 0, 512 bytes" -- \
    "$BLOCKGRAPH" io -f raw -c 'read -q -P 0x62 0 512' img.raw
expect_lines "pattern mismatch among successful commands: exit 1" 1 \
    "Pattern verification failed at offset 512, 512 bytes" -- \
    "$BLOCKGRAPH" io -f raw -c 'read -q -P 0x61 0 512' -c 'read -q -P 0 512 512' -c 'read -q -P 0x61 1k 512' \
    img.raw
expect_lines "all commands succeed: exit 0" 0 "" -- \
    "$BLOCKGRAPH" io -f raw -c 'read -q -P 0x61 0 512' -c 'write -q -P 0x61 0 512' img.raw
expect_lines "no command fails, no image: exit 0" 0 "" -- "$BLOCKGRAPH" io -c 'sleep 1'
expect_lines "command without an image fails" 1 "no file open, try 'help open'" -- \
    "$BLOCKGRAPH" io -c 'read 0 1'
aio_out=$("$BLOCKGRAPH" io -f raw -c 'aio_read -P 0x62 0 512' -c aio_flush img.raw 2>&1)
aio_rc=$?
if [ $aio_rc = 0 ] && grep -qx "Pattern verification failed at offset 0, 512 bytes" <<<"$aio_out"; then
    ok "aio_read -P mismatch is reported but does not fail (as in qemu-io)"
else
    bad "aio_read -P mismatch: status $aio_rc, output: $aio_out"
fi

echo "read-only"
before=$(state_of img.raw)
for cmd in 'write 0 1' 'write -z 0 512' 'discard 0 4k' 'truncate 2M' 'aio_write 0 1' 'writev 0 1'; do
    expect_lines "-r refuses '$cmd'" 1 "$P: Block node is read-only" -- \
        "$BLOCKGRAPH" io -r -f raw -c "$cmd" img.raw
done
expect_error "read-only=on in --image-opts without -r" "$P: can't open: Block node is read-only" \
    --image-opts -c 'read 0 1' driver=raw,read-only=on,file.filename=img.raw
expect_lines "read-only=on in --image-opts with -r refuses writes" 1 "$P: Block node is read-only" -- \
    "$BLOCKGRAPH" io -r --image-opts -c 'write 0 1' driver=raw,read-only=on,file.filename=img.raw
[ "$before" = "$(state_of img.raw)" ] && ok "-r: image unchanged" || bad "-r: image changed"

finish
