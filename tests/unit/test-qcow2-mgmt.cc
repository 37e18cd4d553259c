// Unit tests for qcow2 image management (block/qcow2/qcow2-create.cc,
// qcow2-check.cc, qcow2-snapshot-write.cc, qcow2-amend.cc) and the generic
// create path (block/image-mgmt.cc, block/file-create.cc), judged by the
// real qemu-img:
//   - images created by us for every create option combination are accepted
//     by `qemu-img check` (clean) and `qemu-img info` shows the options;
//     without preallocation they are byte-identical to qemu-img's twin;
//     `qemu-img map` of preallocated images equals the twin's;
//   - option errors carry qemu-img's messages;
//   - measure equals `qemu-img measure`.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block-driver.h"
#include "block/qcow2/qcow2-mgmt.h"
#include "util/aio.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

namespace bg {
extern const BlockDriver kDriverFile, kDriverRaw, kDriverQcow2;
}

using namespace bg;
using namespace bgtest;
using nlohmann::json;

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

std::string read_all(const std::string &path)
{
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// A registry of the drivers image management involves.
const DriverRegistry &registry()
{
    static const DriverRegistry reg = [] {
        DriverRegistry r;
        r.add(&kDriverFile);
        r.add(&kDriverRaw);
        r.add(&kDriverQcow2);
        return r;
    }();
    return reg;
}

struct Loop {
    std::unique_ptr<AioContext> ctx = AioContext::create();
};

// Creates fmt image name (in g_dir) with the -o list and size; returns the status.
Status create(const std::string &fmt, const std::string &name, const std::string &olist, const std::string &size,
              std::string *line = nullptr, bool unsafe = false)
{
    ImgCreateParams p;
    p.fmt = fmt;
    p.filename = name;
    if (!olist.empty()) {
        Status s = p.opts.parse_append(olist);
        if (!s) return s;
    }
    if (!size.empty()) p.opts.set("size", size);
    p.unsafe = unsafe;
    p.on_formatting = [line](const std::string &l) {
        if (line) *line = l;
    };
    // Relative names resolve against g_dir, like qemu-img run there.
    char cwd[4096];
    ck_assert(getcwd(cwd, sizeof(cwd)));
    ck_assert_int_eq(chdir(g_dir), 0);
    Status s = img_create(registry(), p);
    ck_assert_int_eq(chdir(cwd), 0);
    return s;
}

json qemu_json(const std::string &cmd, int *rc = nullptr)
{
    std::string out;
    int r = run(cmd, &out);
    if (rc) *rc = r;
    if (out.empty()) return json();
    return json::parse(out);
}

// qemu-img check on name must be clean (exit 0, no leaks/corruptions).
void assert_clean(const std::string &name)
{
    int rc;
    json j = qemu_json("qemu-img check --output=json '" + name + "' 2>/dev/null", &rc);
    ck_assert_msg(rc == 0, "qemu-img check %s exited %d: %s", name.c_str(), rc, j.dump().c_str());
    ck_assert_msg(!j.contains("leaks") || j["leaks"] == 0, "%s: leaks: %s", name.c_str(), j.dump().c_str());
    ck_assert_msg(!j.contains("corruptions") || j["corruptions"] == 0, "%s", j.dump().c_str());
    ck_assert_int_eq(j["check-errors"].get<int>(), 0);
}

// qemu-img map --output=json of name, without what depends on where the
// clusters are placed: host offsets, and for preallocated images whether a
// range is a hole in the host file ("zero"); adjacent entries merged.
json layout_free_map(const std::string &name, bool drop_zero)
{
    json m = qemu_json("qemu-img map --output=json " + name);
    json out = json::array();
    for (auto &e : m) {
        e.erase("offset");
        if (drop_zero) e.erase("zero");
        if (!out.empty()) {
            json &last = out.back();
            json a = last, b = e;
            for (json *x : {&a, &b}) {
                x->erase("start");
                x->erase("length");
            }
            if (a == b && last["start"].get<uint64_t>() + last["length"].get<uint64_t>() == e["start"].get<uint64_t>()) {
                last["length"] = last["length"].get<uint64_t>() + e["length"].get<uint64_t>();
                continue;
            }
        }
        out.push_back(e);
    }
    return out;
}

// ---------------------------------------------------------------- create

struct Combo {
    const char *opts;
    const char *size;
    // Byte-identical to qemu-img's (no preallocation, and the metadata fits
    // the first refcount block, so QEMU's allocator places it as we do).
    bool identical = true;
};

// Option combinations (backing/data file ones need extra files, below).
const Combo kCombos[] = {
    {"", "1G"},
    {"compat=0.10", "1G"},
    {"compat=1.1", "100M"},
    {"cluster_size=512", "64M"},
    {"cluster_size=4096", "64M"},
    {"cluster_size=8192", "64M"},
    {"cluster_size=1024", "1G"},
    {"cluster_size=4096,refcount_bits=1", "10M"},
    {"cluster_size=2M", "3G"},
    {"refcount_bits=8", "1G"},
    {"refcount_bits=64", "1G"},
    {"refcount_bits=2", "1G"},
    {"refcount_bits=4", "1G"},
    {"refcount_bits=32", "1G"},
    {"extended_l2=on", "1G"},
    {"extended_l2=on,cluster_size=16k", "1G"},
    {"compression_type=zstd", "1G"},
    {"lazy_refcounts=on", "1G"},
    {"compat=v2", "0"},
    {"", "1000"},
    {"cluster_size=512", "16G", false},
    {"preallocation=metadata", "100M"},
    {"preallocation=falloc", "20M"},
    {"preallocation=full", "20M"},
    {"preallocation=metadata,cluster_size=512", "3M"},
    {"preallocation=metadata,cluster_size=512,refcount_bits=1", "3M"},
    {"preallocation=metadata,extended_l2=on", "100M"},
    {"preallocation=falloc,compat=0.10", "5M"},
    {"preallocation=metadata,refcount_bits=64,cluster_size=4096", "30M"},
    {"lazy_refcounts=on,refcount_bits=1,compression_type=zstd,extended_l2=on,cluster_size=32k", "2G"},
};

START_TEST(test_create_matrix)
{
    Loop loop;
    int i = 0;
    for (const Combo &c : kCombos) {
        std::string ours = "ours" + std::to_string(i) + ".qcow2";
        std::string theirs = "theirs" + std::to_string(i) + ".qcow2";
        i++;
        std::string line;
        Status s = create("qcow2", ours, c.opts, c.size, &line);
        ck_assert_msg(s.ok(), "create %s %s: %s", c.opts, c.size, s.ok() ? "" : s.msg().c_str());
        std::string qline;
        std::string ocmd = *c.opts ? std::string(" -o ") + c.opts : "";
        ck_assert_int_eq(run("qemu-img create -f qcow2" + ocmd + " " + theirs + " " + c.size, &qline), 0);
        // Same "Formatting" line (but for the file name).
        std::string expect = qline.substr(0, qline.find('\n'));
        std::string got = line;
        got.replace(got.find(ours), ours.size(), theirs);
        ck_assert_msg(got == expect, "%s:\n ours   %s\n theirs %s", c.opts, got.c_str(), expect.c_str());
        assert_clean(ours);
        json a = qemu_json("qemu-img info --output=json " + ours);
        json b = qemu_json("qemu-img info --output=json " + theirs);
        for (json *x : {&a, &b}) {
            x->erase("filename");
            x->erase("actual-size");
        }
        ck_assert_msg(a == b, "%s: info differs:\n%s\n%s", c.opts, a.dump().c_str(), b.dump().c_str());
        const bool pre = std::strstr(c.opts, "preallocation=metadata") != nullptr;
        json ma = layout_free_map(ours, pre), mb = layout_free_map(theirs, pre);
        ck_assert_msg(ma == mb, "%s: map differs:\n%.500s\n%.500s", c.opts, ma.dump().c_str(), mb.dump().c_str());
        if (c.identical && !std::strstr(c.opts, "preallocation")) {
            ck_assert_msg(read_all(tmp_path(ours)) == read_all(tmp_path(theirs)), "%s %s: not byte-identical",
                          c.opts, c.size);
        } else {
            struct stat sa, sb;
            ck_assert_int_eq(stat(tmp_path(ours).c_str(), &sa), 0);
            ck_assert_int_eq(stat(tmp_path(theirs).c_str(), &sb), 0);
            // The same clusters, placed differently: same file size for
            // falloc/full; within the metadata of a few clusters otherwise.
            long long d = static_cast<long long>(sa.st_size) - sb.st_size;
            ck_assert_msg(d > -(1 << 22) && d < (1 << 22), "%s: size %lld vs %lld", c.opts,
                          (long long)sa.st_size, (long long)sb.st_size);
            if (std::strstr(c.opts, "falloc") || std::strstr(c.opts, "full")) {
                // Data clusters allocated on the host.
                ck_assert_msg(sa.st_blocks * 512 >= sa.st_size - (1 << 20), "%s: not preallocated", c.opts);
            }
        }
    }
}
END_TEST

START_TEST(test_create_backing_and_data_file)
{
    Loop loop;
    ck_assert_int_eq(run("qemu-img create -f qcow2 base.qcow2 1G >/dev/null && qemu-img create -f raw base.raw 512M >/dev/null"), 0);
    struct Case {
        const char *opts;
        const char *size;
        const char *qemu_args;
    } cases[] = {
        {"backing_file=base.qcow2,backing_fmt=qcow2", "", "-b base.qcow2 -F qcow2"},
        {"backing_file=base.raw,backing_fmt=raw", "", "-b base.raw -F raw"},
        {"backing_file=base.raw,backing_fmt=raw", "2G", "-b base.raw -F raw"},
        {"backing_file=base.qcow2,backing_fmt=qcow2,compat=0.10", "", "-b base.qcow2 -F qcow2 -o compat=0.10"},
        {"backing_file=base.qcow2,backing_fmt=qcow2,extended_l2=on,preallocation=metadata", "",
         "-b base.qcow2 -F qcow2 -o extended_l2=on,preallocation=metadata"},
        {"data_file=DATA", "1G", "-o data_file=DATA"},
        {"data_file=DATA,data_file_raw=on", "100M", "-o data_file=DATA,data_file_raw=on"},
        {"data_file=DATA,preallocation=falloc", "10M", "-o data_file=DATA,preallocation=falloc"},
        {"data_file=DATA,backing_file=base.qcow2,backing_fmt=qcow2", "", "-o data_file=DATA -b base.qcow2 -F qcow2"},
    };
    int i = 0;
    for (const Case &c : cases) {
        std::string ours = "bo" + std::to_string(i) + ".qcow2", theirs = "bt" + std::to_string(i) + ".qcow2";
        std::string od = "bo" + std::to_string(i) + ".data", td = "bt" + std::to_string(i) + ".data";
        i++;
        std::string o = c.opts, q = c.qemu_args;
        if (o.find("DATA") != std::string::npos) o.replace(o.find("DATA"), 4, od);
        if (q.find("DATA") != std::string::npos) q.replace(q.find("DATA"), 4, td);
        std::string line, qline;
        Status s = create("qcow2", ours, o, c.size, &line);
        ck_assert_msg(s.ok(), "create %s: %s", c.opts, s.ok() ? "" : s.msg().c_str());
        ck_assert_int_eq(run("qemu-img create -f qcow2 " + q + " " + theirs + " " + c.size, &qline), 0);
        std::string expect = qline.substr(0, qline.find('\n'));
        for (auto [a, b] : {std::pair{ours, theirs}, std::pair{od, td}}) {
            size_t pos;
            while ((pos = line.find(a)) != std::string::npos) line.replace(pos, a.size(), b);
        }
        ck_assert_msg(line == expect, "%s:\n ours   %s\n theirs %s", c.opts, line.c_str(), expect.c_str());
        assert_clean(ours);
        json a = qemu_json("qemu-img info --output=json " + ours);
        json b = qemu_json("qemu-img info --output=json " + theirs);
        for (json *x : {&a, &b}) {
            x->erase("filename");
            x->erase("actual-size");
            if (x->contains("format-specific") && (*x)["format-specific"]["data"].contains("data-file"))
                (*x)["format-specific"]["data"].erase("data-file");
        }
        ck_assert_msg(a == b, "%s: info differs:\n%s\n%s", c.opts, a.dump().c_str(), b.dump().c_str());
        const bool pre = std::strstr(c.opts, "preallocation=metadata") != nullptr;
        json ma = layout_free_map(ours, pre), mb = layout_free_map(theirs, pre);
        ck_assert_msg(ma == mb, "%s: map differs:\n%.500s\n%.500s", c.opts, ma.dump().c_str(), mb.dump().c_str());
        if (o.find("data_file") != std::string::npos) {
            struct stat sa, sb;
            ck_assert_int_eq(stat(tmp_path(od).c_str(), &sa), 0);
            ck_assert_int_eq(stat(tmp_path(td).c_str(), &sb), 0);
            ck_assert_int_eq(sa.st_size, sb.st_size);
        }
    }
}
END_TEST

START_TEST(test_create_errors)
{
    Loop loop;
    struct Case {
        const char *fmt, *opts, *size, *msg;
    } cases[] = {
        {"qcow2", "cluster_size=1000", "1M", "Cluster size must be a power of two between 512 and 2048k"},
        {"qcow2", "cluster_size=abc", "1M", "Parameter 'cluster_size' expects a non-negative number below 2^64"},
        {"qcow2", "refcount_bits=3", "1M", "Refcount width must be a power of two and may not exceed 64 bits"},
        {"qcow2", "refcount_bits=x", "1M", "Parameter 'refcount_bits' expects a number"},
        {"qcow2", "compat=0.10,refcount_bits=8", "1M",
         "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"},
        {"qcow2", "compat=0.10,lazy_refcounts=on", "1M",
         "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
        {"qcow2", "compat=0.10,compression_type=zstd", "1M",
         "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
        {"qcow2", "compat=0.10,extended_l2=on", "1M",
         "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"},
        {"qcow2", "extended_l2=on,cluster_size=4k", "1M",
         "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"},
        {"qcow2", "data_file_raw=on", "1M", "data-file-raw requires data-file"},
        {"qcow2", "compat=2", "1M", "Parameter 'version' does not accept value '2'"},
        {"qcow2", "compression_type=lz", "1M", "Parameter 'compression-type' does not accept value 'lz'"},
        {"qcow2", "preallocation=foo", "1M", "Parameter 'preallocation' does not accept value 'foo'"},
        {"qcow2", "foo=1", "1M", "Invalid parameter 'foo'"},
        {"qcow2", "lazy_refcounts=maybe", "1M", "Parameter 'lazy_refcounts' expects 'on' or 'off'"},
        {"qcow2", "", "", "Image creation needs a size parameter"},
        {"qcow2", "", "100P", "The image size is too large for file format 'qcow2'"},
        {"qcow2", "cluster_size=512", "200G", "The image size is too large for file format 'qcow2' (try using a larger cluster size)"},
        {"qcow2", "backing_file=nonexist.qcow2,backing_fmt=qcow2", "", "Could not open 'nonexist.qcow2': No such file or directory\nCould not open backing image."},
        {"qcow2", "backing_fmt=qcow2", "1M", "Backing format cannot be used without backing file"},
        {"qcow2", "encrypt.format=luks", "1M", "qcow2 encryption ('encrypt.format') is not supported"},
        {"raw", "preallocation=metadata", "1M", "Parameter 'preallocation' does not accept value 'metadata'"},
        {"raw", "cluster_size=4k", "1M", "Invalid parameter 'cluster_size'"},
        {"vmdk", "", "1M", "Unknown file format 'vmdk'"},
    };
    for (const Case &c : cases) {
        Status s = create(c.fmt, "err.img", c.opts, c.size);
        ck_assert_msg(!s.ok(), "%s %s succeeded", c.fmt, c.opts);
        ck_assert_msg(s.msg().rfind(c.msg, 0) == 0, "%s: got '%s', want '%s'", c.opts, s.msg().c_str(), c.msg);
    }
    // -u: no backing file needed, but then a size is.
    Status s = create("qcow2", "u.qcow2", "backing_file=nonexist.qcow2,backing_fmt=qcow2", "", nullptr, true);
    ck_assert(!s.ok());
    ck_assert_str_eq(s.msg().c_str(), "Image creation needs a size parameter");
    s = create("qcow2", "u.qcow2", "backing_file=nonexist.qcow2,backing_fmt=qcow2", "1G", nullptr, true);
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    json j = qemu_json("qemu-img info -U --output=json u.qcow2 2>/dev/null");
    ck_assert(j["backing-filename"].get<std::string>() == "nonexist.qcow2");
    // -b without -F: refused, naming the detected format.
    ck_assert_int_eq(run("qemu-img create -f qcow2 b.qcow2 1M >/dev/null"), 0);
    s = create("qcow2", "nofmt.qcow2", "backing_file=b.qcow2", "");
    ck_assert(!s.ok());
    ck_assert_str_eq(s.msg().c_str(), "Backing file specified without backing format\nDetected format of qcow2.");
}
END_TEST

START_TEST(test_create_raw_file)
{
    Loop loop;
    std::string line;
    for (const char *pre : {"off", "falloc", "full"}) {
        std::string name = std::string("r-") + pre + ".raw";
        Status s = create("raw", name, std::string("preallocation=") + pre, "3M", &line);
        ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
        std::string qline;
        ck_assert_int_eq(run(std::string("qemu-img create -f raw -o preallocation=") + pre + " q" + name + " 3M", &qline), 0);
        line.replace(line.find(name), name.size(), "q" + name);
        const std::string qfirst = qline.substr(0, qline.find('\n'));
        ck_assert_str_eq(line.c_str(), qfirst.c_str());
        struct stat st;
        ck_assert_int_eq(stat(tmp_path(name).c_str(), &st), 0);
        ck_assert_int_eq(st.st_size, 3 << 20);
        if (std::strcmp(pre, "off") != 0) ck_assert_int_ge(st.st_blocks * 512, 3 << 20);
    }
    // Existing data is truncated away.
    ck_assert_int_eq(run("qemu-io -f raw -c 'write -P 0x55 0 64k' r-off.raw >/dev/null"), 0);
    ck_assert(create("file", "r-off.raw", "", "1M").ok());
    ck_assert_int_eq(run("qemu-img create -q -f raw zero.raw 1M && cmp r-off.raw zero.raw"), 0);
    // An image in use (here: by another graph holding WRITE and sharing
    // only reads, as qemu-img does) is not recreated.
    BlockGraph g;
    auto node = g.add_node_json({{"driver", "file"}, {"filename", tmp_path("r-full.raw")}});
    ck_assert(node.ok());
    auto blk = BlockBackend::create(node.value(), kPermConsistentRead | kPermWrite,
                                    kPermConsistentRead | kPermWriteUnchanged, "test");
    ck_assert(blk.ok());
    Status s = create("raw", "r-full.raw", "", "1M");
    ck_assert(!s.ok());
    ck_assert_msg(std::strstr(s.msg().c_str(), "lock"), "%s", s.msg().c_str());
    struct stat st;
    ck_assert_int_eq(stat(tmp_path("r-full.raw").c_str(), &st), 0);
    ck_assert_int_eq(st.st_size, 3 << 20);
}
END_TEST

START_TEST(test_measure)
{
    Loop loop;
    struct Case {
        const char *opts, *size;
    } cases[] = {
        {"", "1G"}, {"cluster_size=512", "1G"}, {"refcount_bits=1", "16G"}, {"extended_l2=on", "100G"},
        {"preallocation=full", "1G"}, {"preallocation=metadata,cluster_size=2M", "1T"}, {"compat=0.10", "7M"},
    };
    for (const Case &c : cases) {
        CreateOptions o;
        ck_assert(o.parse_append(c.opts).ok());
        o.set("size", c.size);
        auto m = img_measure(registry().find("qcow2"), o, nullptr);
        ck_assert_msg(m.ok(), "%s", m.ok() ? "" : m.msg().c_str());
        std::string ocmd = *c.opts ? std::string(" -o ") + c.opts : "";
        json j = qemu_json(std::string("qemu-img measure --output=json -O qcow2") + ocmd + " --size " + c.size);
        ck_assert_uint_eq(m.value().required, j["required"].get<uint64_t>());
        ck_assert_uint_eq(m.value().fully_allocated, j["fully-allocated"].get<uint64_t>());
    }
}
END_TEST

// ---------------------------------------------------------------- check

struct OpenNode {
    std::unique_ptr<BlockGraph> g;
    BlockNode *node = nullptr;
};

OpenNode open_qcow2(const std::string &name, bool writable)
{
    OpenNode o;
    o.g = std::make_unique<BlockGraph>(&registry());
    auto n = o.g->add_node_json({{"driver", "qcow2"},
                                 {"read-only", !writable},
                                 {"file", {{"driver", "file"}, {"filename", tmp_path(name)}, {"read-only", !writable}}}});
    ck_assert_msg(n.ok(), "open %s: %s", name.c_str(), n.ok() ? "" : n.msg().c_str());
    o.node = n.value();
    return o;
}

// Our check's counts must equal qemu-img check --output=json's.
void assert_same_counts(const CheckResult &r, const json &j, const std::string &what)
{
    auto get = [&](const char *k) -> int64_t { return j.contains(k) ? j[k].get<int64_t>() : 0; };
    std::string ours = "leaks=" + std::to_string(r.leaks) + " corruptions=" + std::to_string(r.corruptions) +
                       " check-errors=" + std::to_string(r.check_errors) + " end=" + std::to_string(r.image_end_offset) +
                       " total=" + std::to_string(r.total_clusters) + " alloc=" + std::to_string(r.allocated_clusters) +
                       " frag=" + std::to_string(r.fragmented_clusters) + " comp=" + std::to_string(r.compressed_clusters);
    std::string m = what + ": ours " + ours + "; qemu-img " + j.dump();
    ck_assert_msg(r.leaks == get("leaks"), "%s", m.c_str());
    ck_assert_msg(r.corruptions == get("corruptions"), "%s", m.c_str());
    ck_assert_msg(r.check_errors == get("check-errors"), "%s", m.c_str());
    ck_assert_msg(r.image_end_offset == get("image-end-offset"), "%s", m.c_str());
    ck_assert_msg(static_cast<int64_t>(r.total_clusters) == get("total-clusters"), "%s", m.c_str());
    ck_assert_msg(static_cast<int64_t>(r.allocated_clusters) == get("allocated-clusters"), "%s", m.c_str());
    ck_assert_msg(static_cast<int64_t>(r.fragmented_clusters) == get("fragmented-clusters"), "%s", m.c_str());
    ck_assert_msg(static_cast<int64_t>(r.compressed_clusters) == get("compressed-clusters"), "%s", m.c_str());
}

CheckResult our_check(const std::string &name, CheckFix fix)
{
    OpenNode o = open_qcow2(name, fix != 0);
    CheckResult r;
    Status s = o.node->check(&r, fix);
    ck_assert_msg(s.ok(), "check %s: %s", name.c_str(), s.ok() ? "" : s.msg().c_str());
    return r;
}

json qemu_check(const std::string &name, int *rc = nullptr)
{
    return qemu_json("qemu-img check --output=json " + name + " 2>/dev/null", rc);
}

// Host offset of guest offset off in a qcow2 image (qemu-img map).
uint64_t host_offset(const std::string &name, uint64_t off)
{
    json m = qemu_json("qemu-img map --output=json " + name);
    for (auto &e : m) {
        uint64_t st = e["start"], len = e["length"];
        if (off >= st && off < st + len && e.contains("offset")) return e["offset"].get<uint64_t>() + (off - st);
    }
    ck_abort_msg("no host offset for %llu", (unsigned long long)off);
    return 0;
}

// Writes a big-endian value of width bytes at off of file name.
void patch(const std::string &name, uint64_t off, uint64_t v, int width)
{
    FILE *f = fopen(tmp_path(name).c_str(), "r+b");
    ck_assert(f);
    uint8_t b[8];
    for (int i = 0; i < width; i++) b[i] = static_cast<uint8_t>(v >> (8 * (width - 1 - i)));
    ck_assert_int_eq(fseek(f, static_cast<long>(off), SEEK_SET), 0);
    ck_assert_int_eq(fwrite(b, 1, width, f), (size_t)width);
    fclose(f);
}

const char *kWrites =
    "-c 'write -P 1 0 64k' -c 'write -P 2 1M 192k' -c 'write -c -P 3 4M 64k' -c 'write -c -P 4 4160k 64k' "
    "-c 'write -z 8M 64k' -c 'write -P 5 100M 4k' -c 'write -P 6 200k 4k'";

START_TEST(test_check_clean_images)
{
    Loop loop;
    const char *opts[] = {"", "compat=0.10", "cluster_size=4096,refcount_bits=8", "extended_l2=on",
                          "refcount_bits=64,compression_type=zstd", "cluster_size=512"};
    int i = 0;
    for (const char *o : opts) {
        std::string name = "c" + std::to_string(i++) + ".qcow2";
        ck_assert_int_eq(run(std::string("qemu-img create -q -f qcow2 ") + (*o ? std::string("-o ") + o : "") + " " +
                             name + " 128M"), 0);
        ck_assert_int_eq(run("qemu-io -f qcow2 " + std::string(kWrites) + " " + name + " >/dev/null"), 0);
        // A snapshot shares the clusters (refcount 2, COPIED cleared), then
        // more writes copy some of them.
        ck_assert_int_eq(run("qemu-img snapshot -c s1 " + name + " && qemu-io -f qcow2 -c 'write -P 7 0 4k' " + name +
                             " >/dev/null"), 0);
        int rc;
        json j = qemu_check(name, &rc);
        ck_assert_int_eq(rc, 0);
        CheckResult r = our_check(name, 0);
        assert_same_counts(r, j, name + " (" + o + ")");
        ck_assert_msg(r.messages.empty(), "%s: %s", name.c_str(), r.messages[0].c_str());
    }
    // Our own images too.
    ck_assert(create("qcow2", "ours.qcow2", "preallocation=metadata,cluster_size=4k", "8M").ok());
    CheckResult r = our_check("ours.qcow2", 0);
    assert_same_counts(r, qemu_check("ours.qcow2"), "ours.qcow2");
}
END_TEST

START_TEST(test_check_leaks_and_repair)
{
    Loop loop;
    ck_assert_int_eq(run("qemu-img create -q -f qcow2 l.qcow2 128M && qemu-io -f qcow2 " + std::string(kWrites) +
                         " l.qcow2 >/dev/null"), 0);
    // Leak: drop the L2 entries of guest clusters 1M..1M+192k (3 clusters)
    // after finding where the L2 table lives: L1 entry 0 at l1_table_offset.
    json info = qemu_json("qemu-img info --output=json l.qcow2");
    (void)info;
    std::string hdr = read_all(tmp_path("l.qcow2"));
    auto be64 = [&](size_t off) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) v = v << 8 | static_cast<uint8_t>(hdr[off + k]);
        return v;
    };
    const uint64_t l1 = be64(40);
    const uint64_t l2 = be64(l1) & 0x00fffffffffffe00ULL;
    for (int k = 16; k < 19; k++) patch("l.qcow2", l2 + k * 8, 0, 8);
    int rc;
    json j = qemu_check("l.qcow2", &rc);
    ck_assert_int_eq(rc, 3);
    ck_assert_int_eq(j["leaks"].get<int>(), 3);
    CheckResult r = our_check("l.qcow2", 0);
    assert_same_counts(r, j, "leaky");
    ck_assert_str_eq(r.messages[0].rfind("Leaked cluster ", 0) == 0 ? "ok" : r.messages[0].c_str(), "ok");
    // -r leaks: fixed, then the real check is clean.
    r = our_check("l.qcow2", kCheckFixLeaks);
    ck_assert_int_eq(r.leaks_fixed, 3);
    ck_assert_int_eq(r.leaks, 0);
    j = qemu_check("l.qcow2", &rc);
    ck_assert_msg(rc == 0, "after repair: %s", j.dump().c_str());
    ck_assert_int_eq(run("qemu-io -f qcow2 -c 'read -P 1 0 64k' -c 'read -P 0 1M 192k' -c 'read -P 3 4M 64k' l.qcow2 | grep -q 'read 65536'"), 0);
}
END_TEST

START_TEST(test_check_corruption_and_rebuild)
{
    Loop loop;
    ck_assert_int_eq(run("qemu-img create -q -f qcow2 k.qcow2 128M && qemu-io -f qcow2 " + std::string(kWrites) +
                         " k.qcow2 >/dev/null && cp k.qcow2 k2.qcow2 && cp k.qcow2 k3.qcow2"), 0);
    // Refcount 0 for a used data cluster: corruption, needs a rebuild.
    std::string img = read_all(tmp_path("k.qcow2"));
    auto be64 = [&](size_t off) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) v = v << 8 | static_cast<uint8_t>(img[off + k]);
        return v;
    };
    const uint64_t rt = be64(48);
    const uint64_t rb = be64(rt);
    const uint64_t data = host_offset("k.qcow2", 1 << 20);   // a data cluster
    patch("k.qcow2", rb + (data >> 16) * 2, 0, 2);
    int rc;
    json j = qemu_check("k.qcow2", &rc);
    ck_assert_int_eq(rc, 2);
    CheckResult r = our_check("k.qcow2", 0);
    assert_same_counts(r, j, "refcount 0");
    // -r all: refcounts rebuilt; the real check is then clean and the data intact.
    r = our_check("k.qcow2", kCheckFixLeaks | kCheckFixErrors);
    ck_assert_int_eq(r.corruptions, 0);
    ck_assert_int_ge(r.corruptions_fixed, 1);
    j = qemu_check("k.qcow2", &rc);
    ck_assert_msg(rc == 0, "after rebuild: %s", j.dump().c_str());
    ck_assert_int_eq(run("qemu-img compare k.qcow2 k3.qcow2 >/dev/null"), 0);

    // Refcount 2 on a data cluster whose L2 entry says COPIED: a leak plus a
    // COPIED corruption; -r all fixes both.
    const uint64_t data2 = host_offset("k2.qcow2", 0);
    patch("k2.qcow2", rb + (data2 >> 16) * 2, 2, 2);
    j = qemu_check("k2.qcow2", &rc);
    ck_assert_int_eq(rc, 2);
    r = our_check("k2.qcow2", 0);
    assert_same_counts(r, j, "refcount 2");
    r = our_check("k2.qcow2", kCheckFixLeaks | kCheckFixErrors);
    j = qemu_check("k2.qcow2", &rc);
    ck_assert_msg(rc == 0, "after repair: %s", j.dump().c_str());
    ck_assert_int_eq(run("qemu-img compare k2.qcow2 k3.qcow2 >/dev/null"), 0);
}
END_TEST

