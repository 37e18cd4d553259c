# tests/integration/lib-tls.sh -- the prologue shared by the nbd-tls*.sh
# tests. Sourced, not run: deliberately not executable, so check-integration
# lists it as ignored. Source it right after "set -u":
#   . "$(dirname "$0")/lib-tls.sh"
#
# Provides:
#   BLOCKGRAPH        the binary, as an absolute path (FAIL, exit 1, if it is
#                     not an executable); skips (77) without qemu-img,
#                     qemu-nbd, nbdinfo, certtool or psktool
#   WORK              a temporary directory named after the script, removed
#                     on exit; the test runs in it
#   failures          number of failed checks; ok/bad DESC print and count
#   make_x509 DIR     a CA and its server (localhost, 127.0.0.1) and client
#                     ("CN=Test Client,O=Test") certificates in DIR, under
#                     QEMU's file names; also DIR/ca-key.pem
#   make_x509_other DIR  the same with another CA ("Other CA", client CN
#                     "Other Client"): certificates the first CA does not sign
#   make_psk DIR USER...  DIR/keys.psk with a fresh key per USER
#   free_port         a TCP port nobody listens on now
#   start_bg NAME CMD...  runs CMD in the background (stdout+stderr to
#                     NAME.log), remembers its pid for the trap; sets LAST_PID
#   stop_bg PID       SIGTERM, then SIGKILL after 5 s
#   wait_port PORT    something accepts on 127.0.0.1:PORT within 10 s
#   wait_socket PATH  PATH is a unix socket within 10 s
#
# Cleanup: an EXIT trap (INT/TERM exit 1 into it) kills every process that
# start_bg started (SIGTERM, then SIGKILL) and removes WORK.

BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
if [ ! -x "$BLOCKGRAPH" ]; then
    echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
    exit 1
fi
BLOCKGRAPH=$(cd "$(dirname "$BLOCKGRAPH")" && pwd -P)/$(basename "$BLOCKGRAPH")
for tool in qemu-img qemu-nbd nbdinfo certtool psktool; do
    if ! command -v $tool >/dev/null; then
        echo "SKIP: $tool not installed (qemu-utils, libnbd-bin, gnutls-bin)"
        exit 77
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-$(basename "$0" .sh).XXXXXX")
WORK=$(cd "$WORK" && pwd -P)
BG_PIDS=()
failures=0

ok() { echo "  ok    $*"; }
bad() { echo "  FAIL  $*"; failures=$((failures + 1)); }

stop_bg() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
tls_cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do stop_bg "$pid"; done
    cd /
    rm -rf "$WORK"
}
trap tls_cleanup EXIT
trap 'exit 1' INT TERM
cd "$WORK" || exit 1

start_bg() {
    local name=$1
    shift
    "$@" >"$name.log" 2>&1 &
    LAST_PID=$!
    BG_PIDS+=("$LAST_PID")
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        /usr/bin/python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1).close()" \
            2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
wait_socket() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    return 1
}

# _mk_ca DIR CN / _mk_cert DIR server|client CN
_mk_ca() {
    printf 'cn = "%s"\nca\ncert_signing_key\nexpiration_days = 2\n' "$2" >"$1/ca.info"
    certtool --generate-privkey --key-type=ecdsa >"$1/ca-key.pem" 2>/dev/null &&
        certtool --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" \
            --outfile "$1/ca-cert.pem" 2>/dev/null
}
_mk_cert() {
    {
        printf 'organization = Test\ncn = "%s"\nexpiration_days = 2\nencryption_key\nsigning_key\n' "$3"
        if [ "$2" = server ]; then
            printf 'dns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n'
        else
            printf 'tls_www_client\n'
        fi
    } >"$1/$2.info"
    certtool --generate-privkey --key-type=ecdsa >"$1/$2-key.pem" 2>/dev/null &&
        certtool --generate-certificate --load-ca-certificate "$1/ca-cert.pem" \
            --load-ca-privkey "$1/ca-key.pem" --load-privkey "$1/$2-key.pem" \
            --template "$1/$2.info" --outfile "$1/$2-cert.pem" 2>/dev/null
}
make_x509() {
    mkdir -p "$1" && _mk_ca "$1" "Test CA" && _mk_cert "$1" server localhost &&
        _mk_cert "$1" client "Test Client" || { echo "FAIL: certtool"; exit 1; }
}
make_x509_other() {
    mkdir -p "$1" && _mk_ca "$1" "Other CA" && _mk_cert "$1" server localhost &&
        _mk_cert "$1" client "Other Client" || { echo "FAIL: certtool"; exit 1; }
}
make_psk() {
    local dir=$1 user
    shift
    mkdir -p "$dir"
    for user in "$@"; do
        psktool -u "$user" -p "$dir/keys.psk" >/dev/null || { echo "FAIL: psktool"; exit 1; }
    done
}
