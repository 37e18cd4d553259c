#!/bin/bash
# tests/integration/input-forms.sh -- input that QEMU's tools accept, judged
# by the real qemu-img and qemu-io: json: pseudo file names with
# single-quoted strings, the legacy blkdebug file name
# "blkdebug:CONFIG:IMAGE" with a config file that injects an error (and the
# config file's error messages), "file:" prefixes and file names holding ':'
# (as image, as backing file, unknown protocols), and numbers as qemu-io and
# qemu-img parse them (blanks, signs, every suffix, fractions, hex,
# overflow). Each case runs both tools in two directories holding the same
# files (see io-lib.sh) and compares stdout, stderr (program name aside) and
# the exit status.
#
# Needs BLOCKGRAPH, qemu-io and qemu-img (exit 77 without them, unless CI).
source "$(dirname "$0")/io-lib.sh"
io_require_tools

echo "input-forms: $BLOCKGRAPH against $(qemu-img --version | head -1)"

# img_compare DESC ARGS...: "qemu-img ARGS" in $WORK/q and "blockgraph img
# ARGS" in $WORK/b; stdout, stderr (program name mapped) and exit status
# must be equal.
img_filter() { sed -E -e 's/^qemu-img: /blockgraph img: /'; }
img_compare() {
    local desc=$1 why
    shift
    (cd "$WORK/q" && qemu-img "$@" >"$WORK/q.out" 2>"$WORK/q.err"; echo $? >"$WORK/q.rc")
    (cd "$WORK/b" && "$BLOCKGRAPH" img "$@" >"$WORK/b.out" 2>"$WORK/b.err"; echo $? >"$WORK/b.rc")
    why=$(pair_differences qemu-img img_filter)
    if [ -z "$why" ]; then ok "$desc"; else bad "$desc:$why"; fi
}
# in_both CMD...: runs CMD (a shell command) in both directories.
in_both() { (cd "$WORK/q" && eval "$*") && (cd "$WORK/b" && eval "$*"); }

# ---------------------------------------------------------------- file names
echo "file: prefixes and ':' in file names"
in_both mkdir -p d
img_compare "create d/a:b.qcow2 (':' after '/')" create -f qcow2 d/a:b.qcow2 1M
img_compare "info d/a:b.qcow2" info d/a:b.qcow2
img_compare "create file:d/a:c.qcow2" create -f qcow2 file:d/a:c.qcow2 1M
img_compare "info file:d/a:c.qcow2" info file:d/a:c.qcow2
img_compare "create image:x.qcow2: unknown protocol" create -f qcow2 image:x.qcow2 1M
img_compare "create file:image:top.qcow2 -b base.qcow2" create -f qcow2 -F qcow2 -b d/a:b.qcow2 file:image:top.qcow2
img_compare "info file:image:top.qcow2 (./ added, backing relative)" info file:image:top.qcow2
img_compare "info image:top.qcow2: unknown protocol" info image:top.qcow2
img_compare "create d/image:base.qcow2" create -f qcow2 d/image:base.qcow2 1M
img_compare "create d/image:top.qcow2 -b ./image:base.qcow2" \
    create -f qcow2 -F qcow2 -b ./image:base.qcow2 d/image:top.qcow2
img_compare "info d/image:top.qcow2: the backing file opens as a file" info d/image:top.qcow2
img_compare "check file:d/image:top.qcow2" check file:d/image:top.qcow2
img_compare "convert to file:d/x:y.qcow2" convert -O qcow2 d/a:b.qcow2 file:d/x:y.qcow2
img_compare "convert to image:z.qcow2: unknown protocol" convert -O qcow2 d/a:b.qcow2 image:z.qcow2
img_compare "rebase -u -b file:d/x:y.qcow2" rebase -u -F qcow2 -b file:d/x:y.qcow2 d/image:top.qcow2
img_compare "info: a file: backing name is its own full name" info d/image:top.qcow2
img_compare "compare d/a:b.qcow2 file:d/x:y.qcow2" compare d/a:b.qcow2 file:d/x:y.qcow2
COMPARE_IMAGES=0   # until the numbers: the images are compared by the commands
IMG_FMT=qcow2
IMAGE_ARG=file:d/a:c.qcow2
compare "io on file:d/a:c.qcow2" 'write -P 7 0 64k' 'read -P 7 0 64k'
IMAGE_ARG=image:x.qcow2
compare "io on image:x.qcow2: unknown protocol" 'read 0 1'

