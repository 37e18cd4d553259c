#!/bin/bash
# tests/integration/fuse-attr.sh -- attributes of a FUSE export's file:
# stat, statfs, chmod, chown, touch.
#
# For each format:
#  (a) allow-other=off, writable: stat shows a regular file of the image's
#      size, mode 0600, the daemon's uid/gid, one link, st_blocks of the
#      image file (0 for a sparse raw image); the mount options are "rw" and have no
#      allow_other; statfs (stat -f) reports 512-byte blocks covering the
#      image and no free space; touch (with and without a date) succeeds and
#      changes no time (times are ignored); chmod changes permission bits;
#      chown fails with "Operation not supported" (nobody else can see the
#      file);
#  (b) allow-other=on: the mount has allow_other and chown 1:2 shows in
#      stat;
#  (c) a read-only export's mount options are "ro".
set -euo pipefail
source "$(dirname "$0")/lib-fuse.sh"
fuse_require_tools

M=$((1 << 20))
mntopts() { awk -v p="$WORK/$1" '$5 == p { print $6 "," $NF }' /proc/self/mountinfo; }

for fmt in $FUSE_FORMATS; do
    echo "format $fmt"
    rm -f img mp
    if [ "$fmt" = raw ]; then truncate -s $((3 * M)) img; else fuse_image "$fmt" img $((3 * M)); fi
    touch mp
    fuse_blockdevs "$fmt" img

    # (a)
    if fuse_start a "${BLOCKDEVS[@]}" \
        --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on,allow-other=off; then
        st=$(stat -c '%F|%s|%a|%u|%g|%h|%b' mp)
        want="regular file|$((3 * M))|600|$(id -u)|$(id -g)|1|$(stat -c %b img)"
        [ "$st" = "$want" ] && ok "(a) $fmt: stat: $st" || bad "(a) $fmt: stat: $st, want $want"
        o=$(mntopts mp)
        [[ ,$o, == *,rw,* && ,$o, != *,allow_other,* ]] && ok "(a) $fmt: mount options rw, no allow_other" ||
            bad "(a) $fmt: mount options: $o"
        sf=$(stat -f -c '%S|%b|%a' mp)
        [ "$sf" = "512|$((3 * M / 512))|0" ] && ok "(a) $fmt: statfs: $sf" ||
            bad "(a) $fmt: statfs: $sf, want 512|$((3 * M / 512))|0"
        t0=$(stat -c %Y.%y mp)
        if tio touch mp && tio touch -d 2001-02-03 mp; then ok "(a) $fmt: touch works"; else bad "(a) $fmt: touch failed"; fi
        check "(a) $fmt: touch changes no time" [ "$(stat -c %Y.%y mp)" = "$t0" ]
        tio chmod 0640 mp
        check "(a) $fmt: chmod 0640" eventually [ "$(stat -c %a mp)" = 640 ]
        tio chmod u=rw,go= mp
        check "(a) $fmt: chmod u=rw,go=" eventually [ "$(stat -c %a mp)" = 600 ]
        out=$(tio chown 1:2 mp 2>&1) && rc=0 || rc=$?
        [ $rc != 0 ] && [[ $out == *"Operation not supported"* ]] &&
            ok "(a) $fmt: chown without allow_other: Operation not supported" ||
            bad "(a) $fmt: chown without allow_other: exit $rc: $out"
        check "(a) $fmt: owner unchanged" [ "$(stat -c %u:%g mp)" = "$(id -u):$(id -g)" ]
        fuse_stop_check a "(a) $fmt"
    else
        bad "(a) $fmt: daemon did not start"
    fi

    # (b)
    if [ "$(id -u)" != 0 ] && ! grep -qs '^user_allow_other' /etc/fuse.conf; then
        echo "  note: allow_other needs root or user_allow_other in /etc/fuse.conf; (b) not run"
    elif fuse_start b "${BLOCKDEVS[@]}" \
        --export type=fuse,id=e,node-name=fmt0,mountpoint=mp,writable=on,allow-other=on; then
        [[ ,$(mntopts mp), == *,allow_other,* ]] && ok "(b) $fmt: allow_other mounted" ||
            bad "(b) $fmt: mount options $(mntopts mp)"
        if [ "$(id -u)" = 0 ]; then
            tio chown 1:2 mp && ok "(b) $fmt: chown 1:2" || bad "(b) $fmt: chown 1:2 failed"
            check "(b) $fmt: stat shows 1:2" eventually [ "$(stat -c %u:%g mp)" = 1:2 ]
        fi
        fuse_stop_check b "(b) $fmt"
    else
        bad "(b) $fmt: daemon with allow-other=on did not start"
    fi

    # (c)
    if fuse_start c "${BLOCKDEVS[@]}" --export type=fuse,id=e,node-name=fmt0,mountpoint=mp; then
        o=$(mntopts mp)
        [[ ,$o, == *,ro,* ]] && ok "(c) $fmt: read-only export mounted ro" || bad "(c) $fmt: mount options: $o"
        check "(c) $fmt: mode 0400" [ "$(stat -c %a mp)" = 400 ]
        fuse_stop_check c "(c) $fmt"
    else
        bad "(c) $fmt: daemon did not start"
    fi
done
finish
