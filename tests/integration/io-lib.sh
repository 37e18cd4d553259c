# tests/integration/io-lib.sh -- helpers shared by the io-*.sh tests.
# Sourced, not run (deliberately not executable, so check-integration lists
# it as ignored).
#
# The oracle is the real qemu-io: the same commands run through
# "blockgraph io" and "qemu-io" on two copies of an image, in two directories
# so that both see the same relative file name; then stdout, stderr and the
# exit status must be equal after io_filter (timing numbers and the program
# name removed), and so must the images.
#
# Provides:
#   WORK               a temporary directory, removed on exit
#   ok/bad/finish      result accounting (finish exits 1 if any check failed)
#   io_filter          the normalisation applied before comparing outputs
#   fresh_images FMT SIZE [QEMU_IMG_OPTS...]
#                      creates $WORK/q/img.FMT and a copy $WORK/b/img.FMT
#   compare DESC CMD...
#                      runs "-c CMD"... with the options in the array OPTS on
#                      the pair of images (or with IMAGE_ARG as the image
#                      argument, relative to each copy's directory; "none":
#                      no image argument); COMPARE_SORT=1 compares the sorted
#                      output lines (aio completions come in any order);
#                      COMPARE_IMAGES=0 skips the image comparison
#   compare_stdin DESC INPUT
#                      the same, with INPUT on standard input instead of -c
#   images_equal       cmp (raw) and qemu-img compare of the pair
set -u

