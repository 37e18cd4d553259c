#!/usr/bin/env python3
# scripts/check-layering.py -- checks the #include "..." lines of the source
# tree against the layering rules (docs/architecture.md, "Dependencies are
# one-way"). Run by "make check-layering" (after tests/layering/selftest.sh).
#
# Usage: scripts/check-layering.py [ROOT]
#   ROOT: the source root to check (default: this script's parent directory).
#
# Prints one line per violation, "FILE:LINE: [RULE] message", and exits 1 if
# there is any, else prints a summary and exits 0. Exit 2: usage error.
#
# Rules:
#   util       util/ includes nothing from block/, export/, monitor/, qapi/, tools/.
#   block      block/ includes nothing from export/, monitor/ or tools/.
#   driver     a driver's file includes, of block/, only its own headers,
#              the driver-author contract (DRIVER_CONTRACT) and consumer
#              headers (CONSUMER_HEADERS); in particular no other driver's
#              header. Every file of block/ but CORE_FILES belongs to a
#              driver (a subdirectory, or the files of one stem).
#   consumer   export/, monitor/ and tools/ include, of block/, only consumer
#              headers (CONSUMER_HEADERS): never a driver's header nor the
#              driver-author headers.
#   monitor    the consumers depend one way: tools/ -> monitor/ -> export/;
#              export/ includes nothing from monitor/ or tools/, monitor/
#              nothing from tools/.
# Only quoted includes are checked ("...", paths from the source root, as
# the tree writes them); <...> includes are system headers.
import os
import re
import sys

# ---- the lists: extend these when a driver or a header is added ----

# The generic layer of block/: every other file under block/ belongs to a
# driver, so a new driver (block/nbd.cc, block/rbd.cc ...) is checked as one
# without being listed. A driver is a subdirectory of block/ (block/qcow2/)
# or, at the top of block/, the files sharing one stem (block/raw-format.h
# and block/raw-format.cc).
CORE_FILES = [
    "block/backend.cc",
    "block/copy.cc",
    "block/dirty-bitmap.cc",
    "block/drivers.cc",
    "block/filter.cc",
    "block/graph.cc",
    "block/image-mgmt.cc",
    "block/io.cc",
    "block/job.cc",
    "block/passthrough.cc",
]

# What every driver may include besides its own headers: the driver-author
# contract (block-driver.h brings driver-hooks.h; both may be named).
DRIVER_CONTRACT = ["block/block-driver.h", "block/driver-hooks.h"]

# Headers for driver authors only (named as such in messages).
DRIVER_AUTHOR_HEADERS = ["block/block-driver.h", "block/driver-hooks.h"]

# Headers written for consumers (exports, tools): the only block/ headers
# export/ and tools/ may include; drivers may include them too.
CONSUMER_HEADERS = [
    "block/block.h",
    "block/block-common.h",
    "block/image-mgmt.h",
    "block/copy.h",
    "block/dirty-bitmap.h",
    "block/job.h",
    "block/jobs.h",
]

# Block jobs (block/jobs.h) are files of block/ like drivers (each may hold
# its own filter driver, as mirror holds mirror_top), and a job may drive a
# filter driver of another file through that driver's header: the one
# exception to "no driver includes another driver's header", listed here
# job by job.
JOB_USES = {
    "backup": ["copy-before-write"],
    # block/job-chain.h: the backing-chain helpers commit and stream share.
    "commit": ["job-chain"],
    "stream": ["job-chain"],
}

# Directories outside block/ that export/ and tools/ may include from.
CONSUMER_MAY_USE_DIRS = ["qapi/", "util/", "export/", "monitor/", "tools/"]

# Source directories checked, and the extensions of their files.
CHECKED_DIRS = ["util", "block", "export", "monitor", "tools"]
EXTENSIONS = (".h", ".cc")

# ---- the checks ----

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def driver_of(path):
    """The name of the driver path belongs to, or None (not a driver's)."""
    if not path.startswith("block/") or path in CORE_FILES:
        return None
    if path in DRIVER_CONTRACT or path in CONSUMER_HEADERS:
        return None
    rest = path[len("block/"):]
    if "/" in rest:
        return rest.split("/", 1)[0]
    return os.path.splitext(rest)[0]


def check_include(path, inc):
    """(rule, message) if path may not include inc, else None."""
    top = path.split("/", 1)[0]
    inc_top = inc.split("/", 1)[0] + "/"
    if top == "util" and inc_top in ("block/", "export/", "monitor/", "qapi/", "tools/"):
        return "util", "util/ must not include %s (util/ knows nothing of %s)" % (inc, inc_top)
    if top == "block" and inc_top in ("export/", "monitor/", "tools/"):
        return "block", "block/ must not include %s (block/ knows no consumer)" % inc
    if top == "block":
        drv = driver_of(path)
        if drv is None or inc_top != "block/":
            return None
        if inc in DRIVER_CONTRACT or inc in CONSUMER_HEADERS:
            return None
        other = driver_of(inc)
        if other == drv or other in JOB_USES.get(drv, []):
            return None
        return "driver", ("the %s driver must not include %s (%s); a driver includes only its own headers, "
                          "%s and consumer headers" % (drv, inc, describe(inc), ", ".join(DRIVER_CONTRACT)))
    if (top == "export" and inc_top in ("monitor/", "tools/")) or (top == "monitor" and inc_top == "tools/"):
        return "monitor", "%s/ must not include %s (consumers depend one way: tools/ -> monitor/ -> export/)" % (
            top, inc)
    if top in ("export", "monitor", "tools"):
        if inc in CONSUMER_HEADERS or inc_top in CONSUMER_MAY_USE_DIRS:
            return None
        return "consumer", ("%s/ must not include %s (%s); consumers include only consumer headers (%s), "
                            "qapi/, util/, export/, monitor/, tools/" % (top, inc, describe(inc), ", ".join(CONSUMER_HEADERS)))
    return None


def describe(inc):
    """What kind of header inc is, for messages."""
    drv = driver_of(inc)
    if drv:
        return "the %s driver's header" % drv
    if inc in DRIVER_AUTHOR_HEADERS:
        return "a driver-author header"
    return "not a consumer header"


def source_files(root):
    for d in CHECKED_DIRS:
        base = os.path.join(root, d)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for f in sorted(filenames):
                if f.endswith(EXTENSIONS):
                    full = os.path.join(dirpath, f)
                    yield os.path.relpath(full, root).replace(os.sep, "/"), full


def main(argv):
    if len(argv) > 2:
        print("usage: check-layering.py [ROOT]", file=sys.stderr)
        return 2
    root = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if not os.path.isdir(os.path.join(root, "block")):
        print("check-layering: %s has no block/ directory" % root, file=sys.stderr)
        return 2
    violations = 0
    files = 0
    for rel, full in source_files(root):
        files += 1
        with open(full, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                bad = check_include(rel, m.group(1))
                if bad:
                    violations += 1
                    print("%s:%d: [%s] %s" % (rel, lineno, bad[0], bad[1]))
    if violations:
        print("check-layering: %d violation(s) in %d files checked" % (violations, files))
        return 1
    print("check-layering: %d files follow the layering rules" % files)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
