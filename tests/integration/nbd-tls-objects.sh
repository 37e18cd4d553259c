#!/bin/bash
# tests/integration/nbd-tls-objects.sh -- the TLS objects (tls-creds-x509,
# tls-creds-psk, authz-simple) of --object and QMP object-add/object-del,
# judged by qemu-storage-daemon, qemu-img and qemu-io: the same calls get
# the same results and, where QEMU has a text, the same text.
set -u
. "$(dirname "$0")/lib-tls.sh"
for tool in qemu-storage-daemon qemu-io; do
    command -v $tool >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done

make_x509 x
make_psk p alice
mkdir onlyca && cp x/ca-cert.pem onlyca/

# ---- command lines: our text equals QEMU's after its "PROG: [--object SPEC: ]"
# daemon_msg BIN SPEC: what the daemon says and its status; a daemon that
# accepts the object gets "quit" on its stdio monitor (status 0, no line).
daemon_msg() {
    printf '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n' |
        timeout 10 "$@" --chardev stdio,id=m --monitor m 2>&1 | grep -v '^{' |
        sed -e 's|^qemu-storage-daemon: --object [^ ]*: ||' -e 's|^blockgraph daemon: ||'
    echo "status ${PIPESTATUS[1]}"
}
# cmdline NAME SPEC: blockgraph daemon / img / io against QSD / qemu-img / qemu-io
cmdline() {
    local name=$1 spec=$2 ours theirs
    theirs=$(daemon_msg qemu-storage-daemon --object "$spec")
    ours=$(daemon_msg "$BLOCKGRAPH" daemon --object "$spec")
    [ "$ours" = "$theirs" ] && ok "daemon: $name" || bad "daemon: $name: '$ours', QSD '$theirs'"
    theirs=$(qemu-img info --object "$spec" nonexistent.img 2>&1 | head -1 | sed 's|^qemu-img: ||')
    ours=$("$BLOCKGRAPH" img info --object "$spec" nonexistent.img 2>&1 | head -1 | sed 's|^blockgraph img: ||')
    # An accepted object: both go on to the image (whose text differs in
    # the repetition of the name).
    case "$theirs" in "Could not open 'nonexistent.img'"*) theirs="Could not open 'nonexistent.img'";; esac
    case "$ours" in "Could not open 'nonexistent.img'"*) ours="Could not open 'nonexistent.img'";; esac
    [ "$ours" = "$theirs" ] && ok "img: $name" || bad "img: $name: '$ours', qemu-img '$theirs'"
    theirs=$(qemu-io --object "$spec" -c quit nonexistent.img 2>&1 | head -1 | sed 's|^qemu-io: ||')
    ours=$("$BLOCKGRAPH" io --object "$spec" -c quit nonexistent.img 2>&1 | head -1 | sed 's|^blockgraph io: ||')
    [ "$ours" = "$theirs" ] && ok "io: $name" || bad "io: $name: '$ours', qemu-io '$theirs'"
}
echo "command lines"
cmdline "no such dir" "tls-creds-x509,id=t,dir=$WORK/none,endpoint=server"
cmdline "server without its certificate" "tls-creds-x509,id=t,dir=$WORK/onlyca,endpoint=server"
cmdline "missing dir" "tls-creds-x509,id=t,endpoint=server"
cmdline "psk server with a username" "tls-creds-psk,id=t,dir=$WORK/p,endpoint=server,username=u"
cmdline "psk client, unknown user" "tls-creds-psk,id=t,dir=$WORK/p,username=bob"
cmdline "psk client, no keys.psk" "tls-creds-psk,id=t,dir=$WORK/x"
cmdline "x509 server" "tls-creds-x509,id=t,dir=$WORK/x,endpoint=server"
cmdline "x509 client, CA only (client by default)" "tls-creds-x509,id=t,dir=$WORK/onlyca"
cmdline "psk client" "tls-creds-psk,id=t,dir=$WORK/p,username=alice"
cmdline "authz-simple" "authz-simple,id=a,identity=CN=x"

