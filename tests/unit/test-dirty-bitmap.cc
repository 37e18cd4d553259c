// Unit tests for block/dirty-bitmap.cc and the marking in block/io.cc,
// judged by the real qemu-storage-daemon: each case runs the same sequence
// of block-dirty-bitmap-* commands and writes (write, write-zeroes,
// discard, resize) against a qemu-storage-daemon (QMP on a unix socket,
// writes by qemu-io through an NBD export) and against our BlockNode API on
// an identical image, and after every step compares the reply (or the error
// text) and the node's bitmap list (query-named-block-nodes' "dirty-bitmaps":
// names, order, counts, granularity, flags). Persistent bitmaps are then
// checked in the image by qemu-img info and qemu-img check. Cases are
// skipped (passing) when qemu-storage-daemon or qemu-io is not installed.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <glib.h>
#include <nlohmann/json.hpp>

#include "block/block-driver.h"
#include "util/aio.h"

#include "tests/unit/testdrv.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

using namespace bg;
using namespace bgtest;
using nlohmann::json;

namespace {

int sh(const std::string &cmd, std::string *out = nullptr)
{
    FILE *p = popen(cmd.c_str(), "r");
    ck_assert_msg(p, "popen %s", cmd.c_str());
    std::string s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) s.append(buf, n);
    int st = pclose(p);
    if (out) *out = s;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool have_oracle() { return sh("command -v qemu-storage-daemon qemu-io qemu-img >/dev/null 2>&1") == 0; }

// ---------------------------------------------------------------- the oracle

// A qemu-storage-daemon with --blockdev args and a QMP monitor.
class Qsd {
  public:
    explicit Qsd(const std::vector<std::string> &blockdevs)
    {
        static int seq;
        sock_ = tmp_path("qmp" + std::to_string(++seq) + ".sock");
        nbd_ = tmp_path("nbd" + std::to_string(seq) + ".sock");
        std::vector<std::string> args = {"qemu-storage-daemon", "--chardev",
                                         "socket,id=m,path=" + sock_ + ",server=on,wait=off", "--monitor",
                                         "chardev=m"};
        for (const std::string &b : blockdevs) {
            args.push_back("--blockdev");
            args.push_back(b);
        }
        pid_ = fork();
        ck_assert_int_ge(pid_, 0);
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);   // a failed test leaves no daemon behind
            std::vector<char *> argv;
            for (std::string &a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            execvp(argv[0], argv.data());
            _exit(127);
        }
        fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_.c_str());
        int i = 0;
        while (connect(fd_, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0) {
            ck_assert_msg(++i < 500, "cannot connect to qemu-storage-daemon");
            usleep(10000);
        }
        read_line();   // greeting
        cmd("qmp_capabilities");
    }
    ~Qsd()
    {
        if (pid_ > 0) {
            kill(pid_, SIGTERM);
            waitpid(pid_, nullptr, 0);
        }
        if (fd_ >= 0) close(fd_);
    }
    // Ends the daemon as a crash would (persistent bitmaps stay "in use").
    void crash()
    {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }
    // Ends it with quit (persistent bitmaps are stored).
    void quit()
    {
        cmd("quit");
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }
    // The command's "return", or {"error": desc}.
    json cmd(const std::string &name, const json &args = json::object())
    {
        std::string line = json{{"execute", name}, {"arguments", args}}.dump() + "\n";
        ck_assert_int_eq(write(fd_, line.data(), line.size()), static_cast<ssize_t>(line.size()));
        for (;;) {
            json r = json::parse(read_line());
            if (r.contains("event")) continue;
            if (r.contains("error")) return json{{"error", r["error"]["desc"]}};
            return r["return"];
        }
    }
    void export_node(const std::string &node)
    {
        cmd("nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", nbd_}}}}}});
        json r = cmd("block-export-add", {{"type", "nbd"}, {"id", "e"}, {"node-name", node}, {"writable", true}});
        ck_assert_msg(r == json::object(), "export: %s", r.dump().c_str());
        export_ = node;
    }
    void unexport()
    {
        cmd("block-export-del", {{"id", "e"}});
        cmd("nbd-server-stop");
        export_.clear();
    }
    // A qemu-io command on the exported node.
    void io(const std::string &c)
    {
        std::string out;
        int rc = sh("qemu-io -f raw 'nbd+unix:///" + export_ + "?socket=" + nbd_ + "' -c '" + c + "' 2>&1", &out);
        ck_assert_msg(rc == 0 && out.find("failed") == std::string::npos, "qemu-io %s: %s", c.c_str(), out.c_str());
    }
    json bitmaps(const std::string &node)
    {
        for (const json &n : cmd("query-named-block-nodes")) {
            if (n["node-name"] == node) return n.value("dirty-bitmaps", json::array());
        }
        ck_abort_msg("no node %s", node.c_str());
        return json();
    }

  private:
    std::string read_line()
    {
        for (;;) {
            size_t nl = buf_.find('\n');
            if (nl != std::string::npos) {
                std::string l = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return l;
            }
            char b[65536];
            ssize_t n = read(fd_, b, sizeof(b));
            ck_assert_msg(n > 0, "qemu-storage-daemon closed the monitor");
            buf_.append(b, static_cast<size_t>(n));
        }
    }
    pid_t pid_ = -1;
    int fd_ = -1;
    std::string sock_, nbd_, buf_, export_;
};

