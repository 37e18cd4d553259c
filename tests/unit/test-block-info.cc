// Unit tests for monitor/block-info (query-named-block-nodes), judged by the
// real QEMU tools on graphs built twice, once by us and once by
// qemu-storage-daemon from the same --blockdev arguments:
//   - the whole reply, printed in QEMU's member order, equals QSD's byte
//     for byte (auto-generated node names aside);
//   - every node's image member agrees with `qemu-img info --output=json`
//     (virtual-size, cluster-size, dirty-flag, backing file names and
//     format, format-specific data), and node names, ro, drv, depth and
//     order are those of the graph built;
//   - the json:{...} file names we give describe the same node to qemu-img;
//   - the dirty-bitmaps member prints as QSD prints it.
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "monitor/block-info.h"
#include "qapi/block-parse.h"
#include "util/aio.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

using namespace bg;
using namespace bgtest;
using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// Runs a shell command in the temporary directory; returns its exit status,
// stdout in *out.
int run(const std::string &cmd, std::string *out = nullptr)
{
    std::string full = std::string("cd '") + g_dir + "' && " + cmd;
    FILE *p = popen(full.c_str(), "r");
    ck_assert_msg(p, "popen %s", cmd.c_str());
    std::string s;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) s.append(buf, n);
    int st = pclose(p);
    if (out) *out = s;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void must_run(const std::string &cmd)
{
    std::string out;
    ck_assert_msg(run(cmd + " >/dev/null", &out) == 0, "failed: %s", cmd.c_str());
}

json qemu_img_info(const std::string &args)
{
    std::string out;
    ck_assert_msg(run("qemu-img info -U --output=json " + args, &out) == 0, "qemu-img info %s failed",
                  args.c_str());
    return json::parse(out);
}

// ck_assert_str_eq on strings that live across the check.
void expect_str(const std::string &got, const std::string &want, const std::string &what)
{
    ck_assert_msg(got == want, "%s: got %s, want %s", what.c_str(), got.c_str(), want.c_str());
}

std::string str(const json &j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

std::string shq(const std::string &s)
{
    std::string r = "'";
    for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return r + "'";
}

// The images every test uses, made by qemu-img and qemu-io.
void make_images()
{
    must_run("qemu-img create -f raw r.raw 1M");
    must_run("qemu-img create -f qcow2 base.qcow2 1M");
    must_run("qemu-img create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2");
    must_run("qemu-img create -f qcow2 -o cluster_size=4096 -b mid.qcow2 -F qcow2 top.qcow2");
    must_run("qemu-img create -f qcow2 -o compat=0.10,refcount_bits=16 old.qcow2 2M");
    must_run("qemu-img create -f qcow2 bm.qcow2 1M");
    must_run("qemu-img bitmap --add -g 65536 bm.qcow2 b0");
    must_run("qemu-img bitmap --add --disable -g 131072 bm.qcow2 b1");
    must_run("qemu-img create -f qcow2 comp.qcow2 1M");
    must_run("qemu-io -c 'write -c 0 64k' comp.qcow2");
    must_run("qemu-img create -f qcow2 snap.qcow2 1M");
    must_run("qemu-img snapshot -c s1 snap.qcow2");
    must_run("qemu-io -c 'write 0 4k' snap.qcow2");
    must_run("qemu-img snapshot -c s2 snap.qcow2");
    // An absolute name: QEMU 7.2 opens a relative one from its working
    // directory.
    must_run("qemu-img create -f qcow2 -o data_file=" + tmp_path("dd.raw") + " df.qcow2 1M");
    must_run("qemu-io -c 'write 0 64k' df.qcow2");
    must_run("qemu-img create -f raw dd2.raw 1M");
    must_run("qemu-img create -f qcow2 -o lazy_refcounts=on lazy.qcow2 1M");
    // Killed with the image dirty (lazy refcounts: no refcount writes).
    run("qemu-io -c 'write 0 64k' -c 'sigraise 9' lazy.qcow2 >/dev/null 2>&1");
    ck_assert(qemu_img_info("lazy.qcow2").value("dirty-flag", false));
}

// "$D" in a --blockdev argument stands for the temporary directory.
std::string subst(const std::string &arg)
{
    std::string s = arg;
    for (size_t p; (p = s.find("$D")) != std::string::npos;) s.replace(p, 2, g_dir);
    return s;
}

// A graph of ours built from --blockdev arguments.
struct Graph {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;

    explicit Graph(const std::vector<std::string> &args)
    {
        for (const std::string &a : args) {
            auto o = parse_blockdev_arg(graph.registry(), subst(a));
            ck_assert_msg(o.ok(), "%s: %s", a.c_str(), o.ok() ? "" : o.error().msg.c_str());
            auto n = graph.add_node(o.value());
            ck_assert_msg(n.ok(), "%s: %s", a.c_str(), n.ok() ? "" : n.error().msg.c_str());
        }
    }
    ~Graph() { graph.close_all(); }
};

// ---------------------------------------------------------------- QSD

// Reads one CRLF-terminated line from fd (5 s at most).
std::string read_line(int fd, std::string &buf)
{
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
        size_t nl = buf.find('\n');
        if (nl != std::string::npos) {
            std::string line = buf.substr(0, nl);
            buf.erase(0, nl + 1);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            return line;
        }
        ck_assert_msg(std::chrono::steady_clock::now() < deadline, "QMP: no reply");
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        char tmp[65536];
        ssize_t n = read(fd, tmp, sizeof(tmp));
        ck_assert_msg(n > 0, "QMP: connection closed");
        buf.append(tmp, static_cast<size_t>(n));
    }
}

