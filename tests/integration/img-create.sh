#!/bin/bash
# tests/integration/img-create.sh -- "blockgraph img create / amend /
# resize / snapshot" judged by the real qemu-img.
#
# create: for raw and for every qcow2 create option (compat, cluster_size,
# refcount_bits, lazy_refcounts, extended_l2, compression_type,
# preallocation, data_file, data_file_raw, backing_file/backing_fmt, -u)
# our image must pass "qemu-img check", and "qemu-img info --output=json"
# of it must equal that of the image qemu-img creates with the same
# arguments (file names and disk usage aside); the "Formatting ..." line
# is qemu-img's. amend, resize and snapshot results are read back with
# qemu-img / qemu-io, and our snapshot -l equals qemu-img's.
. "$(dirname "$0")/img-lib.sh"

# info_equal DESC OURS THEIRS: qemu-img info of the two images is the same
# apart from names and disk usage.
info_equal() {
    local desc=$1 a=$2 b=$3 out
    if out=$(python3 - "$a" "$b" <<'EOF'
import json, subprocess, sys
def info(f):
    j = json.loads(subprocess.run(["qemu-img", "info", "--output=json", f], check=True,
                                  capture_output=True, text=True).stdout)
    for k in ("filename", "actual-size"):
        j.pop(k, None)
    d = j.get("format-specific", {}).get("data", {})
    if "data-file" in d:
        d["data-file"] = "X"
    return j
a, b = info(sys.argv[1]), info(sys.argv[2])
if a != b:
    print("ours:   ", json.dumps(a, sort_keys=True)); print("qemu's: ", json.dumps(b, sort_keys=True)); sys.exit(1)
EOF
    ); then ok "$desc: qemu-img info as for qemu-img's image"; else bad "$desc"; echo "$out" | sed 's/^/        /'; fi
}

n=0
# create_both DESC FMT SIZE ARGS...: both tools create an image; compare.
create_both() {
    local desc=$1 fmt=$2 size=$3
    shift 3
    n=$((n + 1))
    local o=o$n.$fmt t=t$n.$fmt extra_o=() extra_t=() a
    # data_file names must differ between the two images.
    for a in "$@"; do
        extra_o+=("${a//DATA/o$n-data.raw}")
        extra_t+=("${a//DATA/t$n-data.raw}")
    done
    if ! "$B" img create -f "$fmt" "${extra_o[@]}" "$o" $size >ours.out 2>ours.err; then
        bad "$desc: create failed: $(cat ours.err)"
        return
    fi
    qemu-img create -f "$fmt" "${extra_t[@]}" "$t" $size >qemu.out 2>qemu.err || { bad "$desc: qemu-img create failed: $(cat qemu.err)"; return; }
    sed -i "s/'o$n\\./'X./; s/o$n-data/X-data/" ours.out
    sed -i "s/'t$n\\./'X./; s/t$n-data/X-data/" qemu.out
    if diff ours.out qemu.out >/dev/null; then ok "$desc: Formatting line"; else bad "$desc: '$(cat ours.out)' vs '$(cat qemu.out)'"; fi
    [ "$fmt" = qcow2 ] && [ "${NO_CHECK:-0}" = 0 ] && qemu_accepts "$desc" "$o"
    info_equal "$desc" "$o" "$t"
}

create_both "raw 1G" raw 1G
create_both "raw 1.5M" raw 1.5M
create_both "raw 100k preallocation=full" raw 100k -o preallocation=full
create_both "raw preallocation=falloc" raw 3M -o preallocation=falloc
create_both "qcow2 default" qcow2 64M
create_both "qcow2 4T" qcow2 4T
for o in compat=0.10 compat=1.1 cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1 refcount_bits=8 \
    refcount_bits=64 lazy_refcounts=on extended_l2=on extended_l2=on,cluster_size=2M compression_type=zstd \
    preallocation=metadata preallocation=falloc preallocation=full compat=0.10,cluster_size=4k,refcount_bits=16 \
    data_file=DATA data_file=DATA,data_file_raw=on data_file=DATA,preallocation=metadata; do
    create_both "qcow2 -o $o" qcow2 16M -o "$o"
done

