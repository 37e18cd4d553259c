#!/bin/bash
# tests/integration/qcow2-create.sh -- "blockgraph img create -f qcow2" at the
# command line for combinations of create options, judged by the real
# qemu-img / qemu-io 7.2.
#
# Each image blockgraph creates must be called clean by "qemu-img check",
# "qemu-img info --output=json" must show every option given (compat,
# cluster size, refcount bits, extended L2, compression type, lazy
# refcounts, size, backing file and format, data file), and data written
# by qemu-io must read back through both tools, with the image still
# clean. Invalid combinations must fail (exit 1) with qemu-img's message
# and leave no file behind.
. "$(dirname "$0")/img-lib.sh"

q qemu-img create -f qcow2 base.qcow2 8M
q qemu-io -c "write -P 0x5a 0 8M" base.qcow2

n=0
# created DESC PYEXPR OPTS...: create with OPTS (then "img.qcow2 SIZE"), judge.
created() {
    local desc=$1 expr=$2
    shift 2
    n=$((n + 1))
    local img=c$n.qcow2 size=()
    # A trailing size goes after the file name.
    if [ $# -gt 0 ] && [[ ${*: -1} =~ ^[0-9]+[kMG]?$ ]]; then
        size=("${*: -1}")
        set -- "${@:1:$#-1}"
    fi
    if ! "$B" img create -q -f qcow2 "$@" "$img" "${size[@]}" >out 2>err; then
        bad "$desc: create failed: $(cat err)"
        return
    fi
    qemu_accepts "$desc" "$img"
    if python3 - "$img" "$expr" <<'EOF'; then ok "$desc: qemu-img info shows $expr"; else bad "$desc: qemu-img info: not $expr: $(qemu-img info --output=json "$img" | tr -d '\n ' | head -c 400)"; fi
import json, subprocess, sys
j = json.loads(subprocess.run(["qemu-img", "info", "--output=json", sys.argv[1]], check=True,
                              capture_output=True, text=True).stdout)
d = j.get("format-specific", {}).get("data", {})
sys.exit(0 if eval(sys.argv[2]) else 1)
EOF
    # Data through qemu-io, read back by both tools.
    if qemu-io -c "write -P 0x33 1M 192k" -c "write -z 2M 64k" "$img" >/dev/null 2>&1 &&
        qemu-io -c "read -P 0x33 1M 192k" -c "read -P 0 2M 64k" "$img" 2>&1 | grep -q "read 65536/65536" &&
        "$B" io -c "read -P 0x33 1M 192k" -c "read -P 0 2M 64k" "$img" 2>&1 | grep -q "read 65536/65536" &&
        ! "$B" io -c "read -P 0x33 1M 192k" "$img" 2>&1 | grep -q "Pattern verification failed"; then
        ok "$desc: qemu-io data reads back through both tools"
    else
        bad "$desc: data did not read back"
    fi
    qemu_accepts "$desc after writes" "$img"
}

created "defaults" 'd["compat"] == "1.1" and j["cluster-size"] == 65536 and d["refcount-bits"] == 16 and j["virtual-size"] == 8 << 20' 8M
created "compat=0.10" 'd["compat"] == "0.10"' -o compat=0.10 8M
created "compat=v3, cluster_size=512" 'd["compat"] == "1.1" and j["cluster-size"] == 512' -o compat=v3,cluster_size=512 8M
created "cluster_size=2M" 'j["cluster-size"] == 2 << 20' -o cluster_size=2M 8M
for bits in 1 2 4 8 32 64; do
    created "refcount_bits=$bits" "d['refcount-bits'] == $bits" -o refcount_bits=$bits 8M
done
created "extended_l2" 'd["extended-l2"] is True' -o extended_l2=on 8M
created "extended_l2, 16k clusters" 'd["extended-l2"] is True and j["cluster-size"] == 16384' -o extended_l2=on,cluster_size=16k 8M
created "compression_type=zstd" 'd["compression-type"] == "zstd"' -o compression_type=zstd 8M
created "lazy_refcounts" 'd["lazy-refcounts"] is True' -o lazy_refcounts=on 8M
for p in metadata falloc full; do
    created "preallocation=$p" 'j["virtual-size"] == 8 << 20' -o preallocation=$p 8M
done
created "preallocation=metadata, 4k clusters, refcount_bits=1" 'j["cluster-size"] == 4096 and d["refcount-bits"] == 1' \
    -o preallocation=metadata,cluster_size=4096,refcount_bits=1 8M
created "backing file, size from it" 'j["backing-filename"] == "base.qcow2" and j["backing-filename-format"] == "qcow2" and j["virtual-size"] == 8 << 20' \
    -b base.qcow2 -F qcow2
created "backing file, larger overlay" 'j["backing-filename"] == "base.qcow2" and j["virtual-size"] == 16 << 20' \
    -b base.qcow2 -F qcow2 16M
created "data_file" 'd["data-file"] == "c-data.raw" and d["data-file-raw"] is False' -o data_file=c-data.raw 8M
created "data_file_raw" 'd["data-file"] == "c-raw.raw" and d["data-file-raw"] is True' -o data_file=c-raw.raw,data_file_raw=on 8M
created "zstd, extended_l2, lazy, 64-bit refcounts" \
    'd["compression-type"] == "zstd" and d["extended-l2"] and d["lazy-refcounts"] and d["refcount-bits"] == 64' \
    -o compression_type=zstd,extended_l2=on,lazy_refcounts=on,refcount_bits=64 8M

# Invalid combinations: qemu-img's message, exit 1, no image left.
# invalid DESC ARGS...: both tools refuse the same way.
invalid() {
    local desc=$1
    shift
    local size=()
    if [ $# -gt 0 ] && [[ ${*: -1} =~ ^[0-9]+[kMG]?$ ]]; then
        size=("${*: -1}")
        set -- "${@:1:$#-1}"
    fi
    rm -f bad.qcow2
    "$B" img create -q -f qcow2 "$@" bad.qcow2 "${size[@]}" >/dev/null 2>ours.err
    local rc=$?
    local left=0
    [ -e bad.qcow2 ] && left=1
    rm -f bad.qcow2
    qemu-img create -q -f qcow2 "$@" bad.qcow2 "${size[@]}" >/dev/null 2>theirs.err
    local trc=$?
    rm -f bad.qcow2
    sed -i 's/^blockgraph img: //' ours.err
    sed -i 's/^qemu-img: //' theirs.err
    # Compared as one line (ours prints the backing-format hint on the
    # same line, qemu-img on the next).
    if [ $rc = 1 ] && [ $trc = 1 ] && [ "$(tr '\n' ' ' <ours.err | sed 's/ *$//')" = "$(tr '\n' ' ' <theirs.err | sed 's/ *$//')" ]; then
        ok "$desc: refused as qemu-img ($(head -1 theirs.err))"
    else
        bad "$desc: exit $rc (qemu-img $trc): '$(cat ours.err)' vs '$(cat theirs.err)'"
    fi
    if [ $left = 0 ]; then ok "$desc: no image left"; else bad "$desc: an image was left behind"; fi
}
invalid "cluster_size=1000" -o cluster_size=1000 8M
invalid "cluster_size=4M" -o cluster_size=4M 8M
invalid "refcount_bits=3" -o refcount_bits=3 8M
invalid "refcount_bits=128" -o refcount_bits=128 8M
invalid "compat=0.10, lazy_refcounts" -o compat=0.10,lazy_refcounts=on 8M
invalid "compat=0.10, refcount_bits=8" -o compat=0.10,refcount_bits=8 8M
invalid "compat=0.10, extended_l2" -o compat=0.10,extended_l2=on 8M
invalid "extended_l2, cluster_size=8k" -o extended_l2=on,cluster_size=8k 8M
invalid "compat=0.10, zstd" -o compat=0.10,compression_type=zstd 8M
invalid "compression_type=lzo" -o compression_type=lzo 8M
invalid "data_file_raw without data_file" -o data_file_raw=on 8M
invalid "preallocation=bogus" -o preallocation=bogus 8M
invalid "compat=9" -o compat=9 8M
invalid "no size" 
invalid "backing file without format" -b base.qcow2

finish