// ---------------------------------------------------------------- ours

json to_json(const std::vector<DirtyBitmapInfo> &list)
{
    json a = json::array();
    for (const DirtyBitmapInfo &i : list) {
        json b = {{"name", i.name},         {"recording", i.recording},   {"persistent", i.persistent},
                  {"busy", i.busy},         {"granularity", i.granularity}, {"count", i.count}};
        if (i.inconsistent) b["inconsistent"] = true;
        a.push_back(b);
    }
    return a;
}

// A graph opened from the same --blockdev strings, with a writable
// backend on `root` for the I/O steps.
struct Ours {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;
    std::unique_ptr<BlockBackend> blk;

    Ours(const std::vector<std::string> &blockdevs, const std::string &root)
    {
        for (const std::string &b : blockdevs) {
            auto r = graph.add_node(must_parse(b, builtin_drivers()));
            ck_assert_msg(r.ok(), "add_node %s: %s", b.c_str(), r.ok() ? "" : r.msg().c_str());
        }
        if (root.empty()) return;
        BlockNode *n = graph.find(root);
        auto b = BlockBackend::create(n, kPermConsistentRead | kPermWrite | kPermResize, kPermAll, "test");
        ck_assert_msg(b.ok(), "backend: %s", b.ok() ? "" : b.msg().c_str());
        blk = std::move(b.value());
    }
    ~Ours() { close(); }
    void close()
    {
        blk.reset();
        graph.close_all();
    }
    BlockNode *node(const std::string &name)
    {
        BlockNode *n = graph.find(name);
        ck_assert_msg(n, "no node %s", name.c_str());
        return n;
    }
    // The QMP command on our API: {} or {"error": msg}.
    json cmd(const std::string &name, const json &a)
    {
        BlockNode *n = node(a["node"]);
        Status s;
        if (name == "block-dirty-bitmap-add") {
            std::optional<uint32_t> g;
            if (a.contains("granularity")) g = a["granularity"].get<uint32_t>();
            s = n->dirty_bitmap_add(a["name"], g, a.value("persistent", false), a.value("disabled", false));
        } else if (name == "block-dirty-bitmap-remove") {
            s = n->dirty_bitmap_remove(a["name"]);
        } else if (name == "block-dirty-bitmap-clear") {
            s = n->dirty_bitmap_clear(a["name"]);
        } else if (name == "block-dirty-bitmap-enable") {
            s = n->dirty_bitmap_enable(a["name"]);
        } else if (name == "block-dirty-bitmap-disable") {
            s = n->dirty_bitmap_disable(a["name"]);
        } else if (name == "block-dirty-bitmap-merge") {
            std::vector<DirtyBitmapSource> src;
            for (const json &x : a["bitmaps"]) {
                if (x.is_string()) src.push_back({"", x.get<std::string>()});
                else src.push_back({x["node"], x["name"]});
            }
            s = n->dirty_bitmap_merge(a["target"], src);
        } else if (name == "block_resize") {
            int r = run_in_coroutine([&] { return blk->co_truncate(a["size"], false, PreallocMode::kOff); });
            ck_assert_int_eq(r, 0);
        } else {
            ck_abort_msg("unknown command %s", name.c_str());
        }
        return s ? json::object() : json{{"error", s.msg()}};
    }
    // A qemu-io command: "write OFF LEN", "write -z OFF LEN", "discard OFF LEN".
    void io(const std::string &c)
    {
        long long off = 0, len = 0;
        int r;
        std::vector<uint8_t> buf;
        if (std::sscanf(c.c_str(), "write -z %lld %lld", &off, &len) == 2) {
            r = run_in_coroutine([&] { return blk->co_pwrite_zeroes(off, len, 0); });
        } else if (std::sscanf(c.c_str(), "write %lld %lld", &off, &len) == 2) {
            buf.assign(static_cast<size_t>(len), 0xcd);
            r = run_in_coroutine([&] { return blk->co_pwrite(off, len, buf.data()); });
        } else if (std::sscanf(c.c_str(), "discard %lld %lld", &off, &len) == 2) {
            r = run_in_coroutine([&] { return blk->co_pdiscard(off, len); });
        } else {
            ck_abort_msg("bad io %s", c.c_str());
            return;
        }
        ck_assert_msg(r == 0, "%s: %d", c.c_str(), r);
    }
};