q qemu-img create -q -f qcow2 back.qcow2 32M
q qemu-io -c 'write -P 7 0 1M' back.qcow2
q qemu-img create -q -f raw back.raw 8M
create_both "qcow2 -b qcow2 (size from backing)" qcow2 "" -b back.qcow2 -F qcow2
create_both "qcow2 -b raw, larger" qcow2 64M -b back.raw -F raw
create_both "qcow2 -o backing_file,backing_fmt" qcow2 "" -o backing_file=back.qcow2,backing_fmt=qcow2
# (qemu-img check cannot open an image whose backing file is missing)
NO_CHECK=1 create_both "qcow2 -u with a missing backing file" qcow2 16M -u -b missing.qcow2 -F qcow2
"$B" img create -q -f qcow2 -b back.qcow2 -F qcow2 ov.qcow2
same_data "overlay reads its backing file" ov.qcow2 back.qcow2

# create errors: exit 1, one line naming the file, nothing created
expect_rc "unknown format" 1 "$B" img create -f vhdx e1.img 1M
expect_rc "bad size" 1 "$B" img create -f qcow2 e2.qcow2 1x
expect_rc "no size" 1 "$B" img create -f qcow2 e3.qcow2
expect_rc "missing backing file" 1 "$B" img create -f qcow2 -b missing.qcow2 -F qcow2 e4.qcow2 1M
grep -q "e4.qcow2" last.err && ok "error names the file: $(head -1 last.err)" || bad "error line: $(cat last.err)"
expect_rc "backing without format" 1 "$B" img create -f qcow2 -b back.qcow2 e5.qcow2
expect_rc "unknown option" 1 "$B" img create -f qcow2 -o bogus=1 e6.qcow2 1M
expect_rc "bad cluster size" 1 "$B" img create -f qcow2 -o cluster_size=3000 e7.qcow2 1M
if ls e?.* >/dev/null 2>&1; then bad "failed creates left files: $(ls e?.*)"; else ok "failed creates left no files"; fi
expect_rc "-o help" 0 "$B" img create -f qcow2 -o help
grep -q "cluster_size=<size>" last.out && ok "-o help lists cluster_size" || bad "-o help: $(cat last.out)"

