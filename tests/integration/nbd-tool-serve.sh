#!/bin/bash
# tests/integration/nbd-tool-serve.sh -- "blockgraph nbd FILE" serving,
# judged by nbdinfo, qemu-io, qemu-img and the image file afterwards:
# export name, description, size, read-only and multi-conn per -e; data
# written through the export lands in the image (raw and qcow2), but not
# with -s (temporary overlay, removed at exit) and not with -r (refused);
# -l shows an internal snapshot; -o an offset; -B/-A add the metadata
# contexts; write-zeroes and trim leave the image as through qemu-nbd; without -t the server exits after its last client, with -t it
# stays; --fork/--pid-file; TCP with -b/-p.
set -u
. "$(dirname "$0")/lib-nbd-tool.sh"

S=$WORK/s.sock
uri() { echo "nbd+unix:///${2:-}?socket=$1"; }
field() { nbdinfo_json "$1" | json_field "$2"; }
expect() { # DESC WANT GOT
    if [ "$2" = "$3" ]; then ok "$1: $3"; else bad "$1: got $3, want $2"; fi
}
qio() { qemu-io -f raw "$@" 2>&1; }

for fmt in raw qcow2; do
    echo "== $fmt: name, description, size, flags; data reaches the image"
    qemu-img create -q -f $fmt img.$fmt 8M
    qemu-io -f $fmt -c 'write -P 0x11 0 1M' img.$fmt >/dev/null
    if start_bg_nbd "$S" -t -f $fmt -x ex -D "the description" img.$fmt; then
        js=$(nbdinfo_json "$(uri "$S" ex)")
        expect "export-name" '"ex"' "$(echo "$js" | json_field export-name)"
        expect "description" '"the description"' "$(echo "$js" | json_field description)"
        expect "export-size" 8388608 "$(echo "$js" | json_field export-size)"
        expect "is_read_only" false "$(echo "$js" | json_field is_read_only)"
        expect "can_multi_conn (-e 1)" false "$(echo "$js" | json_field can_multi_conn)"
        out=$(qio -c 'read -P 0x11 0 1M' -c 'write -P 0x22 1M 64k' "$(uri "$S" ex)")
        echo "$out" | grep -q 'read 1048576/1048576' && echo "$out" | grep -q 'wrote 65536/65536' &&
            ok "qemu-io reads the image and writes" || bad "qemu-io over the export: $out"
        stop "$LAST_PID"
        out=$(qemu-io -f $fmt -c 'read -P 0x22 1M 64k' img.$fmt 2>&1)
        echo "$out" | grep -q 'read 65536/65536' && ok "the write is in the image" || bad "image after write: $out"
        [ -e "$S" ] && bad "the socket is left behind" || ok "the socket is removed at exit"
    else
        bad "$fmt: server did not start: $(tail -2 "$WORK/server.err")"
    fi
done

echo "== -e: multi-conn unless 1"
for e in 0 2; do
    if start_bg_nbd "$S" -t -e $e -f raw img.raw; then
        expect "can_multi_conn (-e $e)" true "$(field "$(uri "$S")" can_multi_conn)"
        stop "$LAST_PID"
    else
        bad "-e $e: server did not start"
    fi
done

# -e 1: a second client is not served while the first is connected (it
# waits in the listen queue, as with qemu-nbd), and is once the first leaves.
if start_bg_nbd "$S" -t -e 1 -f raw img.raw; then
    out=$(/usr/bin/python3 - "$(uri "$S")" <<'PY' 2>&1
import nbd, subprocess, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
r = subprocess.run(["timeout", "2", "nbdinfo", "--size", sys.argv[1]], capture_output=True, text=True)
print("while-first-open:%d" % r.returncode)
h.shutdown()
del h
r = subprocess.run(["timeout", "10", "nbdinfo", "--size", sys.argv[1]], capture_output=True, text=True)
print("after-first-left:%d:%s" % (r.returncode, r.stdout.strip()))
PY
)
    expect "-e 1: second client" "while-first-open:124 after-first-left:0:8388608" "$(echo $out)"
    stop "$LAST_PID"
else
    bad "-e 1: server did not start"
fi

echo "== -r: read-only"
sum=$(md5sum <img.qcow2)
if start_bg_nbd "$S" -t -r -f qcow2 img.qcow2; then
    expect "is_read_only (-r)" true "$(field "$(uri "$S")" is_read_only)"
    out=$(qio -c 'write -P 0x33 0 4k' "$(uri "$S")")
    echo "$out" | grep -q 'Permission denied' && ok "qemu-io cannot open it for writing" || bad "qemu-io on -r: $out"
    # A client that sends the write anyway gets an error from the server.
    out=$(/usr/bin/python3 - "$(uri "$S")" <<'PY' 2>&1
import nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"\x33" * 4096, 0)
    print("write accepted")
except nbd.Error as e:
    print("write refused:", e.string)