// One step: a QMP command ({"execute", "arguments"}) or {"io": "..."}.
void step(Qsd &q, Ours &o, const json &s, const std::string &node)
{
    if (s.contains("io")) {
        q.io(s["io"]);
        o.io(s["io"]);
    } else {
        json want = q.cmd(s["execute"], s["arguments"]);
        json got = o.cmd(s["execute"], s["arguments"]);
        ck_assert_msg(got == want, "%s: ours %s, qemu %s", s.dump().c_str(), got.dump().c_str(), want.dump().c_str());
    }
    json want = q.bitmaps(node), got = to_json(o.node(node)->dirty_bitmaps());
    ck_assert_msg(got == want, "after %s:\nours %s\nqemu %s", s.dump().c_str(), got.dump().c_str(),
                  want.dump().c_str());
}

json qmp(const std::string &name, const json &args) { return {{"execute", name}, {"arguments", args}}; }
json io(const std::string &c) { return {{"io", c}}; }
json add(const std::string &node, const std::string &name, const json &extra = json::object())
{
    json a = {{"node", node}, {"name", name}};
    a.update(extra);
    return qmp("block-dirty-bitmap-add", a);
}
json named(const std::string &cmd, const std::string &node, const std::string &name)
{
    return qmp("block-dirty-bitmap-" + cmd, {{"node", node}, {"name", name}});
}
json merge(const std::string &node, const std::string &target, const json &bitmaps)
{
    return qmp("block-dirty-bitmap-merge", {{"node", node}, {"target", target}, {"bitmaps", bitmaps}});
}

// Two copies of a fresh qemu-img image of `size` bytes: "q-<name>" for
// the daemon, "o-<name>" for us.
void make_images(const std::string &name, const std::string &create_args, const std::string &size = "1M")
{
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img create -q " + create_args + " q-" + name + " " +
                        size + " && cp q-" + name + " o-" + name),
                     0);
}

