# tests/integration/qmp-create.py -- blockdev-create, the "create" job (run
# by qmp-create.sh; QMP_TARGET=qsd runs it against qemu-storage-daemon):
#   the QEMU flow: blockdev-create driver=file -> the job's events
#     (created, running, waiting, pending, concluded; null on job-dismiss),
#     query-jobs (type create, progress 1/1), absent from query-block-jobs,
#     not dismissed by itself; blockdev-add of a file node over the new
#     file; blockdev-create driver=qcow2 onto that node with each option
#     (cluster-size, lazy-refcounts, refcount-bits, extended-l2, version,
#     backing-file/backing-fmt, preallocation metadata/falloc/full,
#     compression-type zstd, data-file (+ data-file-raw));
#   the oracles: each image's qemu-img info (paths aside) equals that of
#     the image qemu-img create makes with the same options, qemu-img
#     check finds it clean, and (target blockgraph) the same session run
#     against qemu-storage-daemon makes a file of the same length and, but
#     for preallocated data, the same bytes;
#   the images work: blockdev-add qcow2 over one, a FUSE export of it
#     takes writes, reads them back; qemu-io reads them after quit;
#   a qcow2 onto an inline file node (gone after the job);
#   job-cancel of a running create job: it finishes, then concludes with
#     'Operation canceled' (as QEMU: creation cannot be interrupted);
#   a file's exact size (1000 bytes: QEMU rounds only qemu-img's sizes);
#   a qcow2 onto a longer file leaves its length;
#   errors with QSD's texts: the command's (schema: raw's branch, unknown
#     driver, drivers without blockdev-create, missing/unexpected members,
#     wrong types, enum values, job ids) and the job's (a missing node,
#     size not a multiple of 512, bad cluster size, refcount width, v2
#     with lazy refcounts, backing format without file, data-file-raw
#     without data-file, preallocation with a backing file, a file in a
#     missing directory, preallocation=metadata of a file, extent size
#     hint too large, a node whose parent does not share write, a file
#     locked by a node, a read-only node, a size beyond the L1 table's
#     limit, an inline node that does not open): created, running, aborting, concluded, and the
#     error in query-jobs; job-dismiss of a running job is refused;
#   Ours only: quit and SIGTERM while a create job writes a preallocated
#     image: exit 0, the image complete and clean (qemu-img check)
#     (qemu-storage-daemon 7.2 aborts on quit there, and hangs on SIGTERM);
#     encrypt is refused with our text.
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Daemon, Test, dd, read_at, run  # noqa: E402

K = 1 << 10
M = 1 << 20
G = 1 << 30


def statuses(c, jid, final, timeout=60.0):
    """The JOB_STATUS_CHANGE statuses of job JID up to FINAL (consumed)."""
    out = []
    while True:
        e = c.wait_event("JOB_STATUS_CHANGE", timeout=timeout, pred=lambda e: e["data"]["id"] == jid)
        out.append(e["data"]["status"])
        if out[-1] == final:
            return out


def query_job(c, jid):
    for j in c.cmd("query-jobs")["return"]:
        if j["id"] == jid:
            return j
    return None


class Session:
    """One daemon in its own directory (relative file names, so that the
    images' recorded names are the same for every daemon)."""

    def __init__(self, t, kind, name):
        self.t = t
        self.dir = os.path.join(t.work, name)
        os.makedirs(self.dir)
        self.d = Daemon(t, [], kind=kind, name=name, cwd=self.dir)
        self.c = self.d.qmp()
        self.n = 0

    def path(self, f):
        return os.path.join(self.dir, f)

    def job(self, opts, desc, error=None):
        """blockdev-create OPTS as a new job; checks the reply, the status
        sequence and query-jobs' entry (ERROR: the job must fail with it),
        then dismisses it (its null event)."""
        t, c = self.t, self.c
        self.n += 1
        jid = f"job{self.n}"
        r = c.cmd("blockdev-create", job_id=jid, options=opts)
        if not t.ret(r, f"{desc}: blockdev-create returns", {}):
            return False
        seq = statuses(c, jid, "concluded")
        want = ["created", "running", "aborting", "concluded"] if error else \
            ["created", "running", "waiting", "pending", "concluded"]
        ok = t.eq(seq, want, f"{desc}: job events")
        q = query_job(c, jid)
        want_q = {"id": jid, "type": "create", "status": "concluded", "current-progress": 1, "total-progress": 1}
        if error:
            want_q["error"] = error
        ok = t.eq(q, want_q, f"{desc}: query-jobs" + (f" error {error!r}" if error else "")) and ok
        t.ret(c.cmd("job-dismiss", id=jid), f"{desc}: job-dismiss", {})
        t.eq(statuses(c, jid, "null"), ["null"], f"{desc}: null after job-dismiss")
        return ok

    def new_file_node(self, fname, node, size=0):
        ok = self.job({"driver": "file", "filename": fname, "size": size}, f"file {fname}")
        r = self.c.cmd("blockdev-add", driver="file", filename=fname, node_name=node)
        return self.t.ret(r, f"blockdev-add file node {node}") and ok