# Skip (77) without the QEMU tools, except in CI (CI=... set), where they
# are installed by "make check" and a skip would hide a failure.
io_require_tools() {
    local t
    for t in qemu-io qemu-img "$@"; do
        if ! command -v "$t" >/dev/null; then
            if [ -n "${CI:-}" ]; then
                echo "FAIL: $t is not installed (Debian package qemu-utils), and CI is set"
                exit 1
            fi
            echo "SKIP: $t is not installed (Debian package qemu-utils)"
            exit 77
        fi
    done
    BLOCKGRAPH=${BLOCKGRAPH:-$(dirname "$0")/../../build/blockgraph}
    if [ ! -x "$BLOCKGRAPH" ]; then
        echo "FAIL: BLOCKGRAPH=$BLOCKGRAPH is not an executable"
        exit 1
    fi
    case $BLOCKGRAPH in /*) ;; *) BLOCKGRAPH=$PWD/$BLOCKGRAPH ;; esac
}

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/bg-io.XXXXXX")
mkdir -p "$WORK/q" "$WORK/b"
io_cleanup_hooks=()
io_cleanup() {
    local h
    for h in "${io_cleanup_hooks[@]}"; do eval "$h"; done
    chmod -R u+rwX "$WORK" 2>/dev/null
    rm -rf "$WORK"
}
trap io_cleanup EXIT
trap 'exit 1' INT TERM

io_failures=0
io_checks=0
ok() {
    io_checks=$((io_checks + 1))
    echo "  ok    $*"
}
bad() {
    io_checks=$((io_checks + 1))
    io_failures=$((io_failures + 1))
    echo "  FAIL  $*"
}
finish() {
    if [ $io_failures -ne 0 ]; then
        echo "$(basename "$0"): $io_failures of $io_checks check(s) failed"
        exit 1
    fi
    echo "$(basename "$0"): all $io_checks checks passed"
    exit 0
}

# Normalises tool output for comparison:
#  - the statistics line "4 KiB, 1 ops; 00.00 sec (... MiB/sec and ... ops/sec)"
#    keeps only "4 KiB, 1 ops"; the -C line "4096,1,0:00:00.00,..." keeps the
#    byte and op counts (qemu-io 7.2 prints a bogus time for aio_write -z);
#  - "qemu-io: " in front of error messages becomes "blockgraph io: ";
#  - the prompt qemu-io prints even when stdin is not a terminal is dropped.
io_filter() {
    sed -E -e 's/^([^,]*, -?[0-9]+ ops); .*$/\1; TIME/' \
        -e 's/^(-?[0-9]+,-?[0-9]+),[0-9:.]+,.*$/\1,TIME/' \
        -e 's/^qemu-io: /blockgraph io: /' \
        -e 's/qemu-io> //g'
}

IMG_FMT=raw
fresh_images() {
    IMG_FMT=$1
    local size=$2
    shift 2
    rm -f "$WORK/q/img.$IMG_FMT" "$WORK/b/img.$IMG_FMT"
    qemu-img create -q -f "$IMG_FMT" "$@" "$WORK/q/img.$IMG_FMT" "$size"
    cp --sparse=always "$WORK/q/img.$IMG_FMT" "$WORK/b/img.$IMG_FMT"
}

# images_equal: true if the pair holds the same data; else prints why.
images_equal() {
    local q=$WORK/q/img.$IMG_FMT b=$WORK/b/img.$IMG_FMT out
    # Raw images must be identical; other formats may lay clusters out
    # differently, so only the guest-visible contents are compared.
    if [ "$IMG_FMT" = raw ] && ! cmp -s "$q" "$b"; then
        echo "        images differ (cmp): $(cmp "$q" "$b" 2>&1 | head -1); sizes $(stat -c %s "$q") $(stat -c %s "$b")"
        return 1
    fi
    if ! out=$(qemu-img compare -f "$IMG_FMT" -F "$IMG_FMT" "$q" "$b" 2>&1); then
        echo "        images differ (qemu-img compare): $out"
        return 1
    fi
    return 0
}

OPTS=()
COMPARE_SORT=0
COMPARE_IMAGES=1

# The image argument: unset, img.FMT; "none", no image argument.
IMAGE_ARG=

# io_run_pair STDIN_FILE CMD...: runs both tools; leaves $WORK/{q,b}.{out,err,rc}.
io_run_pair() {
    local in=$1
    shift
    local args=() c img=()
    for c in "$@"; do args+=(-c "$c"); done
    case $IMAGE_ARG in
    "") img=("img.$IMG_FMT") ;;
    none) ;;
    *) img=("$IMAGE_ARG") ;;
    esac
    (cd "$WORK/q" && qemu-io "${OPTS[@]}" "${args[@]}" "${img[@]}" <"$in" >"$WORK/q.out" 2>"$WORK/q.err"
     echo $? >"$WORK/q.rc")
    (cd "$WORK/b" && "$BLOCKGRAPH" io "${OPTS[@]}" "${args[@]}" "${img[@]}" <"$in" >"$WORK/b.out" 2>"$WORK/b.err"
     echo $? >"$WORK/b.rc")
}

# pair_differences TOOL FILTER: what differs between the runs in $WORK/q
# (the QEMU TOOL) and $WORK/b (ours): stdout and stderr, each through
# FILTER (and sorted with COMPARE_SORT=1), and the exit status; one
# indented paragraph per difference, each starting with a newline; nothing
# when they agree.
pair_differences() {
    local tool=$1 filter=$2 ch
    for ch in out err; do
        if [ "${COMPARE_SORT:-0}" = 1 ]; then
            $filter <"$WORK/q.$ch" | LC_ALL=C sort >"$WORK/q.$ch.f"
            $filter <"$WORK/b.$ch" | LC_ALL=C sort >"$WORK/b.$ch.f"
        else
            $filter <"$WORK/q.$ch" >"$WORK/q.$ch.f"
            $filter <"$WORK/b.$ch" >"$WORK/b.$ch.f"
        fi
        if ! cmp -s "$WORK/q.$ch.f" "$WORK/b.$ch.f"; then
            echo
            echo "        std$ch differs from $tool's (< $tool, > blockgraph ${tool#qemu-}):"
            diff "$WORK/q.$ch.f" "$WORK/b.$ch.f" | head -20 | sed 's/^/        /'
        fi
    done
    if [ "$(cat "$WORK/q.rc")" != "$(cat "$WORK/b.rc")" ]; then
        echo
        echo "        exit status $(cat "$WORK/b.rc"), $tool's $(cat "$WORK/q.rc")"
    fi
}

# io_compare_results DESC: one check over both outputs, the exit statuses
# and (unless COMPARE_IMAGES=0) the images.
io_compare_results() {
    local desc=$1 why
    why=$(pair_differences qemu-io io_filter)
    if [ "$COMPARE_IMAGES" = 1 ]; then
        local img
        img=$(images_equal) || why="$why
$img"
    fi
    if [ -z "$why" ]; then
        ok "$desc"
    else
        bad "$desc:$why"
    fi
}

compare() {
    local desc=$1
    shift
    io_run_pair /dev/null "$@"
    io_compare_results "$desc"
}

compare_stdin() {
    local desc=$1
    printf '%s' "$2" >"$WORK/stdin"
    io_run_pair "$WORK/stdin"
    io_compare_results "$desc"
}

# expect_lines DESC EXPECTED_STATUS EXPECTED_OUTPUT -- CMD...: runs CMD (stdout
# and stderr together) and checks its exit status and exact output.
expect_lines() {
    local desc=$1 want_rc=$2 want=$3
    shift 4
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" != "$want_rc" ]; then
        bad "$desc: exit status $rc, expected $want_rc"
        printf '%s\n' "$out" | head -10 | sed 's/^/        /'
    elif [ "$out" != "$want" ]; then
        bad "$desc: unexpected output"
        diff <(printf '%s\n' "$want") <(printf '%s\n' "$out") | head -10 | sed 's/^/        /'
    else
        ok "$desc"
    fi
}

# state_of FILE...: size, mtime (ns) and checksum of each file, or "absent".
state_of() {
    local f
    for f in "$@"; do
        if [ -e "$f" ]; then
            printf '%s %s %s\n' "$f" "$(stat -c '%s %.9Y' "$f")" "$(md5sum <"$f" | cut -d' ' -f1)"
        else
            printf '%s absent\n' "$f"
        fi
    done
}