START_TEST(test_info)
{
    Loop loop;
    ck_assert_int_eq(run("qemu-img create -q -f qcow2 base.qcow2 1G && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "
                         "-o compression_type=zstd,lazy_refcounts=on,refcount_bits=8 i.qcow2 && "
                         "qemu-img snapshot -c snap1 i.qcow2 && qemu-img bitmap --add i.qcow2 bm0"), 0);
    OpenNode o = open_qcow2("i.qcow2", false);
    auto info = o.node->get_info();
    ck_assert(info.ok());
    json j = qemu_json("qemu-img info --output=json i.qcow2");
    const ImageInfo &ii = info.value();
    ck_assert_uint_eq(*ii.cluster_size, j["cluster-size"].get<uint64_t>());
    ck_assert(*ii.backing_filename == j["backing-filename"].get<std::string>());
    ck_assert(*ii.backing_format == j["backing-filename-format"].get<std::string>());
    ck_assert_int_eq(ii.dirty_flag, j["dirty-flag"].get<bool>());
    ck_assert_uint_eq(ii.snapshots.size(), j["snapshots"].size());
    ck_assert(ii.snapshots[0].name == j["snapshots"][0]["name"].get<std::string>());
    ck_assert_uint_eq(ii.snapshots[0].date_sec, j["snapshots"][0]["date-sec"].get<uint64_t>());
    // format-specific, converted to JSON, equals qemu-img's.
    std::function<json(const InfoValue &)> to_json = [&](const InfoValue &v) -> json {
        switch (v.kind) {
        case InfoValue::Kind::kBool: return v.b;
        case InfoValue::Kind::kInt: return v.i;
        case InfoValue::Kind::kString: return v.s;
        case InfoValue::Kind::kList: {
            json a = json::array();
            for (const InfoValue &x : v.list) a.push_back(to_json(x));
            return a;
        }
        case InfoValue::Kind::kDict: {
            json d = json::object();
            for (const auto &[k, x] : v.dict) d[k] = to_json(x);
            return d;
        }
        default: return json();
        }
    };
    json fs = to_json(ii.format_specific);
    ck_assert_msg(fs == j["format-specific"], "ours %s\nqemu %s", fs.dump().c_str(), j["format-specific"].dump().c_str());
}
END_TEST

Suite *mgmt_suite()
{
    Suite *s = suite_create("qcow2-mgmt");
    TCase *tc = tcase_create("create");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_create_matrix);
    tcase_add_test(tc, test_create_backing_and_data_file);
    tcase_add_test(tc, test_create_errors);
    tcase_add_test(tc, test_create_raw_file);
    tcase_add_test(tc, test_measure);
    suite_add_tcase(s, tc);
    tc = tcase_create("check");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_check_clean_images);
    tcase_add_test(tc, test_check_leaks_and_repair);
    tcase_add_test(tc, test_check_corruption_and_rebuild);
    tcase_add_test(tc, test_info);
    suite_add_tcase(s, tc);
    return s;
}

} // namespace

int main()
{
    SRunner *sr = srunner_create(mgmt_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