void expect_error(const Status &s, const std::string &want)
{
    ck_assert_msg(!s.ok() && s.msg() == want, "got '%s', want '%s'", s.ok() ? "success" : s.msg().c_str(),
                  want.c_str());
}

std::vector<std::string> qcow2_nodes(const std::string &prefix, const std::string &img, const std::string &extra = "")
{
    const std::string ro = extra.find("read-only=on") != std::string::npos ? ",read-only=on" : "";
    return {"driver=file,node-name=f0,filename=" + tmp_path(prefix + img) + ro,
            "driver=qcow2,node-name=q0,file=f0" + extra};
}

} // namespace

// ---------------------------------------------------------------- cases

// Writes, write-zeroes and discards (discard=unmap) set the bits their
// ranges touch, at granularity boundaries and at an unaligned end of the
// image; disabled bitmaps record nothing; merges between granularities;
// clear; enable/disable; the default granularity is the cluster size.
START_TEST(test_marking_and_merge)
{
    if (!have_oracle()) return;
    make_images("a.qcow2", "-f qcow2 -o cluster_size=16k", "1049576");   // 1 MiB + 1000: the last bit is partial
    Qsd q(qcow2_nodes("q-", "a.qcow2", ",discard=unmap"));
    Ours o(qcow2_nodes("o-", "a.qcow2", ",discard=unmap"), "q0");
    q.export_node("q0");
    const json steps = {
        add("q0", "c", {{"granularity", 65536}}),
        add("q0", "f", {{"granularity", 512}}),
        add("q0", "d", {{"granularity", 512}}),
        add("q0", "def"),
        add("q0", "off", {{"granularity", 4096}, {"disabled", true}}),
        io("write 1048576 1"),
        io("discard 100000 1"),
        io("write -z 300000 1"),
        io("write 65535 2"),
        io("write 131072 65536"),
        io("write -z 400000 70000"),
        io("discard 600000 200000"),
        merge("q0", "f", {"c"}),
        named("clear", "q0", "f"),
        named("clear", "q0", "c"),
        io("write 1048575 1001"),
        merge("q0", "d", {"c"}),
        merge("q0", "c", {"f", "d"}),
        merge("q0", "off", {"f"}),
        named("enable", "q0", "off"),
        named("disable", "q0", "def"),
        io("write 5000 10000"),
        named("remove", "q0", "d"),
        add("q0", "d", {{"granularity", 2048}}),
        io("write 1040000 9576"),
    };
    for (const json &s : steps) step(q, o, s, "q0");
}
END_TEST

// Error texts, in the order QEMU checks.
START_TEST(test_errors)
{
    if (!have_oracle()) return;
    make_images("e.qcow2", "-f qcow2");
    make_images("v2.qcow2", "-f qcow2 -o compat=0.10");
    make_images("odd.raw", "-f raw");
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && truncate -s 1000 q-odd.raw o-odd.raw"), 0);
    auto nodes = [](const std::string &p) {
        std::vector<std::string> v = qcow2_nodes(p, "e.qcow2");
        v.push_back("driver=file,node-name=f2,filename=" + tmp_path(p + "v2.qcow2"));
        v.push_back("driver=qcow2,node-name=q2,file=f2");
        v.push_back("driver=file,node-name=r0,filename=" + tmp_path(p + "odd.raw"));
        return v;
    };
    Qsd q(nodes("q-"));
    Ours o(nodes("o-"), "");
    const std::string n1024(1024, 'x'), n1023(1023, 'y');
    const json steps = {
        add("q0", "b0"),
        add("q0", "b0"),
        add("q0", ""),
        add("q0", "g", {{"granularity", 256}}),
        add("q0", "g", {{"granularity", 3000}}),
        add("q0", "g", {{"granularity", 0}}),
        add("q0", "b0", {{"granularity", 3}}),
        add("q0", n1024),
        add("q0", n1023),
        add("q0", n1024, {{"persistent", true}}),
        add("q0", "b0", {{"persistent", true}}),
        add("f0", "p", {{"persistent", true}}),
        add("q2", "p", {{"persistent", true}}),
        add("q0", "p", {{"persistent", true}, {"granularity", 1024}}),
        add("q0", "p", {{"persistent", true}}),
        add("q0", "p"),
        add("r0", "r"),
        named("remove", "q0", "nope"),
        named("clear", "q0", "nope"),
        named("enable", "q0", "nope"),
        named("disable", "q0", "nope"),
        merge("q0", "nope", {"b0"}),
        merge("q0", "b0", {"nope"}),
        merge("q0", "b0", json::array({json{{"node", "r0"}, {"name", "r"}}})),
        merge("q0", "b0", json::array({json{{"node", "r0"}, {"name", "zz"}}, "yy"})),
        merge("q0", "b0", {"b0", "p"}),
        merge("q0", "p", {"b0"}),
        named("remove", "q0", "p"),
        named("remove", "q0", "p"),
    };
    for (const json &s : steps) step(q, o, s, "q0");
    ck_assert(to_json(o.node("r0")->dirty_bitmaps()) == q.bitmaps("r0"));
}
END_TEST

