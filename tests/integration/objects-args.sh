#!/bin/bash
# tests/integration/objects-args.sh -- --object as QEMU 7.2's tools take it
# (qapi/user-object.h): every type's schema and completion errors, "help",
# secrets (data, file, base64, AES-256-CBC encrypted with another secret),
# throttle-group limits, duplicate ids; judged by qemu-img, qemu-io and
# qemu-storage-daemon: the same argument gets the same text after the
# program name (and an accepted object lets both go on alike). Then an
# authz-list as the tls-authz of an NBD server, judged by qemu-nbd with the
# same objects: the same x509 client gets in or not.
set -u
. "$(dirname "$0")/lib-tls.sh"
for tool in qemu-storage-daemon qemu-io openssl; do
    command -v $tool >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done

qemu-img create -q -f qcow2 img.qcow2 1M || { echo "FAIL: qemu-img create"; exit 1; }

# daemon_msg BIN ARGS...: the daemon's first non-QMP line (a daemon that
# accepted its objects gets "quit" on its stdio monitor: no line).
daemon_msg() {
    printf '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n' |
        timeout 10 "$@" --chardev stdio,id=m --monitor m 2>&1 | grep -v '^{' | head -2 |
        sed -e 's|^qemu-storage-daemon: --object [^ ]*: ||' -e 's|^blockgraph daemon: ||'
}
# same NAME OBJECT-ARGS...: img info, io and the daemon against QEMU's.
same() {
    local name=$1 ours theirs
    shift
    theirs=$(qemu-img info "$@" img.qcow2 2>&1 | sed 's|^qemu-img: ||')
    ours=$("$BLOCKGRAPH" img info "$@" img.qcow2 2>&1 | sed 's|^blockgraph img: ||')
    [ "$ours" = "$theirs" ] && ok "img: $name: $(echo "$ours" | head -1)" ||
        bad "img: $name: '$ours', qemu-img '$theirs'"
    # The first line only: the next has timings.
    theirs=$(qemu-io "$@" -c 'read 0 512' img.qcow2 2>&1 | head -1 | sed 's|^qemu-io: ||')
    ours=$("$BLOCKGRAPH" io "$@" -c 'read 0 512' img.qcow2 2>&1 | head -1 | sed 's|^blockgraph io: ||')
    [ "$ours" = "$theirs" ] && ok "io: $name" || bad "io: $name: '$ours', qemu-io '$theirs'"
}
same_daemon() {
    local name=$1 ours theirs
    shift
    theirs=$(daemon_msg qemu-storage-daemon "$@")
    ours=$(daemon_msg "$BLOCKGRAPH" daemon "$@")
    [ "$ours" = "$theirs" ] && ok "daemon: $name: ${ours:-accepted}" || bad "daemon: $name: '$ours', QSD '$theirs'"
}

echo "== help"
for spec in help '?' secret,help 'secret,id=s,?' throttle-group,help authz-list,help tls-creds-anon,help \
            tls-cipher-suites,help secret_keyring,help tls-creds-x509,help nope,help; do
    want=$(qemu-img info --object "$spec" img.qcow2 2>&1; echo "status $?")
    got=$("$BLOCKGRAPH" img info --object "$spec" img.qcow2 2>&1; echo "status $?")
    [ "$got" = "$want" ] && ok "img --object $spec" || bad "img --object $spec: '$got', qemu-img '$want'"
done
want=$(qemu-storage-daemon --object help 2>&1)
got=$("$BLOCKGRAPH" daemon --object help 2>&1)
[ "$got" = "$want" ] && ok "daemon --object help" || bad "daemon --object help: '$got', QSD '$want'"

echo "== schema and completion errors"
printf 'file secret' >secret.txt
bad_specs=(
    'foo,id=x' 'id=s' 'secret,data=abc' 'secret,id=1s,data=a' 'secret,id=s' 'secret,id=s,data=a,bogus=1'
    'secret,id=s,data=a,format=hex' 'secret,id=s,file=/nonexistent' "secret,id=s,file=$WORK"
    'secret,id=s,data=a,file=secret.txt' 'secret,id=s,data=a!b,format=base64' 'secret,id=s,data=a,keyid=s'
    'secret,id=s,data=a,keyid=nokey,iv=abc' 'secret_keyring,id=k' 'secret_keyring,id=k,serial=x'
    'secret_keyring,id=k,serial=1' 'tls-creds-anon,id=t,endpoint=sideways' 'tls-creds-anon,id=t,verify-peer=maybe'
    'tls-cipher-suites,id=c' 'authz-list,id=a,policy=maybe' 'authz-list,id=a,rules=x'
    'authz-list,id=a,rules.0.policy=allow' 'authz-list,id=a,rules.0.match=x,rules.0.policy=allow,rules.0.format=re'
    'authz-list-file,id=a,filename=x' 'authz-simple,id=a' 'tls-creds-x509,id=x,bogus=1'
    'throttle-group,x-iops-total=1' 'throttle-group,id=t,x-iops-total=abc' 'throttle-group,id=t,x-iops-total=-1'
    'throttle-group,id=t,x-bps-total=1,x-bps-read=1' 'throttle-group,id=t,limits.iops-total=5,limits.iops-read=3'
    'throttle-group,id=t,x-iops-total-max=5' 'throttle-group,id=t,x-iops-total=5,x-iops-total-max=1'
    'throttle-group,id=t,x-iops-total=5,x-iops-total-max=10,x-iops-total-max-length=0'
    'throttle-group,id=t,x-iops-total=5,x-iops-total-max-length=2' 'throttle-group,id=t,x-bps-total=2000000000000000000'
    'throttle-group,id=t,x-iops-total=5,x-iops-total-max=1000000000000000,x-iops-total-max-length=3'
    'throttle-group,id=t,x-iops-size=5' 'throttle-group,id=t,x-iops-total-max-length=4294967296'
    'throttle-group,id=t,limits.iops-total=-1' 'throttle-group,id=t,limits.bogus=1'
    'throttle-group,id=t,x-iops-total=0x10,x-iops-total-max=010' '{"qom-type":"secret","id":"s","data":1}'
    '{"qom-type":"nope","id":"s"}' '{"qom-type":"secret","id":"s","data":"a","x":1}'
)
for spec in "${bad_specs[@]}"; do
    same "$spec" --object "$spec"