# Each case: name, blockdev-create qcow2 options (besides file/size),
# qemu-img create's equivalent, the virtual size, and whether the bytes
# must equal QSD's (preallocated data clusters are placed differently).
CASES = [
    ("default", {}, [], 64 * M, True),
    ("small-clusters", {"cluster-size": 4096, "lazy-refcounts": True, "refcount-bits": 8},
     ["-o", "cluster_size=4096,lazy_refcounts=on,refcount_bits=8"], 64 * M, True),
    ("extended-l2", {"extended-l2": True, "cluster-size": 128 * K},
     ["-o", "extended_l2=on,cluster_size=131072"], 64 * M, True),
    ("refcount-1", {"refcount-bits": 1}, ["-o", "refcount_bits=1"], 64 * M, True),
    ("v2", {"version": "v2"}, ["-o", "compat=0.10"], 64 * M, True),
    ("backing", {"backing-file": "base.qcow2", "backing-fmt": "qcow2"},
     ["-u", "-b", "base.qcow2", "-F", "qcow2"], 64 * M, True),
    ("zstd", {"compression-type": "zstd"}, ["-o", "compression_type=zstd"], 64 * M, True),
    ("big", {}, [], 3 * G, True),
    ("metadata", {"preallocation": "metadata"}, ["-o", "preallocation=metadata"], 16 * M, True),
    ("falloc", {"preallocation": "falloc"}, ["-o", "preallocation=falloc"], 4 * M, False),
    ("full", {"preallocation": "full", "cluster-size": 8192}, ["-o", "preallocation=full,cluster_size=8192"],
     4 * M, False),
    ("data-file", {"data-file": "DATA"}, ["-o", "data_file=DATA"], 8 * M, True),
    ("data-file-raw", {"data-file": "DATA", "data-file-raw": True}, ["-o", "data_file=DATA,data_file_raw=on"],
     8 * M, True),
]


def info_view(path):
    """qemu-img info of PATH without what depends on where and when."""
    i = json.loads(run(["qemu-img", "info", "--output=json", "-U", path], check=True).stdout)
    for k in ("filename", "actual-size", "full-backing-filename"):
        i.pop(k, None)
    return i


def make_cases(s):
    """Creates every case's image through session S; returns {name: ok}."""
    done = {}
    for name, opts, _, size, _ in CASES:
        fname = f"{name}.qcow2"
        ok = s.new_file_node(fname, f"f-{name}")
        o = {"driver": "qcow2", "file": f"f-{name}", "size": size}
        o.update(opts)
        if "data-file" in o:
            dname = f"{name}.data"
            ok = s.new_file_node(dname, f"d-{name}") and ok
            o["data-file"] = f"d-{name}"
        ok = s.job(o, f"qcow2 {name}") and ok
        done[name] = ok
    return done