// Truncate resizes the bitmaps: growing adds clean bits, shrinking drops bits.
START_TEST(test_resize)
{
    if (!have_oracle()) return;
    make_images("r.qcow2", "-f qcow2", "1049576");
    Qsd q(qcow2_nodes("q-", "r.qcow2"));
    Ours o(qcow2_nodes("o-", "r.qcow2"), "q0");
    q.export_node("q0");
    for (const json &s : {add("q0", "a", {{"granularity", 512}}), add("q0", "b"), io("write 1048575 1001"),
                          io("write 300000 1")}) {
        step(q, o, s, "q0");
    }
    q.unexport();
    auto resize = [&](int64_t size) {
        json a = {{"node-name", "q0"}, {"size", size}};
        json r;
        for (int i = 0; i < 100; i++) {   // until the export has let go of the node
            r = q.cmd("block_resize", a);
            if (r == json::object()) break;
            usleep(20000);
        }
        ck_assert_msg(r == json::object(), "block_resize: %s", r.dump().c_str());
        o.cmd("block_resize", {{"node", "q0"}, {"size", size}});
        ck_assert(to_json(o.node("q0")->dirty_bitmaps()) == q.bitmaps("q0"));
    };
    resize(3 << 20);
    resize(512 << 10);
    resize(3 << 20);
    step(q, o, merge("q0", "a", {"b"}), "q0");
}
END_TEST

