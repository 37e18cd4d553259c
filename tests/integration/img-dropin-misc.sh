#!/bin/bash
# tests/integration/img-dropin-misc.sh -- qemu-img 7.2 details judged by
# the real qemu-img: `-p` progress on a pipe (amend, commit, compare,
# convert, rebase), `convert -C`, `bench -s 0`, `bitmap -g 0` and the
# `-T/--trace` option before the command. Ours runs through a link named
# qemu-img so that messages carry the same program name. A few seconds.
. "$(dirname "$0")/img-lib.sh"

mkdir -p links
ln -s "$B" links/qemu-img
OURS=$WORK/links/qemu-img

# fixture: an 8 MiB chain (base: 2 MiB of data; top: 1 MiB more) and a
# small qcow2 s.qcow2 with scattered data.
fixture() {
    rm -f base.qcow2 top.qcow2 s.qcow2 x x.qcow2
    q qemu-img create -q -f qcow2 base.qcow2 8M &&
        q qemu-io -c 'write -P 1 0 2M' base.qcow2 &&
        q qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 &&
        q qemu-io -c 'write -P 3 3M 1M' top.qcow2 &&
        q qemu-img create -q -f qcow2 s.qcow2 1M &&
        q qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 300k 10k' s.qcow2
}

# run TAG TOOL ARGS -> TAG.out/.err/.rc; on a fresh fixture when FRESH=1
# (commands that change the images), else on the current one.
FRESH=1
run() {
    local tag=$1 tool=$2
    shift 2
    rm -f x
    if [ "$FRESH" = 1 ]; then fixture || return 1; fi
    eval "\"$tool\" $*" >"$tag.out" 2>"$tag.err"
    echo $? >"$tag.rc"
}

echo "-p on a pipe: same first step, same last steps and text after them"
for args in "convert -p base.qcow2 x" "convert -p -O qcow2 s.qcow2 x" "compare -p base.qcow2 top.qcow2" \
    "compare -p base.qcow2 base.qcow2" "rebase -p -b '' top.qcow2" "rebase -u -p -b '' top.qcow2" \
    "commit -p top.qcow2" "commit -p -d top.qcow2" "amend -p -o compat=0.10 base.qcow2" \
    "convert -p -q s.qcow2 x" "compare -p -q base.qcow2 base.qcow2"; do
    run q qemu-img "$args"
    run o "$OURS" "$args"
    if out=$(python3 - <<'EOF'
import re
def steps(tag):
    data = open(tag + ".out", "rb").read()
    return [s for s in re.split(rb"(?<=[\r\n])", data) if s], open(tag + ".err").read(), open(tag + ".rc").read()
q, qe, qr = steps("q")
o, oe, orc = steps("o")
if (qe, qr) != (oe, orc):
    print("stderr/exit: ours %r %r, qemu-img's %r %r" % (oe, orc, qe, qr)); raise SystemExit(1)
# From the last progress step on: the final step, the newline and any
# verdict around it.
def tail(s):
    last = max([i for i, p in enumerate(s) if b"/100%)" in p] or [0])
    return s[last:]
if q[:1] != o[:1] or tail(q) != tail(o):
    print("ours %r ... %r; qemu-img's %r ... %r" % (o[:1], tail(o), q[:1], tail(q))); raise SystemExit(1)
print("%d steps (qemu-img: %d)" % (len(o), len(q)))
EOF
    ); then ok "$args: $out"; else bad "$args: $out"; fi
done

FRESH=0
echo "convert -C: refusals and result"
for args in "-C -c" "-c -C" "-C -S 0" "-C -S 4k" "-S 0 -C" "-C --salvage" "-C -S 0 --salvage" "-C --salvage -c" \
    "-C" "-C -O qcow2" "-C -m 4 -W" "-C -n" "-C -O qcow2 -B base.qcow2 -F qcow2" "-O qcow2 -B base.qcow2 -F qcow2"; do
    run q qemu-img convert "$args" s.qcow2 x
    [ -e x ] && qemu-img map --output=json x >q.map 2>&1
    [ -e x ] || echo none >q.map
    run o "$OURS" convert "$args" s.qcow2 x
    [ -e x ] && qemu-img map --output=json x >o.map 2>&1
    [ -e x ] || echo none >o.map
    if cmp -s q.err o.err && cmp -s q.rc o.rc && cmp -s q.out o.out && cmp -s q.map o.map; then
        ok "convert $args (exit $(cat o.rc))"
    else
        bad "convert $args: ours $(cat o.rc) '$(cat o.err)' map $(head -c 300 o.map); qemu-img $(cat q.rc) '$(cat q.err)' map $(head -c 300 q.map)"
    fi