def flow(t, s, ref):
    t.section("blockdev-create file: the job")
    c = s.c
    r = c.cmd("blockdev-create", job_id="j0", options={"driver": "file", "filename": "a.img", "size": 0})
    t.ret(r, "blockdev-create file returns {}", {})
    t.eq(statuses(c, "j0", "concluded"), ["created", "running", "waiting", "pending", "concluded"],
         "JOB_STATUS_CHANGE: created, running, waiting, pending, concluded")
    t.check(c.quiet(0.3), "no other event (not a block job), not dismissed by itself")
    t.ret(c.cmd("query-jobs"), "query-jobs: the concluded job",
          [{"id": "j0", "type": "create", "status": "concluded", "current-progress": 1, "total-progress": 1}])
    t.ret(c.cmd("query-block-jobs"), "query-block-jobs: not a block job", [])
    t.eq(os.path.getsize(s.path("a.img")), 0, "the file exists, empty")
    t.error(c.cmd("blockdev-create", job_id="j0", options={"driver": "file", "filename": "b.img", "size": 0}),
            "the id is taken until dismissed", "Job ID 'j0' already in use")
    t.ret(c.cmd("job-dismiss", id="j0"), "job-dismiss", {})
    t.eq(statuses(c, "j0", "null"), ["null"], "JOB_STATUS_CHANGE null")
    t.ret(c.cmd("query-jobs"), "query-jobs: empty", [])
    t.error(c.cmd("job-dismiss", id="j0"), "job-dismiss again", "Job not found")

    t.section("file sizes")
    s.job({"driver": "file", "filename": "odd.raw", "size": 1000}, "file of 1000 bytes")
    t.eq(os.path.getsize(s.path("odd.raw")), 1000, "exactly 1000 bytes (not rounded)")
    s.job({"driver": "file", "filename": "full.raw", "size": 3 * M, "preallocation": "full"}, "preallocation full")
    st = os.stat(s.path("full.raw"))
    t.check(st.st_size == 3 * M and st.st_blocks * 512 >= 3 * M, "3 MiB, allocated", (st.st_size, st.st_blocks))
    s.job({"driver": "file", "filename": "long.qcow2", "size": 10 * M}, "a 10 MiB file")
    t.ret(c.cmd("blockdev-add", driver="file", filename="long.qcow2", node_name="f-long"), "blockdev-add f-long")
    s.job({"driver": "qcow2", "file": "f-long", "size": G}, "qcow2 onto the 10 MiB file")
    t.eq(os.path.getsize(s.path("long.qcow2")), 10 * M, "the file keeps its length")
    t.eq(run(["qemu-img", "check", "-U", s.path("long.qcow2")]).returncode, 0, "qemu-img check: clean")

    t.section("an inline file node (opened for the job only)")
    s.job({"driver": "file", "filename": "inline.qcow2", "size": 0}, "file inline.qcow2")
    before = sorted(n["node-name"] for n in c.cmd("query-named-block-nodes")["return"])
    s.job({"driver": "qcow2", "file": {"driver": "file", "filename": "inline.qcow2"}, "size": 32 * M},
          "qcow2 onto an inline file node")
    t.eq(sorted(n["node-name"] for n in c.cmd("query-named-block-nodes")["return"]), before,
         "the inline node is gone after the job")
    t.eq(info_view(s.path("inline.qcow2"))["virtual-size"], 32 * M, "a 32 MiB qcow2 image")

    t.section("blockdev-create qcow2 onto file nodes, each option")
    run(["qemu-img", "create", "-q", "-f", "qcow2", s.path("base.qcow2"), "64M"], check=True)
    done = make_cases(s)
    if ref:
        run(["qemu-img", "create", "-q", "-f", "qcow2", ref.path("base.qcow2"), "64M"], check=True)
        make_cases(ref)
    # qemu-img create's images, for the same options.
    imgdir = os.path.join(t.work, "img")
    os.makedirs(imgdir)
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(imgdir, "base.qcow2"), "64M"], check=True)
    for name, opts, img_args, size, same_bytes in CASES:
        if not done.get(name):
            continue
        ours = s.path(f"{name}.qcow2")
        mine = os.path.join(imgdir, f"{name}.qcow2")
        args = [a.replace("DATA", f"{name}.data") for a in img_args]
        p = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, mine, str(size)], cwd=imgdir,
                           capture_output=True, text=True, timeout=60)
        if not t.check(p.returncode == 0, f"{name}: qemu-img create {' '.join(args)}", p.stderr):
            continue
        t.eq(info_view(ours), info_view(mine), f"{name}: qemu-img info as qemu-img create's image")
        p = subprocess.run(["qemu-img", "check", "-U", ours], cwd=s.dir, capture_output=True, text=True, timeout=60)
        t.check(p.returncode == 0, f"{name}: qemu-img check clean", p.stdout + p.stderr)
        if ref:
            theirs = ref.path(f"{name}.qcow2")
            t.eq(os.path.getsize(ours), os.path.getsize(theirs), f"{name}: file length as QSD's")
            if "data-file" in opts:
                t.eq(os.path.getsize(s.path(f"{name}.data")), os.path.getsize(ref.path(f"{name}.data")),
                     f"{name}: data file length as QSD's")
            if same_bytes:
                t.check(open(ours, "rb").read() == open(theirs, "rb").read(), f"{name}: the same bytes as QSD's")
            else:
                t.eq(info_view(ours), info_view(theirs), f"{name}: qemu-img info as QSD's")