// Persistent bitmaps through qcow2: stored at close (qemu-img info lists
// them as QEMU stored them; qemu-img check is clean), listed after a reopen
// in QEMU's order; on a read-only node they are readonly but can be
// enabled/disabled; found in use after a crash they are inconsistent.
START_TEST(test_persistent)
{
    if (!have_oracle()) return;
    make_images("p.qcow2", "-f qcow2");
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && for i in q o; do qemu-img bitmap --add $i-p.qcow2 s1 && "
                        "qemu-img bitmap --add -g 512 $i-p.qcow2 s2 && qemu-img bitmap --add --disable $i-p.qcow2 s3 "
                        "&& qemu-io -c 'write 0 1k' $i-p.qcow2 >/dev/null || exit 1; done"),
                     0);
    {
        Qsd q(qcow2_nodes("q-", "p.qcow2"));
        Ours o(qcow2_nodes("o-", "p.qcow2"), "q0");
        q.export_node("q0");
        const json steps = {
            add("q0", "m1"),
            add("q0", "p2", {{"persistent", true}, {"granularity", 1024}}),
            add("q0", "p3", {{"persistent", true}, {"disabled", true}}),
            io("write 1000 100000"),
            merge("q0", "s3", {"s2"}),
            merge("q0", "m1", {"s2", "s3"}),
            named("clear", "q0", "s2"),
            named("disable", "q0", "s1"),
            named("enable", "q0", "s3"),
            named("remove", "q0", "p3"),
            io("write 500000 1"),
        };
        for (const json &s : steps) step(q, o, s, "q0");
        q.unexport();
        q.quit();
    }
    // Stored alike.
    std::string qi, oi;
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img info --output=json q-p.qcow2", &qi), 0);
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img info --output=json o-p.qcow2", &oi), 0);
    const json qb = json::parse(qi)["format-specific"]["data"]["bitmaps"];
    const json ob = json::parse(oi)["format-specific"]["data"]["bitmaps"];
    ck_assert_msg(qb == ob, "ours %s\nqemu %s", ob.dump().c_str(), qb.dump().c_str());
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img check -q o-p.qcow2"), 0);
    // Reopened read-only: same list, readonly bitmaps.
    {
        Qsd q(qcow2_nodes("q-", "p.qcow2", ",read-only=on"));
        Ours o(qcow2_nodes("o-", "p.qcow2", ",read-only=on"), "");
        const json steps = {
            named("clear", "q0", "s1"),   named("enable", "q0", "s1"),     named("disable", "q0", "s2"),
            merge("q0", "s2", {"s1"}),    add("q0", "rm"),                 merge("q0", "rm", {"s1"}),
            named("remove", "q0", "s3"),  add("q0", "rp", {{"persistent", true}}), named("clear", "q0", "rp"),
            named("remove", "q0", "rp"),
        };
        for (const json &s : steps) step(q, o, s, "q0");
    }
    // In use after a crash: inconsistent.
    {
        Qsd q(qcow2_nodes("q-", "p.qcow2"));
        q.crash();
    }
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && cp q-p.qcow2 o-p.qcow2"), 0);
    Qsd q(qcow2_nodes("q-", "p.qcow2"));
    Ours o(qcow2_nodes("o-", "p.qcow2"), "q0");
    const json steps = {
        add("q0", "m"),
        named("clear", "q0", "s1"),
        named("enable", "q0", "s1"),
        named("disable", "q0", "s1"),
        merge("q0", "s2", {"m"}),
        merge("q0", "m", {"s2"}),
        named("remove", "q0", "s2"),
        add("q0", "s2", {{"persistent", true}, {"granularity", 4096}}),
    };
    for (const json &s : steps) step(q, o, s, "q0");
    q.quit();
    o.close();
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img info --output=json q-p.qcow2", &qi), 0);
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img info --output=json o-p.qcow2", &oi), 0);
    ck_assert(json::parse(qi)["format-specific"]["data"]["bitmaps"] ==
              json::parse(oi)["format-specific"]["data"]["bitmaps"]);
    ck_assert_int_eq(sh("cd '" + std::string(g_dir) + "' && qemu-img check -q o-p.qcow2"), 0);
}
END_TEST