h.shutdown()
PY
)
    [[ $out == "write refused:"* ]] && ok "$out" || bad "forced write on -r: $out"
    stop "$LAST_PID"
    [ "$(md5sum <img.qcow2)" = "$sum" ] && ok "the image is unchanged" || bad "-r changed the image"
else
    bad "-r: server did not start"
fi

echo "== -s: writes go to a temporary overlay"
mkdir -p tmp
sum=$(md5sum <img.qcow2)
TMPDIR=$WORK/tmp start_bg_nbd "$S" -t -s -f qcow2 img.qcow2 || bad "-s: server did not start"
if alive "$LAST_PID"; then
    expect "is_read_only (-s)" false "$(field "$(uri "$S")" is_read_only)"
    out=$(qio -c 'write -P 0x44 0 64k' -c 'read -P 0x44 0 64k' -c 'read -P 0x11 64k 64k' "$(uri "$S")")
    echo "$out" | grep -q 'wrote 65536/65536' && [ "$(echo "$out" | grep -c 'read 65536/65536')" = 2 ] &&
        ok "written data reads back, the rest is the image's" || bad "-s I/O: $out"
    [ -z "$(ls tmp)" ] && ok "no overlay file visible in TMPDIR while serving" || bad "overlay file: $(ls tmp)"
    stop "$LAST_PID"
    [ "$(md5sum <img.qcow2)" = "$sum" ] && ok "the image is unchanged" || bad "-s changed the image"
    [ -z "$(ls tmp)" ] && ok "nothing left in TMPDIR" || bad "left in TMPDIR: $(ls tmp)"
fi

echo "== -l: an internal snapshot, read-only"
qemu-img create -q -f qcow2 snap.qcow2 4M
qemu-io -f qcow2 -c 'write -P 0xaa 0 1M' snap.qcow2 >/dev/null
qemu-img snapshot -c sn1 snap.qcow2
qemu-io -f qcow2 -c 'write -P 0xbb 0 1M' snap.qcow2 >/dev/null
for arg in sn1 1 snapshot.name=sn1 snapshot.id=1 snapshot.id=1,snapshot.name=sn1; do
    if start_bg_nbd "$S" -t -l "$arg" snap.qcow2; then
        out=$(qio -r -c 'read -P 0xaa 0 1M' "$(uri "$S")")
        echo "$out" | grep -q 'read 1048576/1048576' && ok "-l $arg: the snapshot's data" || bad "-l $arg: $out"
        expect "-l $arg: is_read_only" true "$(field "$(uri "$S")" is_read_only)"
        stop "$LAST_PID"
    else
        bad "-l $arg: server did not start: $(tail -1 "$WORK/server.err")"
    fi
done
out=$(qemu-io -f qcow2 -c 'read -P 0xbb 0 1M' snap.qcow2 2>&1)
echo "$out" | grep -q 'read 1048576/1048576' && ok "the active layer is untouched" || bad "active layer: $out"

echo "== -o: an offset into the image"
qemu-img create -q -f raw off.raw 1M
qemu-io -f raw -c 'write -P 0x55 0 4k' -c 'write -P 0x66 4k 4k' off.raw >/dev/null
if start_bg_nbd "$S" -t -f raw -o 4096 off.raw; then
    expect "export-size (-o 4096)" $((1048576 - 4096)) "$(field "$(uri "$S")" export-size)"
    out=$(qio -c 'read -P 0x66 0 4k' "$(uri "$S")")
    echo "$out" | grep -q 'read 4096/4096' && ok "offset 0 is the image's 4096" || bad "-o read: $out"
    stop "$LAST_PID"
else
    bad "-o: server did not start"
fi

echo "== -B / -A: metadata contexts"
qemu-img create -q -f qcow2 bm.qcow2 4M
qemu-img bitmap --add bm.qcow2 b0
qemu-io -f qcow2 -c 'write -P 1 1M 64k' bm.qcow2 >/dev/null
if start_bg_nbd "$S" -t -B b0 -A bm.qcow2; then
    ctx=$(nbdinfo_json "$(uri "$S")" | /usr/bin/python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["exports"][0]["contexts"])))')
    expect "contexts" "base:allocation qemu:allocation-depth qemu:dirty-bitmap:b0" "$ctx"
    map=$(nbdinfo --map=qemu:dirty-bitmap:b0 "$(uri "$S")" 2>&1 | awk '{ print $1, $2, $3 }' | tr '\n' ';')
    expect "dirty map" "0 1048576 0;1048576 65536 1;1114112 3080192 0;" "$map"
    map=$(nbdinfo --map=qemu:allocation-depth "$(uri "$S")" 2>&1 | awk '{ print $1, $2, $3 }' | tr '\n' ';')
    expect "allocation-depth map" "0 1048576 0;1048576 65536 1;1114112 3080192 0;" "$map"
    stop "$LAST_PID"
