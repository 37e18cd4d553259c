# tests/integration/qmp-control.py -- the control commands (run by
# qmp-control.sh; QMP_TARGET=qsd runs it against qemu-storage-daemon):
#   query-version: shape, equal to the greeting's version;
#   query-commands: names every command the monitor implements (COMMANDS;
#     query-iothreads is ours only: QSD lacks it), and every name it lists
#     is a command (executing it with an unexpected argument gives an
#     argument error, "Parameter 'X' is unexpected" or "... is missing",
#     never CommandNotFound);
#   query-qmp-schema: every query-commands name is a command entry whose
#     arg-type and ret-type resolve, every type reference of every entry
#     resolves, and the arguments of the simple commands are exactly QSD's
#     (name, type, optional);
#   quit: {} then the daemon exits 0, removes its socket, and a new
#     connection is refused.
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Test, err, wait_for  # noqa: E402

COMMANDS = [
    "qmp_capabilities", "query-version", "query-commands", "query-qmp-schema", "quit",
    "blockdev-add", "blockdev-del", "blockdev-reopen", "query-named-block-nodes", "block_resize",
    "blockdev-snapshot", "blockdev-snapshot-internal-sync", "blockdev-snapshot-delete-internal-sync",
    "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
    "transaction", "block-export-add", "block-export-del", "query-block-exports",
    "object-add", "object-del", "blockdev-create",
]
OURS_ONLY = ["query-iothreads"]

# Arguments of simple commands as QSD 7.2's schema gives them: name ->
# [(member, type, optional)] with the builtin type names ("str", "int",
# "bool"); a non-builtin type shows as "*".
ARGS = {
    "block_resize": [("device", "str", True), ("node-name", "str", True), ("size", "int", False)],
    "blockdev-del": [("node-name", "str", False)],
    "query-named-block-nodes": [("flat", "bool", True)],
    "blockdev-snapshot": [("node", "str", False), ("overlay", "str", False)],
    "blockdev-snapshot-internal-sync": [("device", "str", False), ("name", "str", False)],
    "blockdev-snapshot-delete-internal-sync": [("device", "str", False), ("id", "str", True),
                                               ("name", "str", True)],
    "block-dirty-bitmap-add": [("node", "str", False), ("name", "str", False), ("granularity", "int", True),
                               ("persistent", "bool", True), ("disabled", "bool", True)],
    "block-dirty-bitmap-remove": [("node", "str", False), ("name", "str", False)],
    "block-dirty-bitmap-clear": [("node", "str", False), ("name", "str", False)],
    "block-export-del": [("id", "str", False), ("mode", "*", True)],
    "object-del": [("id", "str", False)],
    "quit": [],
    "query-version": [],
}


def version(t, c):
    t.section("query-version")
    r = c.cmd("query-version")
    v = r.get("return", {})
    t.eq(sorted(v), ["package", "qemu"], "members qemu and package")
    t.check(sorted(v.get("qemu", {})) == ["major", "micro", "minor"]
            and all(isinstance(x, int) for x in v["qemu"].values()), "qemu: integer major/minor/micro", v)
    t.eq(v, c.greeting["QMP"]["version"], "same as the greeting's version")


def commands(t, c):
    t.section("query-commands")
    r = c.cmd("query-commands")
    lst = r.get("return", [])
    t.check(isinstance(lst, list) and all(sorted(x) == ["name"] for x in lst), "a list of {name}", lst[:3])
    names = [x["name"] for x in lst]
    t.eq(len(names), len(set(names)), "no name twice")
    missing = [n for n in COMMANDS if n not in names]
    t.eq(missing, [], "every implemented command is listed")
    if t.ours():
        t.eq([n for n in OURS_ONLY if n not in names], [], "query-iothreads is listed (ours only)")
    else:
        t.error(c.cmd("query-iothreads"), "QSD has no query-iothreads",
                "The command query-iothreads has not been found", "CommandNotFound")
    bad = []
    for n in names:
        if n == "qmp_capabilities":
            continue
        e = err(c.execute(n, {"zz-unexpected": 1}, id=n))
        if not e or e[0] != "GenericError" or not e[1].startswith("Parameter '") \
                or not e[1].endswith(("' is unexpected", "' is missing")):
            bad.append((n, e))
    t.eq(bad, [], "every listed command exists and checks its arguments")
    return names