done
for spec in 'foo,id=x' 'secret,id=s' 'secret,id=s,data=a,bogus=1' 'throttle-group,id=t,x-iops-total=-1' \
            'secret,id=s,data=a,keyid=nokey,iv=abc'; do
    same_daemon "$spec" --object "$spec"
done
same "duplicate id" --object secret,id=s,data=a --object throttle-group,id=s
same "duplicate id (TLS object)" --object secret,id=s,data=a --object tls-creds-anon,id=s
same "key of another type" --object tls-creds-anon,id=k --object secret,id=s,data=a,keyid=k,iv=abc
same_daemon "duplicate id" --object secret,id=s,data=a --object authz-list,id=s

echo "== accepted objects"
good_specs=(
    'secret,id=s,data=abc' 'secret,id=s,data=YWJj,format=base64' 'secret,id=s,file=secret.txt'
    'secret,id=s,data=abc,iv=ignored-without-keyid' 'tls-creds-anon,id=t' 'tls-creds-anon,id=t,endpoint=server'
    'tls-cipher-suites,id=c,priority=NORMAL' 'authz-list,id=a'
    'authz-list,id=a,policy=allow,rules.0.match=x*,rules.0.policy=deny,rules.0.format=glob'
    'throttle-group,id=t' 'throttle-group,id=t,x-iops-total=100,x-iops-total-max=200,x-iops-total-max-length=3'
    'throttle-group,id=t,limits.bps-read=1000,limits.bps-write=2000'
)
for spec in "${good_specs[@]}"; do
    same "$spec" --object "$spec"
done
same_daemon "secret, authz-list, throttle-group" --object secret,id=s,data=abc --object authz-list,id=a \
    --object throttle-group,id=t,x-iops-total=10

echo "== QMP object-add / object-del"
qmp_replies() { # BINARY...: the replies to the commands below, without the greeting and events
    printf '%s\n' '{"execute":"qmp_capabilities"}' \
        '{"execute":"object-add","arguments":{"qom-type":"secret","id":"s","data":"abc"}}' \
        '{"execute":"object-add","arguments":{"qom-type":"authz-list","id":"s"}}' \
        '{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"t","x-iops-total":-1}}' \
        '{"execute":"object-add","arguments":{"qom-type":"throttle-group","id":"t","limits":{"iops-total":5}}}' \
        '{"execute":"object-add","arguments":{"qom-type":"secret","id":"1t","data":"a"}}' \
        '{"execute":"object-add","arguments":{"qom-type":"secret","id":"k","data":"a","keyid":"s","iv":"abc"}}' \
        '{"execute":"object-add","arguments":{"qom-type":"tls-cipher-suites","id":"c"}}' \
        '{"execute":"object-add","arguments":{"qom-type":"nope","id":"n"}}' \
        '{"execute":"object-del","arguments":{"id":"s"}}' '{"execute":"object-del","arguments":{"id":"t"}}' \
        '{"execute":"object-del","arguments":{"id":"s"}}' '{"execute":"quit"}' |
        timeout 10 "$@" --chardev stdio,id=m --monitor m 2>&1 | tail -n +2 | grep -v '"event"'
}
want=$(qmp_replies qemu-storage-daemon)
got=$(qmp_replies "$BLOCKGRAPH" daemon)
[ "$got" = "$want" ] && ok "QMP replies equal QSD's ($(echo "$got" | wc -l) replies)" ||
    bad "QMP replies: '$got', QSD '$want'"

echo "== encrypted secrets (openssl makes the ciphertext)"
KEY=$(head -c 32 /dev/urandom | base64 -w0)
IV=$(head -c 16 /dev/urandom | base64 -w0)
CT=$(printf 'the secret' | openssl enc -aes-256-cbc -K "$(echo "$KEY" | base64 -d | od -An -tx1 | tr -d ' \n')" \
     -iv "$(echo "$IV" | base64 -d | od -An -tx1 | tr -d ' \n')" | base64 -w0)