// get / restore (a transaction's rollback) and busy bitmaps.
START_TEST(test_backup_restore_busy)
{
    Ours o({"null-co,node-name=n0,size=1M"}, "n0");
    BlockNode *n = o.node("n0");
    ck_assert(n->dirty_bitmap_add("a", 4096, false, false).ok());
    ck_assert(n->dirty_bitmap_add("b", 65536, false, false).ok());
    o.io("write 0 1");
    o.io("write 200000 1");
    DirtyBitmapData before = n->dirty_bitmap_get("a").value();
    DirtyBitmapData backup;
    ck_assert(n->dirty_bitmap_clear("a", &backup).ok());
    ck_assert(backup.bytes == before.bytes);
    ck_assert_uint_eq(n->dirty_bitmaps()[1].count, 0);
    ck_assert(n->dirty_bitmap_restore("a", backup).ok());
    ck_assert(n->dirty_bitmap_get("a").value().bytes == before.bytes);
    ck_assert(n->dirty_bitmap_merge("a", {{"", "b"}}, &backup).ok());
    ck_assert(backup.bytes == before.bytes);
    ck_assert_uint_eq(n->dirty_bitmaps()[1].count, 2 * 65536);
    ck_assert(n->dirty_bitmap_restore("a", backup).ok());
    ck_assert_uint_eq(n->dirty_bitmaps()[1].count, 2 * 4096);
    expect_error(n->dirty_bitmap_restore("a", n->dirty_bitmap_get("b").value()),
                 "Bitmap 'a' has granularity 4096, cannot restore bits of granularity 65536");
    ck_assert(n->dirty_bitmap_set_busy("a", true).ok());
    ck_assert(n->dirty_bitmaps()[1].busy);
    const char *busy = "Bitmap 'a' is currently in use by another operation and cannot be used";
    expect_error(n->dirty_bitmap_clear("a"), busy);
    expect_error(n->dirty_bitmap_remove("a"), busy);
    expect_error(n->dirty_bitmap_enable("a"), busy);
    expect_error(n->dirty_bitmap_merge("a", {{"", "b"}}), busy);
    expect_error(n->dirty_bitmap_merge("b", {{"", "a"}}), busy);
    ck_assert(n->dirty_bitmap_get("a").ok());
    ck_assert(n->dirty_bitmap_set_busy("a", false).ok());
    ck_assert(n->dirty_bitmap_remove("a").ok());
    auto gone = n->dirty_bitmap_get("a");
    ck_assert(!gone.ok() && gone.msg() == "Dirty bitmap 'a' not found");
}
END_TEST

// Writes from several threads at once to interleaved 512-byte blocks (the
// bits of one byte of the bitmap set by different threads, so that an
// unguarded read-modify-write of a byte would lose bits): none is lost. A
// stress test: it sees lost bits only when threads happen to collide (on
// a loaded two-core machine rarely).
START_TEST(test_concurrent_marking)
{
    constexpr int kThreads = 4, kBlocks = 1 << 17, kRounds = 4;
    Ours o({"null-co,node-name=n0,size=64M"}, "n0");
    BlockNode *n = o.node("n0");
    ck_assert(n->dirty_bitmap_add("a", 512, false, false).ok());
    for (int round = 0; round < kRounds; round++) {
        ck_assert(n->dirty_bitmap_clear("a").ok());
        std::atomic<int> failed{0}, ready{0};
        std::vector<std::thread> ts;
        for (int t = 0; t < kThreads; t++) {
            ts.emplace_back([&, t] {
                GMainContext *g = g_main_context_new();
                {
                    auto ctx = AioContext::create(g);
                    AioContext::set_current(ctx.get());
                    ready++;
                    while (ready.load() < kThreads) {
                    }
                    run_in_coroutine([&] {
                        uint8_t buf[512] = {};
                        for (int i = t; i < kBlocks; i += kThreads) {
                            if (o.blk->co_pwrite(int64_t{i} * 512, 512, buf) != 0) failed++;
                        }
                    });
                    AioContext::set_current(nullptr);
                }
                g_main_context_unref(g);
            });
        }
        for (std::thread &t : ts) t.join();
        ck_assert_int_eq(failed.load(), 0);
        ck_assert_uint_eq(n->dirty_bitmaps()[0].count, uint64_t{kBlocks} * 512);
    }
}
END_TEST

namespace {

Suite *bitmap_suite()
{
    Suite *s = suite_create("dirty-bitmap");
    TCase *tc = tcase_create("qemu");
    tcase_set_timeout(tc, 300);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_marking_and_merge);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_resize);
    tcase_add_test(tc, test_persistent);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_add_test(tc, test_backup_restore_busy);
    tcase_add_test(tc, test_concurrent_marking);
    suite_add_tcase(s, tc);
    return s;
}

} // namespace

int main()
{
    SRunner *sr = srunner_create(bitmap_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
