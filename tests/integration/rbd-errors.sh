#!/bin/bash
# tests/integration/rbd-errors.sh -- the rbd driver's errors on a real
# cluster (lib-rbd.sh), judged by QEMU's rbd driver: a missing pool, image
# or snapshot, a wrong key or user, an unknown conf key, malformed names,
# a missing secret, an existing image at create: one line on stderr, exit 1,
# the same text as qemu-io / qemu-img after the program name. Where QEMU's
# text comes from its generic option parser (a missing JSON member), ours
# is the project's generic text: one line naming the member; an empty pool
# or image name, which QEMU hands to librados ("error opening pool : No
# such file or directory"), is refused as such.
# An unreachable monitor (a port nobody listens on) with
# :client_mount_timeout=3 fails with "error connecting: Connection timed
# out" within 3..12 s, as QEMU does (run side by side).
# (The cluster-full case needs a cluster of its own: rbd-faults.sh.)
set -euo pipefail
RBD_TEST_BUDGET=${RBD_TEST_BUDGET:-90}
source "$(dirname "$0")/lib-rbd.sh"

bg() { timeout -k 5 60 "$B" "$@"; }
noconf() { (unset CEPH_CONF; "$@"); }
IMG=$RBD_PFX-e1
rbdc create -s 8M "rbd/$IMG"

# err DESC NAME [PREFIX...]: our io and img info on NAME fail with one
# line equal to qemu-io's / qemu-img's (PREFIX: a command to run them under).
err() {
    local d=$1 name=$2 rc
    shift 2
    for tool in io img; do
        if [ $tool = io ]; then
            rc=0; "$@" timeout -k 5 60 "$B" io -f raw -c 'read 0 512' "$name" >/dev/null 2>ours.err || rc=$?
            "$@" timeout -k 5 60 qemu-io -f raw -c 'read 0 512' "$name" >/dev/null 2>theirs.err || true
        else
            rc=0; "$@" timeout -k 5 60 "$B" img info -f raw "$name" >/dev/null 2>ours.err || rc=$?
            "$@" timeout -k 5 60 qemu-img info -f raw "$name" >/dev/null 2>theirs.err || true
        fi
        if [ $rc != 1 ]; then
            bad "$d ($tool): exit $rc, want 1: $(cat ours.err)"
            continue
        fi
        same_msg "$d ($tool)" ours.err theirs.err
    done
}

echo "names and options QEMU rejects with its own text"
err "missing pool" "rbd:$RBD_PFX-nopool/$IMG"
err "missing image" "rbd:rbd/$RBD_PFX-nosuch"
err "missing snapshot" "rbd:rbd/$IMG@nosnap"
err "missing namespace" "rbd:rbd/$RBD_PFX-nons/$IMG"
err "wrong user" "rbd:rbd/$IMG:id=$RBD_PFX-nosuchuser"
WRONG=$(ceph-authtool --gen-print-key 2>/dev/null || python3 -c 'import base64, os, struct, time
print(base64.b64encode(struct.pack("<hIIh", 1, int(time.time()), 0, 16) + os.urandom(16)).decode())')
err "wrong key" "rbd:rbd/$IMG:key=$WRONG"
err "unknown conf key" "rbd:rbd/$IMG:no_such_option=1"
err "conf key without a value" "rbd:rbd/$IMG:conf"
err "conf file missing" "rbd:rbd/$IMG:conf=$WORK/no-such.conf"
err "no pool" "rbd:"
err "no image" "rbd:rbd"
err "missing secret object" "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"rbd\",\"pool\":\"rbd\",\"image\":\"$IMG\",\"key-secret\":\"nosec\"}}"

echo "empty names (QEMU passes them to librados; we say what is wrong)"
for c in "pool|rbd:/$IMG|Pool name is required" "image|rbd:rbd/|Image name is required"; do
    IFS='|' read -r what name want <<<"$c"
    rc=0
    bg io -f raw -c 'read 0 512' "$name" >/dev/null 2>ours.err || rc=$?
    if [ $rc = 1 ]; then one_line "empty $what name" ours.err "$want"; else bad "empty $what name: exit $rc"; fi
done

echo "missing JSON members (generic parser text)"
for m in image pool port; do
    case $m in
        image) j='{"driver":"rbd","pool":"rbd"}' ;;
        pool) j="{\"driver\":\"rbd\",\"image\":\"$IMG\"}" ;;
        port) j="{\"driver\":\"rbd\",\"pool\":\"rbd\",\"image\":\"$IMG\",\"server\":[{\"host\":\"127.0.0.1\"}]}" ;;
    esac
    rc=0
    bg io -c 'read 0 512' "json:$j" >/dev/null 2>ours.err || rc=$?
    if [ $rc = 1 ]; then one_line "JSON without $m" ours.err "'$m'"; else bad "JSON without $m: exit $rc"; fi