# ---- resize
q qemu-img create -q -f raw r.raw 1M
expect_rc "resize raw +1M" 0 "$B" img resize -f raw r.raw +1M
[ "$(stat -c %s r.raw)" = $((2 << 20)) ] && ok "raw is 2 MiB" || bad "raw size $(stat -c %s r.raw)"
grep -qx "Image resized." last.out && ok "resize prints 'Image resized.'" || bad "resize output: $(cat last.out)"
expect_rc "resize raw shrink without --shrink" 1 "$B" img resize -f raw r.raw -- -1M
expect_rc "resize raw --shrink -1M" 0 "$B" img resize -f raw --shrink r.raw -- -1M
[ "$(stat -c %s r.raw)" = $((1 << 20)) ] && ok "raw is 1 MiB again" || bad "raw size $(stat -c %s r.raw)"
expect_rc "resize raw --preallocation=full 3M" 0 "$B" img resize -f raw --preallocation=full r.raw 3M
[ "$(stat -c %b r.raw)" -ge $((4096)) ] && ok "full preallocation allocated the file" || bad "blocks $(stat -c %b r.raw)"
expect_rc "resize bad preallocation" 1 "$B" img resize -f raw --preallocation=bogus r.raw 4M
expect_rc "resize to 0" 1 "$B" img resize -f raw r.raw 0
q qemu-img create -q -f qcow2 r.qcow2 16M
q qemu-io -c 'write -P 3 15M 1M' r.qcow2
expect_rc "resize qcow2 32M" 0 "$B" img resize r.qcow2 32M
[ "$(qemu-img info --output=json r.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = $((32 << 20)) ] \
    && ok "qcow2 grew to 32M" || bad "qcow2 size: $(qemu-img info r.qcow2)"
qemu_accepts "resized qcow2" r.qcow2
qemu-io -c 'read -P 3 15M 1M' -c 'read -P 0 16M 16M' r.qcow2 >/dev/null 2>&1 && ok "resized qcow2 data intact" || bad "resized qcow2 data"
expect_rc "resize qcow2 --shrink 16M" 0 "$B" img resize --shrink r.qcow2 16M
qemu_accepts "shrunk qcow2" r.qcow2
# A shrink cuts the file after its last cluster in use, as qemu-img does:
# twins shrunk by each tool end up the same length with the same contents.
q qemu-img create -q -f qcow2 t.qcow2 1G
q qemu-io -c 'write -P 1 0 24M' -c 'write -P 2 512M 8M' t.qcow2
cp t.qcow2 tq.qcow2
expect_rc "resize qcow2 --shrink 1G -> 1M" 0 "$B" img resize --shrink t.qcow2 1M
q qemu-img resize -q --shrink tq.qcow2 1M
if [ "$(stat -c %s t.qcow2)" = "$(stat -c %s tq.qcow2)" ] && [ "$(stat -c %s t.qcow2)" -lt $((2 << 20)) ]; then
    ok "shrunk qcow2 file cut to $(stat -c %s t.qcow2) bytes, as qemu-img's twin"
else
    bad "shrunk qcow2 file: $(stat -c %s t.qcow2) bytes, qemu-img's twin $(stat -c %s tq.qcow2)"
fi
qemu_accepts "shrunk and cut qcow2" t.qcow2
qemu-img compare -q t.qcow2 tq.qcow2 && ok "shrunk twins compare equal" || bad "shrunk twins differ"

# ---- snapshot
q qemu-img create -q -f qcow2 s.qcow2 8M
q qemu-io -c 'write -P 1 0 1M' s.qcow2
expect_rc "snapshot -c one" 0 "$B" img snapshot -c one s.qcow2
q qemu-io -c 'write -P 2 0 1M' s.qcow2
q qemu-img snapshot -c two s.qcow2
if diff <("$B" img snapshot -l s.qcow2) <(qemu-img snapshot -l s.qcow2) >/dev/null; then
    ok "snapshot -l as qemu-img's"
else
    bad "snapshot -l: $("$B" img snapshot -l s.qcow2) vs $(qemu-img snapshot -l s.qcow2)"
fi
qemu-img snapshot -l s.qcow2 | grep -q " one " && ok "qemu-img sees our snapshot" || bad "qemu-img snapshot -l: $(qemu-img snapshot -l s.qcow2)"
qemu_accepts "after snapshot -c" s.qcow2
expect_rc "snapshot -a one" 0 "$B" img snapshot -a one s.qcow2
qemu-io -c 'read -P 1 0 1M' s.qcow2 >/dev/null 2>&1 && ok "snapshot -a reverted the data" || bad "data after -a"
qemu_accepts "after snapshot -a" s.qcow2
expect_rc "snapshot -d two" 0 "$B" img snapshot -d two s.qcow2
qemu-img snapshot -l s.qcow2 | grep -q " two " && bad "snapshot two still listed" || ok "snapshot -d removed it"
expect_rc "snapshot -d by id 1" 0 "$B" img snapshot -d 1 s.qcow2
qemu_accepts "after snapshot -d" s.qcow2
expect_rc "snapshot -a missing" 1 "$B" img snapshot -a nosuch s.qcow2
expect_rc "snapshot -c on raw" 1 "$B" img snapshot -c x -f raw r.raw
expect_rc "snapshot -l on raw" 0 "$B" img snapshot -l -f raw r.raw
expect_rc "snapshot -l -c mixed" 1 "$B" img snapshot -l -c x s.qcow2

# ---- amend
q qemu-img create -q -f qcow2 am.qcow2 8M
q qemu-io -c 'write -P 4 0 2M' am.qcow2
expect_rc "amend -o compat=0.10" 0 "$B" img amend -o compat=0.10 am.qcow2
qemu-img info am.qcow2 | grep -q "compat: 0.10" && ok "compat is 0.10" || bad "compat: $(qemu-img info am.qcow2)"
expect_rc "amend -o compat=1.1,lazy_refcounts=on" 0 "$B" img amend -o compat=1.1,lazy_refcounts=on am.qcow2
qemu-img info am.qcow2 | grep -q "lazy refcounts: true" && ok "lazy refcounts on" || bad "lazy: $(qemu-img info am.qcow2)"
expect_rc "amend -o refcount_bits=64" 0 "$B" img amend -o refcount_bits=64 am.qcow2
qemu-img info am.qcow2 | grep -q "refcount bits: 64" && ok "refcount bits 64" || bad "refcount: $(qemu-img info am.qcow2)"
qemu_accepts "amended" am.qcow2
qemu-io -c 'read -P 4 0 2M' am.qcow2 >/dev/null 2>&1 && ok "amended image data intact" || bad "amended data"
expect_rc "amend without -o" 1 "$B" img amend am.qcow2
expect_rc "amend -o cluster_size" 1 "$B" img amend -o cluster_size=4k am.qcow2

finish