def io(t, s):
    t.section("the new image works")
    c = s.c
    s.new_file_node("io.qcow2", "f-io")
    s.job({"driver": "qcow2", "file": "f-io", "size": 8 * M, "cluster-size": 16 * K}, "qcow2 io")
    t.ret(c.cmd("blockdev-add", driver="qcow2", node_name="q-io", file="f-io"), "blockdev-add qcow2 over it")
    mp = s.path("mp")
    open(mp, "w").close()
    t.ret(c.cmd("block-export-add", type="fuse", id="e0", node_name="q-io", mountpoint=mp, writable=True),
          "FUSE export of it")
    pat = bytes((i * 7 + 3) & 0xff for i in range(256)) * (4 * K)
    with open(s.path("pat"), "wb") as f:
        f.write(pat)
    t.eq(dd(s.path("pat"), mp, off=M + 512, length=len(pat)).returncode, 0, "write 1 MiB at 1M+512")
    t.check(read_at(mp, M + 512, len(pat)) == pat, "read it back")
    t.check(read_at(mp, 0, 64 * K) == bytes(64 * K), "zeros elsewhere")
    t.ret(c.cmd("block-export-del", id="e0"), "block-export-del")
    s.c.wait_event("BLOCK_EXPORT_DELETED")


def errors(t, s):
    t.section("errors of the command (schema, driver, job id)")
    c = s.c
    s.new_file_node("e.qcow2", "f-e")
    q = {"driver": "qcow2", "file": "f-e", "size": M}
    cases = [
        ({"driver": "raw", "size": 5}, "Parameter 'options.size' is unexpected"),
        ({"driver": "raw"}, "Driver does not support blockdev-create"),
        ({"driver": "nbd"}, "Driver does not support blockdev-create"),
        ({"driver": "null-co", "size": 1}, "Parameter 'options.size' is unexpected"),
        ({"driver": "foo"}, "Parameter 'driver' does not accept value 'foo'"),
        ({"driver": 5}, "Invalid parameter type for 'options.driver', expected: string"),
        ({"size": 1024}, "Parameter 'options.driver' is missing"),
        ({"driver": "qcow2", "file": "f-e"}, "Parameter 'options.size' is missing"),
        ({"driver": "file", "size": 1024}, "Parameter 'options.filename' is missing"),
        ({"driver": "file", "filename": 5, "size": 1024},
         "Invalid parameter type for 'options.filename', expected: string"),
        ({"driver": "file", "filename": "x", "size": 1, "preallocation": "zz"},
         "Parameter 'preallocation' does not accept value 'zz'"),
        ({"driver": "file", "filename": "x", "size": 1, "nocow": "zz"},
         "Invalid parameter type for 'options.nocow', expected: boolean"),
        (dict(q, size="1"), "Parameter 'options.size' expects uint64"),
        (dict(q, size=1.5), "Parameter 'options.size' expects uint64"),
        (dict(q, **{"cluster-size": "64k"}), "Parameter 'options.cluster-size' expects uint64"),
        (dict(q, version="v4"), "Parameter 'version' does not accept value 'v4'"),
        (dict(q, bogus=1), "Parameter 'options.bogus' is unexpected"),
        (dict(q, file=5), "Invalid parameter type for 'file', expected: BlockdevRef"),
        (dict(q, **{"data-file": 5}), "Invalid parameter type for 'data-file', expected: BlockdevRef"),
        (dict(q, **{"refcount-bits": "a"}), "Invalid parameter type for 'options.refcount-bits', expected: integer"),
        (dict(q, **{"lazy-refcounts": 1}), "Invalid parameter type for 'options.lazy-refcounts', expected: boolean"),
        (dict(q, preallocation="x"), "Parameter 'preallocation' does not accept value 'x'"),
        (dict(q, **{"compression-type": "lz4"}), "Parameter 'compression-type' does not accept value 'lz4'"),
        (dict(q, **{"backing-fmt": "x"}), "Parameter 'backing-fmt' does not accept value 'x'"),
        (dict(q, **{"backing-file": 5}), "Invalid parameter type for 'options.backing-file', expected: string"),
        (dict(q, encrypt=5), "Invalid parameter type for 'options.encrypt', expected: object"),
    ]
    for opts, text in cases:
        t.error(c.cmd("blockdev-create", job_id="x", options=opts), f"{json.dumps(opts)}", text)
    t.error(c.cmd("blockdev-create", job_id="x", options=5), "options 5",
            "Invalid parameter type for 'options', expected: object")
    t.error(c.cmd("blockdev-create", job_id="", options=q), "job-id ''", "Invalid job ID ''")
    t.error(c.cmd("blockdev-create", job_id=5, options=q), "job-id 5",
            "Invalid parameter type for 'job-id', expected: string")
    t.error(c.cmd("blockdev-create", options=q), "no job-id", "Parameter 'job-id' is missing")
    t.error(c.cmd("blockdev-create", job_id="x"), "no options", "Parameter 'options' is missing")
    t.ret(c.cmd("query-jobs"), "no job was made", [])

    t.section("errors of the job")
    jobs = [
        (dict(q, file="nosuch"), "Cannot find device='nosuch' nor node-name='nosuch'"),
        (dict(q, **{"data-file": "nosuch"}), "Cannot find device='nosuch' nor node-name='nosuch'"),
        (dict(q, size=1000), "Image size must be a multiple of 512 bytes"),
        (dict(q, size=-1), "Image size must be a multiple of 512 bytes"),
        (dict(q, **{"cluster-size": 1000}), "Cluster size must be a power of two between 512 and 2048k"),
        (dict(q, **{"cluster-size": 4 * M}), "Cluster size must be a power of two between 512 and 2048k"),
        (dict(q, **{"refcount-bits": 3}), "Refcount width must be a power of two and may not exceed 64 bits"),
        (dict(q, **{"refcount-bits": 128}), "Refcount width must be a power of two and may not exceed 64 bits"),
        (dict(q, version="v2", **{"lazy-refcounts": True}),
         "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"),
        (dict(q, **{"backing-fmt": "raw"}), "Backing format cannot be used without backing file"),
        (dict(q, **{"data-file-raw": True}), "data-file-raw requires data-file"),
        (dict(q, preallocation="full", **{"backing-file": "x"}),
         "Backing file and preallocation can only be used at the same time if extended_l2 is on"),
        (dict(q, **{"extended-l2": True, "cluster-size": 4096}),
         "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"),
        ({"driver": "file", "filename": "/nonexistent/dir/x", "size": 0},
         "Could not create '/nonexistent/dir/x': No such file or directory"),
        ({"driver": "file", "filename": "m.raw", "size": M, "preallocation": "metadata"},
         "Unsupported preallocation mode: metadata"),
        ({"driver": "file", "filename": "h.raw", "size": M, "extent-size-hint": 1 << 40},
         "Extent size hint is too large"),
        ({"driver": "file", "filename": "neg.raw", "size": -1}, "Could not resize file: Invalid argument"),
    ]
    open(s.path("ro.img"), "w").close()
    t.ret(c.cmd("blockdev-add", driver="file", filename="ro.img", node_name="f-ro", read_only=True),
          "blockdev-add a read-only file node")
    jobs += [
        (dict(q, file="f-ro"), "Block node is read-only"),
        (dict(q, file={"driver": "file", "filename": "nonex.img"}),
         "Could not open 'nonex.img': No such file or directory"),
    ]
    for opts, text in jobs:
        s.job(opts, json.dumps(opts), error=text)
    # A node in use (f-io, under q-io since io()): the new image's writer
    # conflicts with the qcow2 node over it; the file under a node is locked.
    s.job(dict(q, file="f-io"), "qcow2 onto a node a qcow2 node uses",
          error="Permission conflict on node 'f-io': permissions 'write, resize' are both required by an unnamed "
                "block device (uses node 'f-io' as 'root' child) and unshared by node 'q-io' (uses node 'f-io' "
                "as 'file' child).")
    s.job({"driver": "file", "filename": "io.qcow2", "size": 0}, "file over an image in use",
          error='Failed to get "write" lock')

    if t.ours():
        s.job(dict(q, encrypt={"format": "luks", "key-secret": "s"}), "encrypt (ours: refused)",
              error="qcow2 encryption is not supported by blockgraph; create the image unencrypted "
                    "(and encrypt the storage below it)")
    t.eq(os.path.getsize(s.path("neg.raw")), 0, "size -1 (2^64 - 1): the file is made, empty")
    t.eq(os.path.getsize(s.path("e.qcow2")), 0, "the failed jobs wrote nothing onto f-e")
    # QEMU finds these after it wrote a first header onto f-e.
    s.job(dict(q, **{"data-file": "f-ro"}), "read-only data file", error="Block node is read-only")
    s.job(dict(q, size=1 << 62), "size 2^62", error="Could not resize image: Failed to grow the L1 table: File too large")