def resolve_refs(entry):
    """The type names ENTRY refers to."""
    mt = entry.get("meta-type")
    refs = []
    if mt in ("command", "event"):
        refs += [entry.get("arg-type")]
        if mt == "command":
            refs.append(entry.get("ret-type"))
    elif mt == "object":
        refs += [m.get("type") for m in entry.get("members", [])]
        refs += [v.get("type") for v in entry.get("variants", [])]
    elif mt == "alternate":
        refs += [m.get("type") for m in entry.get("members", [])]
    elif mt == "array":
        refs.append(entry.get("element-type"))
    return refs


def schema(t, c, names):
    t.section("query-qmp-schema")
    r = c.cmd("query-qmp-schema")
    ents = r.get("return", [])
    t.check(isinstance(ents, list) and len(ents) > 0, "a non-empty list")
    by = {}
    dup = []
    for e in ents:
        if e.get("name") in by:
            dup.append(e.get("name"))
        by[e.get("name")] = e
    t.eq(dup, [], "no entry name twice")
    kinds = {e.get("meta-type") for e in ents}
    t.check(kinds <= {"builtin", "enum", "array", "object", "alternate", "command", "event"},
            "meta-types are the known ones", kinds)
    nocmd = [n for n in names if by.get(n, {}).get("meta-type") != "command"]
    t.eq(nocmd, [], "every query-commands name is a command entry")
    unres = []
    for e in ents:
        for ref in resolve_refs(e):
            if ref not in by:
                unres.append((e.get("name"), ref))
    t.eq(unres, [], "every type reference resolves")
    cmds = sorted(e["name"] for e in ents if e.get("meta-type") == "command")
    t.eq([n for n in cmds if n not in names], [], "every command entry is in query-commands")
    for n in COMMANDS:
        e = by.get(n, {})
        ok = e.get("meta-type") == "command" and by.get(e.get("arg-type"), {}).get("meta-type") == "object"
        if not ok:
            t.bad(f"{n}: command entry with an object arg-type: {e}")
    for n, want in ARGS.items():
        at = by.get(by.get(n, {}).get("arg-type"), {})
        got = []
        for m in at.get("members", []):
            ty = m.get("type")
            if by.get(ty, {}).get("meta-type") != "builtin":
                ty = "*"
            got.append((m.get("name"), ty, "default" in m))
        t.eq(got, want, f"{n}: arguments")
    ba = by.get(by.get("blockdev-add", {}).get("arg-type"), {})
    t.eq(ba.get("tag"), "driver", "blockdev-add: a union on driver")
    cases = {v.get("case") for v in ba.get("variants", [])}
    t.check({"file", "raw", "qcow2", "null-co"} <= cases, "blockdev-add: file, raw, qcow2, null-co branches",
            sorted(cases))
    ea = by.get(by.get("block-export-add", {}).get("arg-type"), {})
    t.check("fuse" in {v.get("case") for v in ea.get("variants", [])}, "block-export-add: a fuse branch")


def quit_(t, d, c):
    t.section("quit")
    t.eq(c.execute("quit", id="q"), {"return": {}, "id": "q"}, "quit returns {}")
    t.check(c.at_eof(), "the server closes the connection")
    t.eq(d.wait(10), 0, "daemon exits 0")
    t.check(wait_for(lambda: not os.path.exists(d.socks["mon0"]), 2), "socket file removed")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(d.socks["mon0"])
        refused = False
    except OSError:
        refused = True
    s.close()
    t.check(refused, "no more connections")


def main():
    with Test("qmp-control", budget=60) as t:
        d = t.daemon([])
        c = d.connect()
        t.part(version, t, c)
        names = t.part(commands, t, c) or []
        t.part(schema, t, c, names)
        quit_(t, d, c)


main()