else
    bad "-B/-A: server did not start: $(tail -1 "$WORK/server.err")"
fi

echo "== without -t: exits after the last client; a listing client does not count"
if start_bg_nbd "$S" -f raw img.raw; then
    pid=$LAST_PID
    qemu-nbd -L -k "$S" >/dev/null 2>&1
    sleep 0.3
    alive $pid && ok "still serving after a --list client" || bad "exited after a --list client"
    qio -c 'read 0 4k' "$(uri "$S")" >/dev/null
    if wait_dead $pid 50; then
        wait $pid
        st=$?
        expect "exit status after the last client" 0 $st
    else
        bad "still running after its client disconnected"
    fi
else
    bad "non-persistent: server did not start"
fi
if start_bg_nbd "$S" -t -f raw img.raw; then
    qio -c 'read 0 4k' "$(uri "$S")" >/dev/null
    sleep 0.3
    alive "$LAST_PID" && ok "-t: still serving after the client" || bad "-t: exited after the client"
    stop "$LAST_PID"
fi

echo "== --fork, --pid-file"
"$BLOCKGRAPH" nbd --fork --pid-file "$WORK/nbd.pid" -t -k "$S" -f raw img.raw 2>"$WORK/fork.err"
st=$?
expect "--fork: parent's status" 0 $st
[ -S "$S" ] && ok "the socket exists when the parent returns" || bad "no socket after --fork returned"
pid=$(cat "$WORK/nbd.pid" 2>/dev/null)
if [ -n "$pid" ] && alive "$pid"; then
    PIDS+=("$pid")
    ok "the pid file names the running server ($pid)"
    out=$(qio -c 'read -P 0x11 0 4k' "$(uri "$S")")
    echo "$out" | grep -q 'read 4096/4096' && ok "the forked server serves" || bad "forked server: $out"
    kill -TERM "$pid"
    wait_dead "$pid" && ok "SIGTERM stops it" || bad "still alive after SIGTERM"
    [ -e "$WORK/nbd.pid" ] && bad "pid file left behind" || ok "pid file removed"
else
    bad "--pid-file: '$pid' is not a running process: $(cat "$WORK/fork.err")"
fi

echo "== write-zeroes and trim land in the image as with qemu-nbd (the oracle)"
# Through each server, with the default --discard (ignore) and with unmap: WRITE_ZEROES with
# NO_HOLE (qemu-io write -z), without it (write -z -u) and TRIM on data. The
# image afterwards: its map, the map of its file (qcow2), and the space the
# file occupies in 256 KiB units (a zeroed-in-place range keeps its blocks
# although SEEK_HOLE may call it a hole, so the maps alone cannot tell).
zero_trim_result() { # SERVER(qemu|bg) FMT [SERVER-ARGS...]
    local srv=$1 fmt=$2
    shift 2
    rm -f zt.$fmt
    qemu-img create -q -f $fmt zt.$fmt 4M
    qemu-io -f $fmt -c 'write -q -P 0x77 0 3M' zt.$fmt
    local spec=(-f $fmt "$@" zt.$fmt)
    # An inline file child that names its own discard=ignore keeps it.
    [ "${1:-}" = --image-opts ] && spec=(--image-opts "driver=$fmt,file.driver=file,file.filename=zt.$fmt,file.discard=ignore")
    if [ $srv = qemu ]; then start_qemu_nbd "$S" -t "${spec[@]}"; else start_bg_nbd "$S" -t "${spec[@]}"; fi ||
        { echo "$srv: server did not start"; return; }
    qio -c 'write -q -z 256k 256k' -c 'write -q -z -u 1M 256k' -c 'discard -q 2M 256k' "$(uri "$S")"
    stop "$LAST_PID"
    qemu-img map --output=json -f $fmt zt.$fmt
    [ $fmt = qcow2 ] && qemu-img map --output=json -f raw zt.$fmt
    echo "allocated: $((($(stat -c %b zt.$fmt) * 512 + 131072) / 262144)) x 256 KiB"
}
for fmt in raw qcow2; do
    for d in default unmap file.discard=ignore; do
        args=()
        [ $d = unmap ] && args=(--discard=unmap)
        [ $d = file.discard=ignore ] && args=(--image-opts)
        same_text "$fmt, discard $d: the image after write -z, write -z -u, discard" \
            "$(zero_trim_result qemu $fmt "${args[@]}")" "$(zero_trim_result bg $fmt "${args[@]}")"
    done
done

echo "== TCP: -b / -p"
port=$(free_port)
"$BLOCKGRAPH" nbd -t -b 127.0.0.1 -p "$port" -f raw img.raw 2>>"$WORK/server.err" &
pid=$!
PIDS+=("$pid")
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
expect "size over TCP" 8388608 "$(nbdinfo --size "nbd://127.0.0.1:$port/" 2>&1)"
stop $pid

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"
