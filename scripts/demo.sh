#!/usr/bin/env bash
# scripts/demo.sh -- show blockgraph working.  Run by "make demo" after the
# build; BLOCKGRAPH may point at the binary (default: build/blockgraph).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BLOCKGRAPH=${BLOCKGRAPH:-$PWD/build/blockgraph}

if [[ ! -x $BLOCKGRAPH ]]; then
    echo "demo: $BLOCKGRAPH not found; run make first" >&2
    exit 1
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/blockgraph-demo.XXXXXX")
cleanup() {
    rm -rf "$workdir"
}
trap cleanup EXIT

step() {
    printf '\n==> %s\n' "$*"
}

cd "$workdir"

step "blockgraph --version"
"$BLOCKGRAPH" --version

step "blockgraph --help"
"$BLOCKGRAPH" --help

printf '\ndemo: done\n'