# ---------------------------------------------------------------- JSON
echo "json: with single quotes"
in_both "qemu-img create -q -f raw \"it's.raw\" 64k && qemu-img create -q -f raw 'q\"x.raw' 64k"
img_compare "info json:{'...'} (nested)" info "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'd/a:b.qcow2'}}"
img_compare "info json: dotted, \\' in a single-quoted name" \
    info "json:{'driver': 'raw', 'file.driver': 'file', 'file.filename': 'it\\'s.raw'}"
img_compare "info json: \" inside '...', mixed quotes" \
    info "json:{\"driver\": 'raw', 'file': {'driver': \"file\", 'filename': 'q\"x.raw'}}"
IMG_FMT=raw
IMAGE_ARG="json:{'driver': 'raw', 'file': {'driver': 'file', 'filename': 'it\\'s.raw'}}"
compare "io on json:{'...'}" 'write -P 3 1k 1k' 'read -P 3 1k 1k'
IMAGE_ARG=

# ---------------------------------------------------------------- blkdebug
echo "legacy blkdebug file names"
in_both "qemu-img create -q -f qcow2 t.qcow2 1M && qemu-io -c 'write -P 1 0 64k' t.qcow2 >/dev/null"
in_both "printf '%s\n' '# read_aio fails once with ENOSPC' '' '[inject-error]' 'event = \"read_aio\"' \
    'errno = \"28\"' 'once = \"on\"' '[set-state \"x\"]' 'event = \"l2_load\"' 'new_state = \"2\"' >bd.conf"
IMG_FMT=qcow2
IMAGE_ARG=blkdebug:bd.conf:t.qcow2
compare "io blkdebug:CONFIG:IMAGE, the error injected once" 'read 0 4k' 'read -P 1 0 4k'
IMAGE_ARG=blkdebug::t.qcow2
compare "io blkdebug::IMAGE" 'write -P 2 4k 4k' 'read -P 2 4k 4k'
IMAGE_ARG=blkdebug:t.qcow2
compare "io blkdebug:IMAGE (no config part)" 'read 0 1'
IMAGE_ARG=blkdebug:nosuch.conf:t.qcow2
compare "io blkdebug: missing config file" 'read 0 1'
OPTS=(-f qcow2)
IMAGE_ARG=blkdebug:bd.conf:t.qcow2
compare "io -f qcow2 blkdebug:CONFIG:IMAGE" 'read 0 4k' 'read 0 4k'
OPTS=()
IMAGE_ARG=
img_compare "info blkdebug::t.qcow2" info blkdebug::t.qcow2
in_both "cp t.qcow2 blkdebug::t.qcow2"
img_compare "a blkdebug: name in options is a plain file name" \
    info 'json:{"driver":"qcow2","file":{"filename":"blkdebug::t.qcow2"}}'
n=0
for conf in 'foo' '[inject-error]\n   ' '[bogus]' '[inject-error]\nfoo = "1"' '[inject-error]\nerrno=5' \
    '[inject-error]\nerrno = "x"' '[inject-error]\nerrno = "99999999999999999999"' \
    '[inject-error]\nonce = "maybe"' '[inject-error]\nerrno = "5"' '[inject-error]\nevent = "nope"' \
    '[inject-error]\nevent = "read_aio"\niotype = "bogus"' '[set-state]\nevent = "read_aio"\nerrno = "5"' \
    '[inject-error]\nevent = "read_aio"\nsector = "0x10"\nstate = "1"\nimmediately = "y"'; do
    n=$((n + 1))
    in_both "printf '$conf\n' >c$n.conf"
    img_compare "blkdebug config file $n: $(printf '%s' "$conf" | tr '\n' ' ' | head -c 50)" info blkdebug:c$n.conf:t.qcow2
