#!/bin/sh
# scripts/qemu-links.sh -- create or remove the drop-in links qemu-img,
# qemu-io, qemu-nbd and qemu-storage-daemon next to an installed blockgraph
# (see tools/dropin.h and docs/building.md).
#
#   scripts/qemu-links.sh install BINDIR     BINDIR/blockgraph must exist
#   scripts/qemu-links.sh uninstall BINDIR
#
# install creates each link as a relative symlink "NAME -> blockgraph". A
# NAME that already exists is left alone when it is such a link; anything
# else there (a real QEMU binary, another link) makes the script refuse:
# nothing is changed and the exit status is 1. uninstall removes only links
# that point to blockgraph.
set -u

NAMES="qemu-img qemu-io qemu-nbd qemu-storage-daemon"

die() {
    printf 'qemu-links: %s\n' "$*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: $0 install|uninstall BINDIR"
action=$1
bindir=$2

ours() {
    [ -L "$1" ] && [ "$(readlink "$1")" = blockgraph ]
}

case $action in
install)
    [ -x "$bindir/blockgraph" ] || die "$bindir/blockgraph is not installed; run make install first"
    # Check every name before creating any, so a refusal changes nothing.
    for n in $NAMES; do
        if [ -e "$bindir/$n" ] || [ -L "$bindir/$n" ]; then
            ours "$bindir/$n" && continue
            die "refusing to replace $bindir/$n: it is not a link to blockgraph (a QEMU installation?); remove it first or install elsewhere (PREFIX=..., DESTDIR=...)"
        fi
    done
    for n in $NAMES; do
        ours "$bindir/$n" && continue
        ln -s blockgraph "$bindir/$n" || die "cannot create $bindir/$n"
        printf '  LINK    %s -> blockgraph\n' "$bindir/$n"
    done
    ;;
uninstall)
    for n in $NAMES; do
        if ours "$bindir/$n"; then rm -f "$bindir/$n" || die "cannot remove $bindir/$n"; fi
    done
    ;;
*)
    die "unknown action '$action' (install or uninstall)"
    ;;
esac
exit 0