def running(t, s):
    t.section("a running create job")
    c = s.c
    s.new_file_node("run.qcow2", "f-run")
    r = c.cmd("blockdev-create", job_id="r1",
              options={"driver": "qcow2", "file": "f-run", "size": 256 * M, "preallocation": "full"})
    t.ret(r, "blockdev-create a 256 MiB fully preallocated qcow2", {})
    q = query_job(c, "r1")
    if q and q["status"] == "running":
        t.eq(q, {"id": "r1", "type": "create", "status": "running", "current-progress": 0, "total-progress": 1},
             "query-jobs while it runs: progress 0/1")
        t.error(c.cmd("job-dismiss", id="r1"), "job-dismiss of the running job",
                "Job 'r1' in state 'running' cannot accept command verb 'dismiss'")
    statuses(c, "r1", "concluded")
    t.ret(c.cmd("job-dismiss", id="r1"), "job-dismiss once concluded", {})

    t.section("job-cancel of a running create job: it finishes, then concludes as cancelled")
    c.events.clear()
    r = c.cmd("blockdev-create", job_id="r2",
              options={"driver": "qcow2", "file": "f-run", "size": 256 * M, "preallocation": "full"})
    t.ret(r, "blockdev-create again onto the same node", {})
    t.ret(c.cmd("job-cancel", id="r2"), "job-cancel", {})
    t.eq(statuses(c, "r2", "concluded"), ["created", "running", "aborting", "concluded"],
         "events: created, running, aborting, concluded")
    t.eq(query_job(c, "r2"), {"id": "r2", "type": "create", "status": "concluded", "current-progress": 1,
                              "total-progress": 1, "error": "Operation canceled"}, "query-jobs: 'Operation canceled'")
    t.ret(c.cmd("job-dismiss", id="r2"), "job-dismiss", {})
    p = run(["qemu-img", "check", "-U", s.path("run.qcow2")])
    t.check(p.returncode == 0, "qemu-img check: the image is complete and clean", p.stdout + p.stderr)
    t.eq(info_view(s.path("run.qcow2"))["virtual-size"], 256 * M, "its virtual size")


