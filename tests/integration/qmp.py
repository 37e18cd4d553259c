# tests/integration/qmp.py -- a QMP client and test helpers for the qmp-*.py
# tests (Python standard library only). Imported, not run.
#
# Target: the tests run against one daemon binary, chosen by QMP_TARGET:
#   "blockgraph" (default): "$BLOCKGRAPH daemon ..."
#   "qsd":                  "qemu-storage-daemon ..." (the oracle; every test
#                           must pass against it, except the checks marked
#                           ours-only, which test.ours() guards)
# Both get the same arguments: --chardev socket,id=ID,path=P,server=on,
# wait=off and --monitor chardev=ID for every monitor, then the test's own.
#
# Daemon(test, args, monitors=("mon0",)) starts a daemon, waits for each
# monitor socket to accept, and d.qmp() / d.connect(ID) returns a Client
# that has read the greeting and (unless negotiate=False) sent
# qmp_capabilities. Client.cmd(name, **args) returns the full reply dict
# (events seen meanwhile are kept in Client.events); Client.send_raw(bytes)
# and Client.recv() work below the command level. Daemon.stop() sends quit,
# waits, and kills on timeout; Test's cleanup stops every daemon it started,
# unmounts whatever is mounted under its work directory and removes it, on
# any exit (failure, exception, SIGTERM from the wrapper's timeout).
#
# Oracle mode: oracle_session(test, setup, script) runs one scripted QMP
# session against both qemu-storage-daemon and $BLOCKGRAPH daemon, each on
# fresh images made by setup(dir), and compares the replies after normalise()
# (timestamps, versions, the work directory and the host-dependent fields in
# HOST_FIELDS), printing a unified diff on mismatch. QMP_ORACLE_SELF=1
# (with QMP_TARGET=qsd) runs QSD in place of blockgraph too: a self-test of
# the comparison.

import difflib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

QSD = "qemu-storage-daemon"


def target():
    return os.environ.get("QMP_TARGET", "blockgraph")


def blockgraph_bin():
    b = os.environ.get("BLOCKGRAPH") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "blockgraph")
    return os.path.realpath(b)


def daemon_argv(kind):
    """The command that starts a daemon of KIND ("qsd" or "blockgraph")."""
    if kind == "qsd" or os.environ.get("QMP_ORACLE_SELF"):
        return [QSD]
    return [blockgraph_bin(), "daemon"]


class QMPError(Exception):
    pass