done

echo "create"
rc=0
bg img create -q -f raw "rbd:rbd/$IMG" 1M 2>ours.err || rc=$?
qemu-img create -q -f raw "rbd:rbd/$IMG" 1M 2>theirs.err || true
if [ $rc = 1 ]; then same_msg "create over an existing image" ours.err theirs.err; else bad "create over an existing image: exit $rc"; fi
if [ "$(rbd_size "$IMG")" = 8388608 ]; then ok "the existing image is untouched"; else bad "the existing image changed size"; fi
rc=0
bg img create -q -f raw "rbd:$RBD_PFX-nopool/x" 1M 2>ours.err || rc=$?
qemu-img create -q -f raw "rbd:$RBD_PFX-nopool/x" 1M 2>theirs.err || true
if [ $rc = 1 ]; then same_msg "create in a missing pool" ours.err theirs.err; else bad "create in a missing pool: exit $rc"; fi

echo "unreachable monitor (client_mount_timeout=3)"
KEY=$(admin_key)
PORT=$(free_port)
DEAD="rbd:rbd/$IMG:mon_host=127.0.0.1\\:$PORT:key=$KEY:client_mount_timeout=3"
noconf timeout -k 5 60 qemu-io -f raw -c 'read 0 512' "$DEAD" >/dev/null 2>dead-theirs.err &
qpid=$!
t0=$(date +%s%N)
rc=0
noconf bg io -f raw -c 'read 0 512' "$DEAD" >/dev/null 2>dead-ours.err || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
wait $qpid || true
if [ $rc = 1 ] && [ $ms -ge 2500 ] && [ $ms -le 12000 ]; then
    ok "io failed after $ms ms (bound 3 s)"
else
    bad "io on a dead monitor: exit $rc after $ms ms, want 1 after 3..12 s"
fi
same_msg "dead monitor" dead-ours.err dead-theirs.err
one_line "dead monitor message" dead-ours.err "error connecting: Connection timed out"
# The same through a conf file that sets the timeout (the daemon's
# --blockdev form): the daemon exits 1 with the same line.
sed -e "s/^\([[:space:]]*mon[ _]host[[:space:]]*=\).*/\1 127.0.0.1:$PORT/" "$CEPH_CONF" >dead.conf
printf '[client]\nclient mount timeout = 2\n' >>dead.conf
t0=$(date +%s%N)
rc=0
touch mp
noconf bg daemon --blockdev "driver=rbd,node-name=r,pool=rbd,image=$IMG,conf=$WORK/dead.conf" \
    --export "type=fuse,id=e,node-name=r,mountpoint=$WORK/mp" >/dev/null 2>dead-daemon.err || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
if [ $rc = 1 ] && [ $ms -ge 1500 ] && [ $ms -le 12000 ]; then
    ok "daemon (conf with client mount timeout = 2) failed after $ms ms"
else
    bad "daemon on a dead monitor: exit $rc after $ms ms, want 1 after 2..12 s"
fi
one_line "daemon on a dead monitor" dead-daemon.err "error connecting: Connection timed out"

finish