done
# blkdebug's limit options, with QEMU's messages. (Errors of json:
# descriptions carry our "blockdev: file: " context, a documented difference
# that is not what this checks: it is dropped here.)
in_both "qemu-img create -q -f raw lim.raw 1M"
eval "orig_$(declare -f io_filter)"
io_filter() { orig_io_filter | sed -e 's/: blockdev: file: /: /'; }
for o in '"align":4096' '"align":3' '"align":4096,"max-transfer":6144' '"max-transfer":65536' \
    '"opt-write-zero":4096,"max-write-zero":6144' '"align":2147483648' '"max-transfer":2147483648' \
    '"align":512,"opt-discard":512,"max-discard":1024'; do
    IMAGE_ARG="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"blkdebug\",$o,\"image\":{\"driver\":\"file\",\"filename\":\"lim.raw\"}}}"
    compare "io on blkdebug with $o" 'read 1 1' 'write -z 0 4k' 'discard 0 64k'
done
eval "$(declare -f orig_io_filter | sed '1s/orig_io_filter/io_filter/')"
IMAGE_ARG=

# ---------------------------------------------------------------- numbers
echo "numbers"
COMPARE_IMAGES=1
fresh_images raw 1M
T=$'\t'
for n in 512 1b 1B 4k 4K 1.5k 0.5k 1.0009k 1.00049k 1.00048k 0.3k 1.k 1.0 0x200 0X20 0x1b 00512 010 +1k \
    "${T}1k" "${T}+0x10" 0x1k 0X2K 1.5 1.5b 1x 1kk "1${T}" 1e3 1.0e1k .5k k 0x 0x1.5 "${T}-1" \
    1m 1g 1t 1p 1e 1P 8E 16E 99999999999999999999 99999999999999999999k 0x8000000000000000 \
    9223372036854775807 0x10000000000000000; do
    compare "io read 0 '$n'" "read 0 $n"
done
compare "io read -P 0 -s 0x10 -l 1.5k 0 4k" 'read -P 0 -s 0x10 -l 1.5k 0 4k'
compare "io write -P 5 ${T}0x100 +1k" "write -P 5 ${T}0x100 +1k"

for n in 1M ' 1M' '+1M' 1.0009k 0.1k 0x100000 0x1k 1b 1.5b 1x 16E 99999999999999999999 8E 0; do
    img_compare "create -f raw x.raw '$n'" create -f raw x.raw "$n"
done
for o in size=1x size=16E size=+1M; do
    img_compare "create -f qcow2 -o '$o' (and a size argument)" create -f qcow2 -o "$o" o.qcow2 1M
done
for o in size=16E size=+1M size=' 2k' size=0x1000 size=1x cluster_size=abc,size=1M; do
    img_compare "create -f qcow2 -o '$o'" create -f qcow2 -o "$o" o.qcow2
done
in_both "qemu-img create -q -f raw r.raw 1M"
for n in 1x +1x +99999999999999999999 16E +0x1k '+ 1k' ' 2M' 8E +8E 1.0009k --1k -2M; do
    img_compare "resize r.raw '$n'" resize -f raw r.raw -- "$n"
done

# The other numeric options, with qemu-img's message for each name.
for a in "map --start-offset=1x r.raw" "map --start-offset=99999999999999999999 r.raw" "map --max-length=1x r.raw" \
    "map --max-length=16E r.raw" "map --max-length=0x1k r.raw" "bench -c 1 -s 3G r.raw" "bench -c 1 -o 1x r.raw" \
    "bench -c 1 -o 16E r.raw" "bench -c 1 -S 1x r.raw" "bench -c 1 -S 3G r.raw" "measure --size 1x -O raw" \
    "measure --size 16E -O raw" "convert -S 16E r.raw o.raw" "convert -S 1x r.raw o.raw" \
    "convert -S 1000 r.raw o.raw" "convert -r 1x r.raw o.raw" "convert -r 16E r.raw o.raw" \
    "convert -r 0 r.raw o.raw" "commit -r 1x r.raw"; do
    # shellcheck disable=SC2086
    img_compare "$a" $a
done
in_both "qemu-img create -q -f qcow2 bm.qcow2 1M"
img_compare "bitmap --add -g 1x" bitmap --add -g 1x bm.qcow2 b1
img_compare "bitmap --add -g 16E" bitmap --add -g 16E bm.qcow2 b1

finish