# Parse errors are ours in wording (as for iothread objects) but fail alike.
for spec in "tls-creds-x509,id=t,dir=$WORK/x,endpoint=sideways" "tls-creds-x509,id=t,dir=$WORK/x,bogus=1" \
            "authz-simple,id=a" "tls-creds-x509,id=t,dir=$WORK/x,verify-peer=maybe"; do
    timeout 10 "$BLOCKGRAPH" daemon --object "$spec" --chardev stdio,id=m --monitor m >out 2>&1 </dev/null
    rc=$?
    [ $rc = 1 ] && [ "$(wc -l <out)" = 1 ] && ok "daemon rejects $spec" || bad "daemon $spec: exit $rc, '$(cat out)'"
done
"$BLOCKGRAPH" img info --object iothread,id=io0 nonexistent.img >out 2>&1
[ "$(cat out)" = "blockgraph img: invalid object type: iothread" ] && ok "img: iothread refused like qemu-img" \
    || bad "img: iothread: '$(cat out)'"

# ---- QMP: one session against each daemon, the replies compared
echo "QMP object-add / object-del"
cat >qmp-objects.py <<'PY'
import json, os, socket, subprocess, sys, time
work = sys.argv[1]
def session(argv, sock):
    p = subprocess.Popen(argv + ["--chardev", "socket,id=m,path=%s,server=on,wait=off" % sock,
                                 "--monitor", "m"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        f = s.makefile("rw")
        f.readline()
        def q(cmd, **a):
            f.write(json.dumps({"execute": cmd, "arguments": a}) + "\n")
            f.flush()
            while True:
                r = json.loads(f.readline())
                if "event" not in r:
                    return r.get("error", {}).get("desc", "ok")
        q("qmp_capabilities")
        x, p_, none = work + "/x", work + "/p", work + "/none"
        calls = [
            ("object-add", {"qom-type": "tls-creds-x509", "id": "t", "dir": x, "endpoint": "server"}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "t", "dir": x, "endpoint": "server"}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "u", "dir": x, "endpoint": "foo"}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "u", "dir": none}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "u"}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "u", "dir": x, "verify-peer": "x"}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "u", "dir": x, "verify-peer": False}),
            ("object-add", {"qom-type": "tls-creds-psk", "id": "v", "dir": p_, "endpoint": "server",
                            "username": "x"}),
            ("object-add", {"qom-type": "tls-creds-psk", "id": "v", "dir": p_, "username": "bob"}),
            ("object-add", {"qom-type": "tls-creds-psk", "id": "v", "dir": p_, "endpoint": "server"}),
            ("object-add", {"qom-type": "authz-simple", "id": "a", "identity": "CN=x"}),
            ("object-add", {"qom-type": "authz-simple", "id": "b"}),
            ("object-add", {"qom-type": "iothread", "id": "a"}),
            ("object-add", {"qom-type": "iothread", "id": "io0"}),
            ("object-add", {"qom-type": "authz-simple", "id": "io0", "identity": "y"}),
            ("object-del", {"id": "t"}),
            ("object-del", {"id": "t"}),
            ("object-add", {"qom-type": "tls-creds-x509", "id": "t", "dir": x, "endpoint": "client"}),
            ("object-del", {"id": "a"}),
            ("object-del", {"id": "v"}),
            ("object-del", {"id": "io0"}),
        ]
        return ["%s %s: %s" % (c, json.dumps(a, sort_keys=True).replace(work, "W"), q(c, **a)) for c, a in calls]
    finally:
        p.terminate()
        p.wait()
ours = session([os.environ["BLOCKGRAPH"], "daemon"], work + "/bg.sock")
theirs = session(["qemu-storage-daemon"], work + "/qsd.sock")
bad = 0
for o, t in zip(ours, theirs):
    if o == t:
        print("  ok    " + o)
    else:
        print("  FAIL  " + o + "\n        QSD: " + t)
        bad += 1
sys.exit(1 if bad else 0)
PY
BLOCKGRAPH=$BLOCKGRAPH timeout 60 /usr/bin/python3 qmp-objects.py "$WORK" || failures=$((failures + 1))

if [ $failures -ne 0 ]; then
    echo "nbd-tls-objects: $failures failed"
    exit 1
fi
echo "nbd-tls-objects: passed"
