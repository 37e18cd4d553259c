# tests/integration/img-lib.sh -- helpers shared by the img-*.sh tests.
# Sourced, not run (deliberately not executable).
#
# The oracle is the real qemu-img (7.2): images are made with qemu-img /
# qemu-io, our "blockgraph img" and qemu-img run on them, and the parsed
# JSON (python3), exit codes, or qemu-img's verdict on our output are
# compared.
#
# Provides:
#   B                  the blockgraph binary (absolute)
#   WORK               a temporary directory (cwd), removed on exit
#   ok/bad/finish      result accounting (finish exits 1 if any check failed)
#   q CMD...           runs a QEMU tool to build a fixture; a failure fails the test
#   json_same DESC KIND OURS_FILE QEMU_FILE
#                      compares two JSON documents after normalize (KIND:
#                      info, map, check, measure)
#   expect_rc DESC WANT CMD...   runs CMD, checks its exit status
set -u

if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null; then
    if [ -n "${CI:-}" ]; then
        echo "FAIL: qemu-img/qemu-io not installed (Debian package qemu-utils), and CI is set"
        exit 1
    fi
    echo "SKIP: qemu-img/qemu-io not installed (Debian package qemu-utils)"
    exit 77
fi
B=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
case $B in /*) ;; *) B=$PWD/$B ;; esac
if [ ! -x "$B" ] || ! "$B" img --help >/dev/null 2>&1; then
    echo "FAIL: '$B img' is not available"
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-img.XXXXXX")
trap '[ "${BG_KEEP_WORK:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
trap 'exit 1' INT TERM
cd "$WORK" || exit 1

img_failures=0
img_checks=0
ok() {
    img_checks=$((img_checks + 1))
    echo "  ok    $*"
}
bad() {
    img_checks=$((img_checks + 1))
    img_failures=$((img_failures + 1))
    echo "  FAIL  $*"
}
finish() {
    if [ $img_failures -ne 0 ]; then
        echo "$(basename "$0"): $img_failures of $img_checks check(s) failed"
        exit 1
    fi
    echo "$(basename "$0"): all $img_checks checks passed"
    exit 0
}

q() {
    local out
    if ! out=$("$@" 2>&1); then
        bad "fixture: $* failed: $out"
        return 1
    fi
}

# json_same DESC KIND OURS QEMU: the two files hold the same JSON once
# normalised: for map, "compressed" (QEMU >= 8.2 prints it, 7.2 does not)
# is checked for consistency and then dropped from ours when qemu's lacks it.
json_same() {
    local desc=$1 kind=$2 ours=$3 theirs=$4 out
    if out=$(python3 - "$kind" "$ours" "$theirs" <<'EOF'
import json, sys
kind, a, b = sys.argv[1:4]
try:
    ours = json.load(open(a))
except Exception as e:
    print("our output is not JSON: %s: %r" % (e, open(a).read()[:300])); sys.exit(1)
theirs = json.load(open(b))
if kind == "map":
    qemu_has = any("compressed" in e for e in theirs)
    for e in ours:
        if "compressed" not in e:
            print("entry without 'compressed': %r" % e); sys.exit(1)
        if e["compressed"] and (not e["data"] or "offset" in e):
            print("compressed entry with offset or without data: %r" % e); sys.exit(1)
        if not qemu_has:
            del e["compressed"]
if ours != theirs:
    print("ours:   " + json.dumps(ours, sort_keys=True)[:1500])
    print("qemu's: " + json.dumps(theirs, sort_keys=True)[:1500])
    sys.exit(1)
EOF
    ); then
        ok "$desc"
    else
        bad "$desc"
        echo "$out" | sed 's/^/        /'
    fi
}

expect_rc() {
    local desc=$1 want=$2 rc
    shift 2
    "$@" >"$WORK/last.out" 2>"$WORK/last.err"
    rc=$?
    if [ "$rc" = "$want" ]; then
        ok "$desc (exit $rc)"
    else
        bad "$desc: exit $rc, want $want; stderr: $(head -c 300 "$WORK/last.err")"
    fi
}

# qemu_accepts DESC IMAGE [FMT]: qemu-img check passes (0) on IMAGE.
qemu_accepts() {
    local desc=$1 img=$2 fmt=${3:-qcow2} out
    if out=$(qemu-img check -f "$fmt" "$img" 2>&1); then
        ok "$desc: qemu-img check clean"
    else
        bad "$desc: qemu-img check: $out"
    fi
}

# same_data DESC A B [FMT_A FMT_B]: qemu-img compare says identical.
same_data() {
    local desc=$1 a=$2 b=$3 out
    local fa=() fb=()
    [ -n "${4:-}" ] && fa=(-f "$4")
    [ -n "${5:-}" ] && fb=(-F "$5")
    if out=$(qemu-img compare "${fa[@]}" "${fb[@]}" "$a" "$b" 2>&1); then
        ok "$desc: qemu-img compare identical"
    else
        bad "$desc: qemu-img compare: $out"
    fi
}