class Client:
    """One QMP connection. Every read has a timeout (default 10 s); a
    timeout or EOF raises QMPError."""

    def __init__(self, sock, name="qmp"):
        self.sock = sock
        self.name = name
        self.buf = b""
        self.raw = b""          # every byte received, for shape checks
        self.events = []        # events received, in order
        self.greeting = None
        self.next_id = 1
        self.closed = False

    # -- low level -----------------------------------------------------
    def send_raw(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise QMPError(f"{self.name}: timed out waiting for the server "
                           f"(buffered: {self.buf[:200]!r})")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise QMPError(f"{self.name}: timed out waiting for the server "
                           f"(buffered: {self.buf[:200]!r})") from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise QMPError(f"{self.name}: connection closed by the server")
        self.buf += data
        self.raw += data

    def recv(self, timeout=10.0):
        """The next message (event or reply) as a dict."""
        deadline = time.monotonic() + timeout
        dec = json.JSONDecoder()
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    s = text.decode()
                    obj, end = dec.raw_decode(s)
                    self.buf = s[end:].encode()
                    return obj
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
            self._fill(deadline)

    def recv_reply(self, timeout=10.0):
        """The next reply (a message with return or error), keeping the
        events read before it in self.events."""
        while True:
            m = self.recv(timeout)
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def at_eof(self, timeout=5.0):
        """True if the server closes the connection within TIMEOUT
        without sending anything more."""
        try:
            m = self.recv(timeout)
        except QMPError as e:
            return "closed" in str(e)
        raise QMPError(f"{self.name}: unexpected message {m}")

    def quiet(self, timeout=0.3):
        """True if nothing arrives within TIMEOUT."""
        try:
            m = self.recv(timeout)
        except QMPError as e:
            if "timed out" in str(e):
                return True
            raise
        raise QMPError(f"{self.name}: unexpected message {m}")

    # -- commands ------------------------------------------------------
    def execute(self, name, args=None, id=None, timeout=30.0):
        """Sends one command (with ARGS and ID as given: None leaves them
        out) and returns the full reply dict."""
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        if id is not None:
            msg["id"] = id
        self.send_raw(json.dumps(msg).encode() + b"\n")
        return self.recv_reply(timeout)

    def cmd(self, _name, _timeout=30.0, **args):
        """execute(_NAME) with keyword ARGS (underscores become dashes) and
        a fresh numeric id; checks that the reply echoes it."""
        name = _name
        args = {k.replace("_", "-"): v for k, v in args.items()}
        i = self.next_id
        self.next_id += 1
        r = self.execute(name, args if args else None, id=i, timeout=_timeout)
        if r.get("id") != i:
            raise QMPError(f"{self.name}: reply to {name} id {i} has id {r.get('id')!r}: {r}")
        return r

    def negotiate(self):
        r = self.execute("qmp_capabilities")
        if r != {"return": {}}:
            raise QMPError(f"{self.name}: qmp_capabilities: {r}")

    def wait_event(self, name, timeout=10.0, pred=None, keep=False):
        """Returns (and removes, unless KEEP) the first event NAME (matching
        PRED) seen so far or arriving within TIMEOUT."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("event") == name and (pred is None or pred(e)):
                    return e if keep else self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"{self.name}: no {name} event within {timeout} s")
            m = self.recv(left)
            if "event" not in m:
                raise QMPError(f"{self.name}: unexpected reply {m} while waiting for {name}")
            self.events.append(m)

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def connect_unix(path, timeout=10.0, name="qmp", negotiate=True):
    """Connects to the socket at PATH (retrying until it accepts, within
    TIMEOUT), reads the greeting and negotiates unless told not to."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise QMPError(f"cannot connect to {path}") from None
            time.sleep(0.02)
    c = Client(s, name)
    c.greeting = c.recv(timeout)
    if negotiate:
        c.negotiate()
    return c


def err(reply):
    """(class, desc) of an error reply, or None for a success."""
    e = reply.get("error")
    return (e.get("class"), e.get("desc")) if e else None


class Daemon:
    """A daemon with QMP monitors on Unix sockets in the test's work
    directory. KIND defaults to the test's target."""

    def __init__(self, test, args, monitors=("mon0",), kind=None, pretty=(),
                 name=None, wait=True, cwd=None):
        self.test = test
        self.kind = kind or test.kind
        self.name = name or f"d{len(test.daemons)}"
        self.socks = {}
        argv = daemon_argv(self.kind)
        for m in monitors:
            path = os.path.join(test.work, f"{self.name}-{m}.sock")
            self.socks[m] = path
            argv += ["--chardev", f"socket,id={m},path={path},server=on,wait=off",
                     "--monitor", f"chardev={m}" + (",pretty=on" if m in pretty else "")]
        argv += list(args)
        self.argv = argv
        self.errfile = os.path.join(test.work, f"{self.name}.err")
        self.clients = []
        self.stopped_by = None
        self.proc = subprocess.Popen(argv, cwd=cwd or test.work, stdin=subprocess.DEVNULL,
                                     stdout=open(self.errfile + ".out", "wb"),
                                     stderr=open(self.errfile, "wb"),
                                     start_new_session=True)
        test.daemons.append(self)
        self.rc = None
        if wait:
            for m in monitors:
                self._wait_socket(self.socks[m])

    def _wait_socket(self, path, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None:
                raise QMPError(f"daemon {self.name} exited {self.proc.returncode} before "
                               f"listening; stderr: {self.stderr()}")
            if time.monotonic() > deadline:
                raise QMPError(f"daemon {self.name}: no socket {path} within {timeout} s")
            time.sleep(0.02)

    def stderr(self):
        try:
            with open(self.errfile, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def connect(self, monitor="mon0", negotiate=True):
        c = connect_unix(self.socks[monitor], name=f"{self.name}/{monitor}",
                         negotiate=negotiate)
        self.clients.append(c)
        return c

    def qmp(self):
        """The first client of monitor mon0, connected on first use."""
        for c in self.clients:
            if c.name == f"{self.name}/mon0":
                return c
        return self.connect()

    def wait(self, timeout=20.0):
        """The exit status within TIMEOUT, else None."""
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, timeout=20.0):
        """quit through a monitor (if a client is still open; the first
        one), then SIGTERM, then SIGKILL; returns the exit status."""
        open_clients = [c for c in self.clients if not c.closed]
        if self.proc.poll() is None and open_clients:
            try:
                open_clients[0].execute("quit", timeout=5)
            except (QMPError, OSError):
                pass
        self.stopped_by = "quit"
        if self.wait(timeout) is None:
            self.stopped_by = "SIGTERM"
            self.proc.terminate()
            if self.wait(5) is None:
                self.stopped_by = "SIGKILL"
                self.proc.kill()
                self.wait(5)
        for c in self.clients:
            c.close()
        return self.proc.returncode


def run(argv, timeout=60, check=False, input=None):
    """Runs ARGV (in the current directory) with a timeout; returns a
    CompletedProcess with text stdout/stderr."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise QMPError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def img_info(path, *extra):
    return json.loads(run(["qemu-img", "info", "--output=json", "-U", *extra, path],
                          check=True).stdout)


CURRENT_TEST = None    # the Test of this script, for nodes()


def nodes(c, flat=True):
    """query-named-block-nodes as a dict node-name -> BlockDeviceInfo; if
    the query fails, that is one failed check and the result is {} (so
    that one missing query does not abort a whole section)."""
    r = c.cmd("query-named-block-nodes", flat=flat)
    if "return" not in r:
        if CURRENT_TEST is None:
            raise QMPError(f"query-named-block-nodes: {r}")
        CURRENT_TEST.bad(f"query-named-block-nodes: {r}")
        return {}
    return {n["node-name"]: n for n in r["return"]}


def bitmaps(c, node):
    """The dirty-bitmaps of NODE as a dict name -> info."""
    return {b["name"]: b for b in nodes(c).get(node, {}).get("dirty-bitmaps", [])}


def dd(src, dst, off=0, length=None, skip=0, sync=True, timeout=30):
    """Copies LENGTH bytes (all if None) from byte SKIP of SRC to byte OFF
    of DST (not truncated), with fsync if SYNC; returns the dd result."""
    argv = ["dd", f"if={src}", f"of={dst}", "bs=64k", f"seek={off}", f"skip={skip}",
            "oflag=seek_bytes", "iflag=skip_bytes" + (",count_bytes" if length is not None else ""),
            "conv=notrunc" + (",fsync" if sync else ""), "status=none"]
    if length is not None:
        argv.append(f"count={length}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def read_at(path, off, length, timeout=30):
    """LENGTH bytes at OFF of PATH (read in a child process, so that a
    stuck FUSE mount cannot hang the test)."""
    p = subprocess.run(["dd", f"if={path}", "bs=64k", f"skip={off}", f"count={length}",
                        "iflag=skip_bytes,count_bytes", "status=none"],
                       capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise QMPError(f"reading {path}: {p.stderr.decode().strip()}")
    return p.stdout


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path:
                return True
    return False


def wait_for(pred, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


class Test:
    """Result accounting, a work directory and cleanup for one script.
    Use as: with Test("qmp-graph") as t: ...; the exit status is 0 if
    every check passed, 1 otherwise (77: skip())."""

    def __init__(self, name, budget=None):
        self.name = name
        self.kind = target()
        self.checks = 0
        self.failures = 0
        self.daemons = []
        base = os.environ.get("QMP_WORK") or os.environ.get("TMPDIR", "/var/tmp")
        self.work = tempfile.mkdtemp(prefix=f"bg-{name}.", dir=base)
        self.work = os.path.realpath(self.work)
        os.chdir(self.work)
        global CURRENT_TEST
        CURRENT_TEST = self
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if budget:
            signal.signal(signal.SIGALRM, self._on_alarm)
            signal.alarm(budget)
        print(f"{name}: target {self.kind} ({' '.join(daemon_argv(self.kind))})", flush=True)

    def _on_signal(self, sig, frame):
        raise SystemExit(f"{self.name}: interrupted by signal {sig}")

    def _on_alarm(self, sig, frame):
        raise SystemExit(f"{self.name}: time budget exceeded")

    @property
    def is_qsd(self):
        return self.kind == "qsd"

    def ours(self):
        """True where a check tests deliberately blockgraph-only behaviour
        (it is skipped against qemu-storage-daemon)."""
        return self.kind != "qsd"

    def ok(self, desc):
        self.checks += 1
        print(f"  ok    {desc}", flush=True)

    def bad(self, desc):
        self.checks += 1
        self.failures += 1
        print(f"  FAIL  {desc}", flush=True)

    def check(self, cond, desc, detail=""):
        if cond:
            self.ok(desc)
        else:
            self.bad(f"{desc}{': ' + str(detail) if detail != '' else ''}")
        return cond

    def eq(self, got, want, desc):
        return self.check(got == want, desc, f"got {got!r}, want {want!r}")

    def ret(self, reply, desc, want=None):
        """REPLY is a success (with return value WANT if given)."""
        if "return" not in reply:
            return self.check(False, desc, reply)
        if want is not None:
            return self.eq(reply["return"], want, desc)
        return self.check(True, desc)

    def error(self, reply, desc, text, cls="GenericError"):
        """REPLY is an error of class CLS with description TEXT."""
        return self.eq(err(reply), (cls, text), desc)

    def section(self, title):
        print(f"{title}", flush=True)

    def part(self, fn, *args):
        """Runs FN(*ARGS), a section of checks; an exception in it is one
        failed check (the script goes on with the next section)."""
        try:
            return fn(*args)
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001
            self.bad(f"{fn.__name__}: aborted by {type(e).__name__}: {str(e)[:500]}")
            return None

    def stop(self, d, desc="daemon exits 0 on quit"):
        """Stops D (Daemon.stop) and checks that quit ended it with 0."""
        rc = d.stop()
        return self.eq((rc, d.stopped_by), (0, "quit"), desc)

    def daemon(self, args=(), **kw):
        return Daemon(self, args, **kw)

    def cleanup(self):
        signal.alarm(0)
        for d in self.daemons:
            if d.proc.poll() is None:
                d.proc.terminate()
                if d.wait(10) is None:
                    d.proc.kill()
                    d.wait(5)
        with open("/proc/self/mountinfo") as f:
            mps = [l.split()[4] for l in f if l.split()[4].startswith(self.work + "/")]
        for mp in mps:
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=10)
        os.chdir("/")
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None and not issubclass(et, SystemExit):
            import traceback
            traceback.print_exception(et, ev, tb)
            self.failures += 1
            print(f"  FAIL  {self.name}: aborted by {et.__name__}: {ev}")
        elif et is SystemExit and ev.code not in (0, None, 77):
            self.failures += 1
            print(f"  FAIL  {ev.code}")
        self.cleanup()
        if et is SystemExit and ev.code == 77:
            sys.exit(77)
        if self.failures:
            print(f"{self.name}: {self.failures} of {self.checks} check(s) failed")
            sys.exit(1)
        print(f"{self.name}: all {self.checks} checks passed")
        sys.exit(0)

    def skip(self, why):
        print(f"SKIP: {why}")
        sys.exit(77)


# -- oracle mode ---------------------------------------------------------

# Members whose values depend on the host or the moment, not on the
# implementation: replaced by "<host>" wherever they occur.
HOST_FIELDS = {"actual-size", "date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec", "thread-id"}
AUTO_NODE = re.compile(r"#block[0-9]+")


def normalise(obj, work=None):
    """A copy of OBJ with timestamps, versions, HOST_FIELDS, the work
    directory WORK and generated node names (#blockNNN) made neutral, and
    lists of nodes or bitmaps sorted."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in HOST_FIELDS:
                out[k] = "<host>"
            elif k == "timestamp" and isinstance(v, dict):
                out[k] = "<time>"
            elif k == "QMP" and isinstance(v, dict):
                out[k] = dict(normalise(v, work), version="<version>")
            else:
                out[k] = normalise(v, work)
        return out
    if isinstance(obj, list):
        out = [normalise(v, work) for v in obj]
        # Lists of nodes and of bitmaps: the order is not part of the
        # contract (QSD lists the newest first).
        if out and all(isinstance(v, dict) and ("node-name" in v or "granularity" in v) for v in out):
            out.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return out
    if isinstance(obj, str):
        if work:
            obj = obj.replace(work, "$WORK")
        return AUTO_NODE.sub("#block", obj)
    return obj


def oracle_available():
    return shutil.which(QSD) is not None


def oracle_session(test, desc, setup, args, script, post=None):
    """Runs SCRIPT (a list of (name, args) commands, or callables taking
    the client and returning a value to record) against a fresh QSD and a
    fresh blockgraph daemon started with ARGS, each in its own directory
    prepared by SETUP(dir); POST(dir) may record more (qemu-img output).
    Compares the normalised transcripts; records one check. Skipped (with
    a note) if the target is QSD itself or QSD is not installed."""
    if (test.kind == "qsd" and not os.environ.get("QMP_ORACLE_SELF")) or not oracle_available():
        print(f"  (oracle comparison '{desc}' skipped: needs both daemons)")
        return None
    transcripts = {}
    for kind in ("qsd", "blockgraph"):
        d = os.path.join(test.work, f"oracle-{kind}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        os.chdir(d)
        setup(d)
        lines = []
        dm = Daemon(test, args, kind=kind, name=f"oracle-{kind}", cwd=d)
        try:
            c = dm.connect()
            for step in script:
                if callable(step):
                    lines.append(normalise(step(c), d))
                else:
                    name, a = step
                    r = c.execute(name, a)
                    lines.append({"cmd": name, "args": normalise(a, d), "reply": normalise(r, d)})
            lines.append({"events": normalise(c.events, d)})
        except QMPError as e:
            lines.append({"client-error": str(e)})
        rc = dm.stop()
        lines.append({"exit": rc, "stopped by": dm.stopped_by})
        if post:
            lines.append(normalise(post(d), d))
        transcripts[kind] = [json.dumps(l, sort_keys=True, indent=1) for l in lines]
        os.chdir(test.work)
    a, b = transcripts["qsd"], transcripts["blockgraph"]
    if a == b:
        test.ok(f"oracle: {desc}: same replies as qemu-storage-daemon")
        return True
    diff = difflib.unified_diff("\n".join(a).splitlines(), "\n".join(b).splitlines(),
                                "qemu-storage-daemon", "blockgraph", lineterm="", n=4)
    diff = list(diff)
    if len(diff) > 300:
        diff = diff[:300] + [f"... ({len(diff) - 300} more diff lines)"]
    test.bad(f"oracle: {desc}: replies differ from qemu-storage-daemon:\n      " +
             "\n      ".join(diff))
    return False