def interrupted(t, kind, how):
    t.section(f"{how} while a create job runs")
    s = Session(t, kind, f"{how}-d")
    s.new_file_node("x.qcow2", "fx")
    r = s.c.cmd("blockdev-create", job_id="big",
                options={"driver": "qcow2", "file": "fx", "size": 256 * M, "preallocation": "full"})
    t.ret(r, "blockdev-create of a 256 MiB fully preallocated qcow2", {})
    if how == "quit":
        s.c.send_raw(b'{"execute": "quit"}\n')
    else:
        s.d.proc.terminate()
    rc = s.d.wait(60)
    t.eq(rc, 0, f"the daemon exits 0 on {how}")
    p = run(["qemu-img", "check", s.path("x.qcow2")])
    t.check(p.returncode == 0, "qemu-img check: the image is complete and clean", p.stdout + p.stderr)
    t.eq(info_view(s.path("x.qcow2"))["virtual-size"], 256 * M, "its virtual size")


def main():
    with Test("qmp-create") as t:
        s = Session(t, t.kind, "main")
        ref = Session(t, "qsd", "ref") if t.ours() else None
        t.part(flow, t, s, ref)
        t.part(io, t, s)
        t.part(errors, t, s)
        t.part(running, t, s)
        t.stop(s.d)
        if ref:
            ref.d.stop()
        p = run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P 0 0 {M + 512}", "-c", f"read -P 0 {2 * M + 512} 1M",
                 "-c", f"read -v {M + 512} 16", s.path("io.qcow2")])
        t.check(p.returncode == 0 and "Pattern verification failed" not in p.stdout,
                "qemu-io: zeros around the write", p.stdout + p.stderr)
        t.check("03 0a 11 18 1f 26 2d 34" in p.stdout, "qemu-io: the pattern at 1M+512", p.stdout)
        p = run(["qemu-img", "check", s.path("io.qcow2")])
        t.check(p.returncode == 0, "qemu-img check of the written image", p.stdout + p.stderr)
        # Ours only: qemu-storage-daemon 7.2 aborts (SIGABRT) on quit
        # while a create job runs, and hangs on SIGTERM.
        if t.ours():
            for how in ("quit", "SIGTERM"):
                t.part(interrupted, t, t.kind, how)
        if t.failures:
            sys.exit(1)


main()