done

echo "bench -s 0: requests of no bytes"
for args in "-s 0 -c 10" "-s 0 -c 10 -w -f qcow2" "-s 0 -S 4k -c 100" "-s 0 -c 100 -w -d 4 --flush-interval=4 -f qcow2"; do
    run q qemu-img bench "$args" s.qcow2
    cp s.qcow2 q.img
    run o "$OURS" bench "$args" s.qcow2
    if cmp -s q.rc o.rc && cmp -s q.err o.err && diff <(grep -v '^Run completed' q.out) <(grep -v '^Run completed' o.out) >/dev/null &&
        grep -q '^Run completed in [0-9.]* seconds.$' o.out; then
        ok "bench $args: $(head -1 o.out)"
    else
        bad "bench $args: ours $(cat o.rc) '$(cat o.out o.err)'; qemu-img $(cat q.rc) '$(cat q.out q.err)'"
    fi
    same_data "bench $args left the image" s.qcow2 q.img
done

echo "bitmap -g 0: the default granularity"
for cs in 512 64k 2M; do
    rm -f g-q.qcow2 g-o.qcow2
    q qemu-img create -q -f qcow2 -o cluster_size=$cs g-q.qcow2 1M
    q qemu-img create -q -f qcow2 -o cluster_size=$cs g-o.qcow2 1M
    qemu-img bitmap --add -g 0 g-q.qcow2 b0 >q.out 2>&1
    "$OURS" bitmap --add -g 0 g-o.qcow2 b0 >o.out 2>&1
    qemu-img info --output=json g-q.qcow2 | grep granularity >q.gran
    qemu-img info --output=json g-o.qcow2 | grep granularity >o.gran
    if cmp -s q.out o.out && cmp -s q.gran o.gran && [ -s o.gran ]; then
        ok "bitmap --add -g 0 on $cs clusters: $(tr -d ' \n' <o.gran)"
    else
        bad "bitmap --add -g 0 on $cs clusters: ours '$(cat o.out o.gran)', qemu-img '$(cat q.out q.gran)'"
    fi
done

echo "-T/--trace before the command"
printf 'foo\n# comment\n\nbdrv_x*\n-bar\n' >ev
for args in "-T x" "-T" "--trace" "-T 'x*'" "-T file=/nonexistent/x info s.qcow2" "-T events=/nonexistent info s.qcow2" \
    "-T badkey=1 info s.qcow2" "-T help=1 info s.qcow2" "--trace x info s.qcow2" "--trace=x info s.qcow2" \
    "-T enable=x,enable=y info s.qcow2" "-T x -T y info s.qcow2" "-T -bdrv_x info s.qcow2" "-T x foo" \
    "-T events=ev info s.qcow2" "-T 'nosuch_*' info s.qcow2" "-T x,events=ev,file=tr.log map s.qcow2"; do
    rm -f tr.log
    run q qemu-img "$args"
    [ -e tr.log ] && echo exists >q.log || echo none >q.log
    rm -f tr.log
    run o "$OURS" "$args"
    [ -e tr.log ] && echo exists >o.log || echo none >o.log
    if cmp -s q.err o.err && cmp -s q.rc o.rc && cmp -s q.out o.out && cmp -s q.log o.log; then
        ok "$args (exit $(cat o.rc))"
    else
        bad "$args: ours $(cat o.rc) '$(cat o.err)' $(head -c 100 o.out); qemu-img $(cat q.rc) '$(cat q.err)' $(head -c 100 q.out)"
    fi
done
# -T help lists the trace events and exits: qemu-img has hundreds, we none.
"$OURS" -T help info s.qcow2 >o.out 2>o.err
rc=$?
if [ $rc = 0 ] && [ ! -s o.out ] && [ ! -s o.err ]; then ok "-T help: an empty list, exit 0"; else bad "-T help: $rc '$(cat o.out o.err)'"; fi

finish