echo "$CT" | base64 -d >ct.bin
K=(--object "secret,id=k,data=$KEY,format=base64")
same "base64 ciphertext" "${K[@]}" --object "secret,id=s,data=$CT,format=base64,keyid=k,iv=$IV"
same "raw ciphertext from a file" "${K[@]}" --object "secret,id=s,file=ct.bin,keyid=k,iv=$IV"
same "ciphertext not a block multiple" "${K[@]}" --object "secret,id=s,data=abc,keyid=k,iv=$IV"
same "no iv" "${K[@]}" --object "secret,id=s,data=$CT,format=base64,keyid=k"
same "short iv" "${K[@]}" --object "secret,id=s,data=$CT,format=base64,keyid=k,iv=YWJj"
same "short key" --object secret,id=k,data=abc --object "secret,id=s,data=$CT,format=base64,keyid=k,iv=$IV"
same "wrong key (padding)" --object secret,id=k,data=12345678901234567890123456789012 \
    --object "secret,id=s,data=$CT,format=base64,keyid=k,iv=$IV"

echo "== secret_keyring (keys added to the user keyring with the keyctl syscalls)"
# keyctl OP ARGS: add NAME PAYLOAD-FILE (prints the serial, readable by the
# user) | revoke SERIAL.
keyctl_py() {
    python3 - "$@" <<'PY'
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "add":
    data = open(sys.argv[3], "rb").read()
    k = libc.syscall(248, b"user", sys.argv[2].encode(), data, len(data), ctypes.c_int(-4))   # add_key, user keyring
    if k < 0:
        sys.exit(1)
    libc.syscall(250, 5, k, ctypes.c_uint(0x3f3f3f3f))   # KEYCTL_SETPERM: the user may read it
    print(k)
else:
    libc.syscall(250, 3, int(sys.argv[2]))   # KEYCTL_REVOKE
PY
}
printf 'keyring secret' >plain.bin
if SER=$(keyctl_py add "bg-objects-$$" plain.bin) && CSER=$(keyctl_py add "bg-objects-ct-$$" ct.bin); then
    same "keyring secret" --object "secret_keyring,id=s,serial=$SER"
    same "keyring ciphertext" "${K[@]}" --object "secret_keyring,id=s,serial=$CSER,keyid=k,iv=$IV"
    same "keyring ciphertext, wrong key" --object secret,id=k,data=12345678901234567890123456789012 \
        --object "secret_keyring,id=s,serial=$CSER,keyid=k,iv=$IV"
    keyctl_py revoke "$SER"
    keyctl_py revoke "$CSER"
    same "revoked key" --object "secret_keyring,id=s,serial=$SER"
else
    bad "cannot add a key to the user keyring here (add_key failed)"
fi

echo "== authz-list as an NBD server's tls-authz (as qemu-nbd)"
# The client certificate's DN is "O=Test,CN=Test Client" (keyval doubles
# commas). Each list: the verdict of qemu-nbd and ours for that client.
make_x509 x509
S=$WORK/nbd.sock
DN='O=Test,,CN=Test Client'
# verdict AUTHZ SERVER-BINARY...: "in" if the client reads the export
verdict() {
    local authz=$1
    shift
    rm -f "$S"
    start_bg srv "$@" -t -k "$S" --object "tls-creds-x509,id=tls0,dir=$WORK/x509,endpoint=server" \
        --tls-creds tls0 --object "$authz" --tls-authz auth0 -x ex img.qcow2
    if ! wait_socket "$S"; then
        echo "no server: $(head -1 srv.log)"
    elif nbdinfo --size "nbds+unix:///ex?socket=$S&tls-certificates=$WORK/x509" >/dev/null 2>&1; then
        echo in
    else
        echo out
    fi
    stop_bg "$LAST_PID"
}
for authz in "authz-list,id=auth0,policy=deny,rules.0.match=$DN,rules.0.policy=allow" \
             "authz-list,id=auth0,policy=allow,rules.0.match=$DN,rules.0.policy=deny" \
             "authz-list,id=auth0,policy=deny,rules.0.match=O=Test*,rules.0.policy=allow,rules.0.format=glob" \
             "authz-list,id=auth0,policy=allow,rules.0.match=*Other*,rules.0.policy=deny,rules.0.format=glob" \
             "authz-list,id=auth0,policy=deny,rules.0.match=*Client,rules.0.policy=deny,rules.0.format=glob,rules.1.match=$DN,rules.1.policy=allow" \
             "authz-list,id=auth0" "authz-list,id=auth0,policy=allow"; do
    want=$(verdict "$authz" qemu-nbd)
    got=$(verdict "$authz" "$BLOCKGRAPH" nbd)
    [ "$got" = "$want" ] && ok "$authz: $got" || bad "$authz: '$got', qemu-nbd '$want'"
done

if [ $failures -ne 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS"