// The reply of a QMP command, events skipped.
std::string qmp(int fd, std::string &buf, const std::string &cmd)
{
    std::string line = cmd + "\n";
    ck_assert(write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
    for (;;) {
        std::string r = read_line(fd, buf);
        if (r.find("\"event\"") == std::string::npos) return r;
    }
}

// qemu-storage-daemon's query-named-block-nodes reply (the text of the
// "return" value as QSD sent it) for a graph of --blockdev arguments,
// after the QMP commands in before (each must succeed; "$D" as above).
std::string qsd_query(const std::vector<std::string> &blockdevs, bool flat,
                      const std::vector<std::string> &before = {})
{
    std::string sock = tmp_path("qmp.sock");
    unlink(sock.c_str());
    std::vector<std::string> args = {"qemu-storage-daemon", "--chardev",
                                     "socket,id=m,path=" + sock + ",server=on,wait=off", "--monitor", "chardev=m"};
    for (const std::string &b : blockdevs) {
        args.push_back("--blockdev");
        args.push_back(subst(b));
    }
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        // Dies with the test, even when a failed check ends it early.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        std::vector<char *> argv;
        for (std::string &a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        int err = open(tmp_path("qsd.err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(err, 2);
        execvp(argv[0], argv.data());
        _exit(127);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock.c_str());
    bool connected = false;
    for (int i = 0; i < 100 && !connected; i++) {
        connected = connect(fd, reinterpret_cast<struct sockaddr *>(&sa), sizeof(sa)) == 0;
        if (!connected) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!connected) {
        std::string err;
        run("cat qsd.err", &err);
        ck_abort_msg("qemu-storage-daemon did not start: %s", err.c_str());
    }
    std::string buf;
    read_line(fd, buf);   // greeting
    qmp(fd, buf, R"({"execute": "qmp_capabilities"})");
    for (const std::string &cmd : before) {
        std::string r = qmp(fd, buf, subst(cmd));
        ck_assert_msg(r == R"({"return": {}})", "%s: %s", cmd.c_str(), r.c_str());
    }
    std::string r = qmp(fd, buf, std::string(R"({"execute": "query-named-block-nodes", "arguments": {"flat": )") +
                                     (flat ? "true" : "false") + "}}");
    close(fd);
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    const std::string head = "{\"return\": ";
    ck_assert_msg(r.compare(0, head.size(), head) == 0 && r.back() == '}', "QSD answered %s", r.c_str());
    return r.substr(head.size(), r.size() - head.size() - 1);
}

// Auto-generated node names numbered by first appearance (QEMU's carry a
// random part).
std::string normalize(const std::string &s)
{
    std::string out;
    std::map<std::string, std::string> names;
    const std::string prefix = "#block";
    size_t last = 0;
    for (size_t p; (p = s.find(prefix, last)) != std::string::npos;) {
        size_t end = p + prefix.size();
        while (end < s.size() && s[end] >= '0' && s[end] <= '9') end++;
        out += s.substr(last, p - last);
        auto ins = names.emplace(s.substr(p, end - p), "#auto" + std::to_string(names.size()));
        out += ins.first->second;
        last = end;
    }
    out += s.substr(last);
    return out;
}

struct Case {
    const char *name;
    std::vector<std::string> blockdevs;
    bool flat = false;
};

const std::vector<Case> &cases()
{
    static const std::vector<Case> k = {
        {"raw", {"driver=file,node-name=f,filename=$D/r.raw", "driver=raw,node-name=r,file=f"}},
        {"qcow2 inline file", {"driver=qcow2,node-name=q,file.driver=file,file.filename=$D/base.qcow2"}},
        {"implicit chain", {"driver=file,node-name=f,filename=$D/top.qcow2", "driver=qcow2,node-name=q,file=f"}},
        {"implicit chain flat",
         {"driver=file,node-name=f,filename=$D/top.qcow2", "driver=qcow2,node-name=q,file=f"},
         true},
        {"backing by node-name",
         {"driver=file,node-name=fb,filename=$D/base.qcow2,read-only=on",
          "driver=qcow2,node-name=b,file=fb,read-only=on", "driver=file,node-name=fm,filename=$D/mid.qcow2",
          "driver=qcow2,node-name=m,file=fm,backing=b"}},
        {"inline backing options, the rest of the chain from the image",
         {"driver=qcow2,node-name=q,file.driver=file,file.filename=$D/top.qcow2,backing.driver=qcow2,"
          "backing.file.driver=file,backing.file.filename=$D/mid.qcow2"}},
        {"backing null",
         {"driver=file,node-name=f,filename=$D/mid.qcow2",
          R"({"driver": "qcow2", "node-name": "q", "file": "f", "backing": null})"}},
        {"read-only, cache, detect-zeroes",
         {"driver=file,node-name=f,filename=$D/r.raw,read-only=on,cache.direct=on,cache.no-flush=on,"
          "detect-zeroes=unmap,discard=unmap",
          "driver=raw,node-name=r,file=f,read-only=on,detect-zeroes=on"}},
        {"null", {"driver=null-co,node-name=n,size=4096", "driver=null-co,node-name=n2", "driver=null-aio,node-name=n3"}},
        {"blkdebug under qcow2",
         {"driver=file,node-name=f,filename=$D/base.qcow2", "driver=blkdebug,node-name=d,image=f",
          "driver=qcow2,node-name=q,file=d"}},
        {"blkdebug inline image", {"driver=blkdebug,node-name=d,image.driver=file,image.filename=$D/r.raw"}},
        {"blkdebug options",
         {"driver=blkdebug,node-name=d,align=4096,image.driver=file,image.filename=$D/r.raw",
          R"({"driver": "blkdebug", "node-name": "e", "inject-error": [{"event": "read_aio", "errno": 28}],)"
          R"( "set-state": [{"event": "read_aio", "new_state": 2}], "image": "d"})"}},
        {"raw offset and size",
         {"driver=file,node-name=f,filename=$D/r.raw", "driver=raw,node-name=r,file=f,offset=4096,size=8192"}},
        {"compat 0.10", {"driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=$D/old.qcow2"}},
        {"compressed cluster", {"driver=file,node-name=f,filename=$D/comp.qcow2", "driver=qcow2,node-name=q,file=f"}},
        {"dirty lazy-refcounts",
         {"driver=file,node-name=f,filename=$D/lazy.qcow2,read-only=on", "driver=qcow2,node-name=q,file=f,read-only=on"}},
        {"internal snapshots, and through raw",
         {"driver=qcow2,node-name=q,file.driver=file,file.filename=$D/snap.qcow2", "driver=raw,node-name=r,file=q"}},
        {"data file named in the image", {"driver=qcow2,node-name=q,file.driver=file,file.filename=$D/df.qcow2"}},
        {"data file by node-name",
         {"driver=file,node-name=dd,filename=$D/dd2.raw",
          "driver=qcow2,node-name=q,data-file=dd,file.driver=file,file.filename=$D/df.qcow2"}},
        {"persistent bitmaps read-only",
         {"driver=file,node-name=f,filename=$D/bm.qcow2,read-only=on", "driver=qcow2,node-name=q,file=f,read-only=on"}},
    };
    return k;
}

// ---------------------------------------------------------------- tests

START_TEST(test_same_as_qsd)
{
    make_images();
    for (const Case &c : cases()) {
        std::string theirs = qsd_query(c.blockdevs, c.flat);
        Graph g(c.blockdevs);
        ojson ours = query_named_block_nodes_ordered(g.graph, c.flat);
        std::string text = qdict_json_string(ours);
        ck_assert_msg(normalize(text) == normalize(theirs), "%s:\nQSD:  %s\nours: %s", c.name,
                      normalize(theirs).c_str(), normalize(text).c_str());
        // The unordered forms hold the same values.
        ck_assert(query_named_block_nodes(g.graph, c.flat) == json(ours));
        std::vector<BlockNode *> order = named_nodes_in_qemu_order(g.graph);
        ck_assert_uint_eq(order.size(), ours.size());
        for (size_t i = 0; i < order.size(); i++) ck_assert(block_device_info(order[i], c.flat) == json(ours[i]));
    }
}
END_TEST

// After blockdev-snapshot and blockdev-reopen (here BlockGraph's
// snapshot_overlay and reopen) the reply is still QSD's.
START_TEST(test_same_as_qsd_after_graph_changes)
{
    make_images();
    must_run("qemu-img create -f qcow2 -b base.qcow2 -F qcow2 ovl.qcow2");
    must_run("qemu-img create -f qcow2 -b " + tmp_path("base.qcow2") + " -F qcow2 ovl-abs.qcow2");
    for (const char *ovl : {"ovl.qcow2", "ovl-abs.qcow2"}) {
        const std::vector<std::string> base = {"driver=qcow2,node-name=b,file.driver=file,file.filename=$D/base.qcow2"};
        const std::string add = std::string(R"({"driver": "qcow2", "node-name": "o", "backing": null, )") +
                                R"("file": {"driver": "file", "filename": "$D/)" + ovl + R"("}})";
        std::string theirs = qsd_query(base, false,
                                       {R"({"execute": "blockdev-add", "arguments": )" + add + "}",
                                        R"({"execute": "blockdev-snapshot", "arguments": {"node": "b", "overlay": "o"}})"});
        Graph g(base);
        auto o = parse_blockdev_arg(g.graph.registry(), subst(add));
        ck_assert(o.ok());
        auto on = g.graph.add_node(o.value());
        ck_assert(on.ok());
        BlockNode *b = g.graph.find("b");
        Status st = g.graph.snapshot_overlay(b, on.value());
        ck_assert_msg(st.ok(), "%s", st.ok() ? "" : st.error().msg.c_str());
        (void)g.graph.set_read_only(b, true);
        std::string ours = qdict_json_string(query_named_block_nodes_ordered(g.graph, false));
        ck_assert_msg(normalize(ours) == normalize(theirs), "snapshot onto %s:\nQSD:  %s\nours: %s", ovl,
                      normalize(theirs).c_str(), normalize(ours).c_str());
    }
    // Reopened read-only, then its file too.
    const std::vector<std::string> graph = {"driver=file,node-name=f,filename=$D/base.qcow2",
                                            "driver=qcow2,node-name=q,file=f"};
    const std::string reopen = R"({"driver": "qcow2", "node-name": "q", "file": "f", "read-only": true})";
    std::string theirs =
        qsd_query(graph, false, {R"({"execute": "blockdev-reopen", "arguments": {"options": [)" + reopen + "]}}"});
    Graph g(graph);
    auto o = parse_blockdev_arg(g.graph.registry(), reopen);
    ck_assert(o.ok());
    Status st = g.graph.reopen({o.value()});
    ck_assert_msg(st.ok(), "%s", st.ok() ? "" : st.error().msg.c_str());
    std::string ours = qdict_json_string(query_named_block_nodes_ordered(g.graph, false));
    ck_assert_msg(normalize(ours) == normalize(theirs), "reopen:\nQSD:  %s\nours: %s", normalize(theirs).c_str(),
                  normalize(ours).c_str());
}
END_TEST

// Checks image (ours) against one qemu-img info answer: the members whose
// value qemu-img fixes.
void check_image(const json &ours, const json &img, const std::string &what)
{
    for (const char *k : {"filename", "virtual-size", "cluster-size", "dirty-flag", "backing-filename",
                          "full-backing-filename", "backing-filename-format", "format-specific"}) {
        ck_assert_msg(ours.contains(k) == img.contains(k), "%s: %s present in %s only", what.c_str(), k,
                      ours.contains(k) ? "ours" : "qemu-img's");
        if (img.contains(k)) {
            ck_assert_msg(ours[k] == img[k], "%s: %s: ours %s, qemu-img %s", what.c_str(), k, ours[k].dump().c_str(),
                          img[k].dump().c_str());
        }
    }
}

START_TEST(test_chain_fields_vs_qemu_img)
{
    make_images();
    const std::string top = tmp_path("top.qcow2"), mid = tmp_path("mid.qcow2"), base = tmp_path("base.qcow2");
    Graph g({"driver=file,node-name=f,filename=$D/top.qcow2", "driver=qcow2,node-name=q,file=f"});
    json all = query_named_block_nodes(g.graph, false);
    // Named as QEMU names them: f, q, then top's backing chain, inline file
    // before its format; listed last named first.
    ck_assert_uint_eq(all.size(), 6);
    const char *drv[] = {"qcow2", "file", "qcow2", "file", "qcow2", "file"};
    const char *files[] = {base.c_str(), base.c_str(), mid.c_str(), mid.c_str(), top.c_str(), top.c_str()};
    const int depth[] = {0, 0, 1, 0, 2, 0};
    for (size_t i = 0; i < 6; i++) {
        expect_str(str(all[i]["drv"]), drv[i], "all[i][\"drv\"]");
        expect_str(str(all[i]["file"]), files[i], "all[i][\"file\"]");
        ck_assert_int_eq(all[i]["backing_file_depth"].get<int>(), depth[i]);
        ck_assert(all[i]["ro"].get<bool>() == (i < 4));
        ck_assert(all[i]["node-name"].get<std::string>()[0] == (i < 4 ? '#' : "qf"[i - 4]));
    }
    expect_str(str(all[4]["backing_file"]), mid, "all[4][\"backing_file\"]");
    expect_str(str(all[2]["backing_file"]), base, "all[2][\"backing_file\"]");
    ck_assert(!all[0].contains("backing_file"));

    // The format nodes' images and their backing-image chain.
    json chain = qemu_img_info("--backing-chain " + shq(top));
    ck_assert_uint_eq(chain.size(), 3);
    json img = all[4]["image"];
    for (size_t i = 0; i < 3; i++) {
        check_image(img, chain[i], "chain[" + std::to_string(i) + "]");
        expect_str(str(img["format"]), "qcow2", "img[\"format\"]");
        if (i < 2) img = img["backing-image"];
    }
    ck_assert(!img.contains("backing-image"));
    check_image(all[2]["image"], chain[1], "mid node");
    check_image(all[0]["image"], chain[2], "base node");
    // The protocol nodes, as qemu-img sees a file node (lengths in sectors).
    const size_t file_idx[] = {5, 3, 1};
    const std::string names[] = {top, mid, base};
    for (size_t i = 0; i < 3; i++) {
        json fi = qemu_img_info("--image-opts " + shq("driver=file,filename=" + names[i]));
        check_image(all[file_idx[i]]["image"], fi, names[i] + " file node");
        expect_str(str(all[file_idx[i]]["image"]["format"]), "file", "all[file_idx[i]][\"image\"][\"format\"]");
    }
    // flat: no backing-image, depth 0, the rest unchanged.
    json flat = query_named_block_nodes(g.graph, true);
    ck_assert(!flat[4]["image"].contains("backing-image"));
    ck_assert_int_eq(flat[4]["backing_file_depth"].get<int>(), 0);
    flat[4]["image"]["backing-image"] = all[4]["image"]["backing-image"];
    flat[4]["backing_file_depth"] = 2;
    ck_assert(flat[4] == all[4]);
}
END_TEST

START_TEST(test_images_vs_qemu_img)
{
    make_images();
    for (const char *name : {"old.qcow2", "bm.qcow2", "comp.qcow2", "lazy.qcow2", "r.raw"}) {
        std::string path = tmp_path(name);
        bool raw = std::strstr(name, ".raw") != nullptr;
        Graph g({"driver=file,node-name=f,read-only=on,filename=" + path,
                 std::string("node-name=n,read-only=on,file=f,driver=") + (raw ? "raw" : "qcow2")});
        json info = block_device_info(g.graph.find("n"), false);
        check_image(info["image"], qemu_img_info(shq(path)), name);
        ck_assert(info["ro"].get<bool>());
        expect_str(str(info["drv"]), raw ? "raw" : "qcow2", "info[\"drv\"]");
        expect_str(str(info["file"]), path, "info[\"file\"]");
        ck_assert(!info.contains("backing_file"));
        ck_assert_int_eq(info["backing_file_depth"].get<int>(), 0);
    }
}
END_TEST

// A json:{...} file name we print opens, in qemu-io and qemu-img, a node
// of the same size whose own name is that same text.
START_TEST(test_json_filenames_open_in_qemu_img)
{
    make_images();
    const std::vector<std::vector<std::string>> graphs = {
        {"driver=file,node-name=f,filename=$D/r.raw", "driver=raw,node-name=x,file=f,offset=4096,size=8192"},
        {"driver=null-co,node-name=x,size=4096"},
        {"driver=qcow2,node-name=b,read-only=on,file.driver=file,file.filename=$D/base.qcow2",
         "driver=qcow2,node-name=x,read-only=on,backing=b,file.driver=file,file.filename=$D/mid.qcow2"},
        {R"({"driver": "qcow2", "node-name": "x", "read-only": true, "backing": null,)"
         R"( "file": {"driver": "file", "filename": "$D/mid.qcow2"}})"},
    };
    for (const auto &args : graphs) {
        Graph g(args);
        BlockNode *x = g.graph.find("x");
        std::string name = node_qemu_filename(x);
        ck_assert_msg(name.compare(0, 5, "json:") == 0, "%s", name.c_str());
        // qemu-io opens it (with its backing node) at our length ...
        const std::string len = std::to_string(x->getlength());
        ck_assert_msg(run("qemu-io -r -U -c 'read 0 " + len + "' " + shq(name) + " >/dev/null 2>&1") == 0,
                      "qemu-io cannot read %s bytes of %s", len.c_str(), name.c_str());
        ck_assert_msg(run("qemu-io -r -U -c 'read " + len + " 512' " + shq(name) + " >/dev/null 2>&1") != 0,
                      "%s is longer than %s", name.c_str(), len.c_str());
        // ... and names it so (qemu-img info opens images without their
        // backing files: it takes no "backing" member and needs none).
        if (name.find("\"backing\"") != std::string::npos) continue;
        json img = qemu_img_info(shq(name));
        ck_assert_int_eq(img["virtual-size"].get<int64_t>(), x->getlength());
        expect_str(str(img["filename"]), name, "img[\"filename\"]");
    }
}
END_TEST

// The dirty-bitmaps member: QSD reports the two persistent bitmaps of an
// image opened writable; the same statuses print the same text.
START_TEST(test_dirty_bitmaps_json)
{
    make_images();
    std::string theirs = qsd_query({"driver=file,node-name=f,filename=$D/bm.qcow2", "driver=qcow2,node-name=q,file=f"},
                                   false);
    ojson q = ojson::parse(theirs);
    expect_str(str(q[0]["node-name"]), "q", "q[0][\"node-name\"]");
    ck_assert(q[0].contains("dirty-bitmaps"));
    std::vector<DirtyBitmapStatus> st(2);
    st[0].name = "b1";
    st[0].granularity = 131072;
    st[0].persistent = true;
    st[1].name = "b0";
    st[1].granularity = 65536;
    st[1].recording = true;
    st[1].persistent = true;
    expect_str(qdict_json_string(dirty_bitmaps_json(st)), qdict_json_string(q[0]["dirty-bitmaps"]), "dirty-bitmaps");
    st[0].inconsistent = true;
    ck_assert(dirty_bitmaps_json(st)[0]["inconsistent"] == true);
    ck_assert(!dirty_bitmaps_json(st)[1].contains("inconsistent"));
}
END_TEST

// qdict_json_string: QEMU's order and escapes, on values whose text QEMU's
// qemu-img prints (the qcow2 format-specific member).
START_TEST(test_qdict_json_string)
{
    ojson o = ojson::object();
    o["file"] = 1;
    o["node-name"] = 2;
    o["backing_file"] = 3;
    o["write_threshold"] = 4;   // same bucket as backing_file: printed first
    expect_str(qdict_json_string(o), R"({"node-name": 2, "write_threshold": 4, "backing_file": 3, "file": 1})",
               "bucket order");
    ojson s = std::string("a\"\\\n\x01\xc3\xa9/");
    expect_str(qdict_json_string(s), R"("a\"\\\n\u0001\u00E9/")", "escapes");
    expect_str(qdict_json_string(ojson::array({true, nullptr, -5})), "[true, null, -5]", "array");
}
END_TEST

Suite *block_info_suite()
{
    Suite *s = suite_create("block-info");
    TCase *tc = tcase_create("qemu");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_same_as_qsd);
    tcase_add_test(tc, test_same_as_qsd_after_graph_changes);
    tcase_add_test(tc, test_chain_fields_vs_qemu_img);
    tcase_add_test(tc, test_images_vs_qemu_img);
    tcase_add_test(tc, test_json_filenames_open_in_qemu_img);
    tcase_add_test(tc, test_dirty_bitmaps_json);
    tcase_add_test(tc, test_qdict_json_string);
    suite_add_tcase(s, tc);
    return s;
}

} // namespace

int main()
{
    SRunner *sr = srunner_create(block_info_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
