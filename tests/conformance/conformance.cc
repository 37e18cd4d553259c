// The driver conformance suite: stacks, environment and runner
// (docs/conformance.md). The cases are in cases.cc.
//
//   conformance [--stacks FILE] [--filter-stacks GLOB,...] [--filter-cases GLOB,...] [--jobs N]
//   conformance --list                 stacks with their capabilities
//   conformance --prepare NAME DIR     creates the stack's images in DIR and
//                                      prints: size, caps, JSON (one line each)
//
// Every case runs in a forked child (Check's fork mode) on its own copy of
// the stack's images; with --jobs N, N worker processes each run every Nth
// group of cases (one Check runner each). Cases a stack lacks the capabilities for are not run:
// they are listed as skips and never counted as passes. Exit status 0 only
// if every case that ran passed.
#include "tests/conformance/conformance.h"

#include <fcntl.h>
#include <signal.h>
#include <fnmatch.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "qapi/block-parse.h"
#include "qapi/size.h"
#include "util/log.h"

namespace conf {

std::vector<Stack> g_stacks;
std::string g_workdir;

namespace {

struct CapName {
    DriverCaps bit;
    const char *name;
};
const CapName kCapNames[] = {
    {bg::kCapWrite, "write"},
    {bg::kCapDiscard, "discard"},
    {bg::kCapWriteZeroes, "write-zeroes"},
    {bg::kCapResize, "resize"},
    {bg::kCapShrink, "shrink"},
    {bg::kCapBacking, "backing"},
    {bg::kCapBlockStatus, "block-status"},
    {bg::kCapFlush, "flush"},
    {bg::kCapDiscardZeroes, "discard-zeroes"},
    {bg::kCapPersistent, "persistent"},
    {bg::kCapWriteCompressed, "write-compressed"},
    {bg::kCapPassthrough, "passthrough"},
    {bg::kCapDropsWrites, "drops-writes"},
    {bg::kCapDebugEvents, "debug-events"},
    {bg::kCapLocking, "locking"},
};

std::string trim(const std::string &s)
{
    size_t a = s.find_first_not_of(" \t");
    if (a == std::string::npos) return "";
    size_t b = s.find_last_not_of(" \t\r\n");
    return s.substr(a, b - a + 1);
}

[[noreturn]] void die(const std::string &msg)
{
    fprintf(stderr, "conformance: %s\n", msg.c_str());
    exit(2);
}

const bg::BlockDriver *find_driver(const json &node)
{
    if (!node.is_object() || !node.contains("driver") || !node["driver"].is_string()) return nullptr;
    return bg::builtin_drivers().find(node["driver"].get<std::string>());
}

// Inline children that carry the node's data (not "backing").
const char *const kDataChildKeys[] = {"file", "image", "data-file"};

json primary_child(const json &node)
{
    for (const char *k : {"file", "image"}) {
        if (node.contains(k) && node[k].is_object()) return node[k];
    }
    return json();
}

// The effective capabilities of the node described by `node` (see
// docs/conformance.md "Capabilities").
DriverCaps effective_caps(const json &node, const std::string &where)
{
    const bg::BlockDriver *drv = find_driver(node);
    if (!drv) die(where + ": no known driver in " + node.dump());
    DriverCaps own = drv->caps;
    json prim = primary_child(node);
    if (drv->kind == bg::BlockDriverKind::kFilter || (own & bg::kCapPassthrough)) {
        if (prim.is_null()) die(where + ": passthrough driver '" + drv->name + "' without an inline child");
        DriverCaps child = effective_caps(prim, where);
        // Locking, dropped writes and backing files come from below.
        const DriverCaps from_below = bg::kCapDropsWrites | bg::kCapLocking | bg::kCapBacking;
        return (own & child & ~from_below) | (child & from_below);
    }
    if (drv->kind == bg::BlockDriverKind::kFormat) {
        // Writing, flushing and persistence need every data child to do the same.
        DriverCaps caps = own & ~bg::kCapLocking;
        for (const char *k : kDataChildKeys) {
            if (!node.contains(k) || !node[k].is_object()) continue;
            DriverCaps c = effective_caps(node[k], where);
            caps &= c | ~(bg::kCapWrite | bg::kCapFlush | bg::kCapPersistent);
            caps |= c & bg::kCapLocking;
            if (c & bg::kCapDropsWrites) caps &= ~bg::kCapPersistent;
        }
        return caps;
    }
    return own;
}

// True if the format node directly above the metadata leaf fires events.
bool metadata_parent_events(const json &node)
{
    const bg::BlockDriver *drv = find_driver(node);
    json prim = primary_child(node);
    if (!drv || prim.is_null()) return false;
    const bg::BlockDriver *cd = find_driver(prim);
    if (cd && cd->kind == bg::BlockDriverKind::kProtocol) return (drv->caps & bg::kCapDebugEvents) != 0;
    return metadata_parent_events(prim);
}

// The node metadata_parent_events() finds has a separate data child.
bool metadata_parent_data_apart(const json &node)
{
    json prim = primary_child(node);
    if (prim.is_null()) return false;
    const bg::BlockDriver *cd = find_driver(prim);
    if (cd && cd->kind == bg::BlockDriverKind::kProtocol) return node.contains("data-file");
    return metadata_parent_data_apart(prim);
}

int64_t parse_bytes(const std::string &v, const std::string &where)
{
    auto r = bg::parse_size(v);
    if (!r.ok()) die(where + ": " + r.msg());
    return static_cast<int64_t>(r.value());
}

void parse_stacks(const std::string &path)
{
    std::ifstream in(path);
    if (!in) die("cannot read " + path + ": " + strerror(errno));
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        lineno++;
        std::string t = trim(line);
        if (t.empty() || t[0] == '#') continue;
        std::string where = path + ":" + std::to_string(lineno);
        std::vector<std::string> f;
        size_t pos = 0;
        for (int i = 0; i < 4; i++) {
            size_t bar = t.find(" | ", pos);
            if (bar == std::string::npos) die(where + ": expected 5 fields separated by ' | '");
            f.push_back(trim(t.substr(pos, bar - pos)));
            pos = bar + 3;
        }
        f.push_back(trim(t.substr(pos)));
        Stack s;
        s.name = s.base = f[0];
        for (char c : s.name) {
            if (!isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') die(where + ": bad stack name");
        }
        for (const Stack &o : g_stacks) {
            if (o.name == s.name) die(where + ": stack '" + s.name + "' is listed twice");
        }
        if (f[1] != "-") {
            std::istringstream ws(f[1]);
            std::string w;
            while (ws >> w) {
                if (w.size() < 2 || w[0] != '-') die(where + ": capability adjustment '" + w + "' must be -NAME");
                if (w == "-readonly-open") {
                    s.readonly_open = false;
                    continue;
                }
                bool found = false;
                for (const CapName &c : kCapNames) {
                    if (w.substr(1) == c.name) {
                        s.minus |= c.bit;
                        found = true;
                    }
                }
                if (!found) die(where + ": unknown capability '" + w.substr(1) + "'");
            }
        }
        if (f[2] != "-") {
            std::istringstream ws(f[2]);
            std::string w;
            while (ws >> w) {
                size_t eq = w.find('=');
                if (eq == std::string::npos) die(where + ": geometry '" + w + "' must be key=size");
                std::string k = w.substr(0, eq);
                int64_t v = parse_bytes(w.substr(eq + 1), where);
                if (k == "cluster") s.geo.cluster = v;
                else if (k == "l2") s.geo.l2 = v;
                else if (k == "refblock") s.geo.refblock = v;
                else die(where + ": unknown geometry key '" + k + "'");
            }
        }
        s.setup = f[3] == "-" ? "" : f[3];
        s.tmpl = f[4];
        json j;
        try {
            std::string probe = s.tmpl;
            for (size_t p; (p = probe.find("@D@")) != std::string::npos;) probe.replace(p, 3, "/x");
            j = json::parse(probe);
            auto o = bg::blockdev_options_from_tree(bg::builtin_drivers(), j, false);
            if (!o.ok()) die(where + ": " + o.msg());
        } catch (const std::exception &e) {
            die(where + ": JSON: " + e.what());
        }
        s.caps = effective_caps(j, where) & ~s.minus;
        s.events = metadata_parent_events(j);
        s.data_apart = metadata_parent_data_apart(j);
        g_stacks.push_back(s);
        Stack d = s;
        d.name = s.name + "+blkdebug";
        d.blkdebug_top = true;
        json top = {{"driver", "blkdebug"}, {"image", j}};
        d.caps = effective_caps(top, where) & ~s.minus;
        g_stacks.push_back(d);
    }
    if (g_stacks.empty()) die(path + ": no stacks");
}

bool match_any(const std::string &name, const std::string &globs)
{
    if (globs.empty()) return true;
    std::istringstream in(globs);
    std::string g;
    while (std::getline(in, g, ',')) {
        if (!g.empty() && fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
    }
    return false;
}

// A name unique to the directory, for images that live outside it (rbd
// images on the cluster): its physical path with every '/' replaced by '_'
// (what "pwd -P|tr / _" prints in it, so serve/unserve scripts compute the
// same). The directory must exist.
std::string dir_id(const std::string &dir)
{
    char real[PATH_MAX];
    std::string id = realpath(dir.c_str(), real) ? real : dir;
    std::replace(id.begin(), id.end(), '/', '_');
    return id;
}

// Replaces @D@ by dir and @ID@ by dir_id(dir).
std::string substitute_dir(const std::string &tmpl, const std::string &dir)
{
    std::string s = tmpl;
    // Directory names are ours (no quotes or backslashes), so plain text works in JSON.
    for (size_t p; (p = s.find("@D@")) != std::string::npos;) s.replace(p, 3, dir);
    if (s.find("@ID@") == std::string::npos) return s;
    std::string id = dir_id(dir);
    for (size_t p; (p = s.find("@ID@")) != std::string::npos;) s.replace(p, 4, id);
    return s;
}

// Format nodes of a tree (for qemu-img check).
void collect_formats(const json &node, std::vector<json> *out)
{
    const bg::BlockDriver *drv = find_driver(node);
    // A format that passes its child's bytes through (raw) has no metadata to check.
    if (drv && drv->kind == bg::BlockDriverKind::kFormat && !(drv->caps & bg::kCapPassthrough)) out->push_back(node);
    for (const char *k : kDataChildKeys) {
        if (node.contains(k) && node[k].is_object()) collect_formats(node[k], out);
    }
}

void strip_for_qemu(json &node)
{
    // A copy-on-read filter needs its child writable, a copy-before-write
    // filter its target, and QEMU's tools read the pristine images
    // read-only: they read the stack below it (the same data).
    for (std::string d; ((d = node.value("driver", "")) == "copy-on-read" || d == "copy-before-write") &&
                        node.contains("file") && node["file"].is_object();) {
        json child = node["file"];
        node = std::move(child);
    }
    node.erase("node-name");
    node.erase("discard");
    for (const char *k : kDataChildKeys) {
        if (node.contains(k) && node[k].is_object()) strip_for_qemu(node[k]);
    }
}

// Copies the regular files of src into dst (created), keeping holes.
void copy_dir_sparse(const std::string &src, const std::string &dst)
{
    if (mkdir(dst.c_str(), 0700) != 0 && errno != EEXIST) die("mkdir " + dst + ": " + strerror(errno));
    std::string out;
    // A handful of files; let cp keep the holes (SEEK_DATA aware).
    int rc = run_cmd("cp -a --sparse=always " + shell_quote(src) + "/. " + shell_quote(dst) + "/", &out);
    if (rc != 0) die("copying " + src + " failed: " + out);
}

// Stacks served over the network: a set-up that leaves a file "serve" in
// the stack's directory declares that the images are reached through a
// server (NBD). "serve" holds shell commands, run with "sh ./serve" in
// every copy of the directory before the stack is opened (and in the
// pristine one while it is read), that start the server in the background
// and return once it accepts connections, its pid in "serve.pid"
// (qemu-nbd --fork --pid-file=serve.pid does both). stop_server kills it.
//
// The calling process becomes a child subreaper first: the server forks
// away from the shell that started it, and its exit must be seen at once.
// Orphans go to the nearest subreaper, so stop_server reaps the server
// itself; otherwise the dead server stays a zombie until PID 1 reaps it,
// which some inits do only every second or two (kill(pid, 0) succeeds on
// a zombie), and every case on a served stack waited that long.
//
// Images that live outside the directory (rbd: "serve" creates the
// directory's image on the cluster) are removed by the commands in a file
// "unserve", which stop_server runs after the kill (errors ignored: it may
// run twice for a directory).
void start_server(const std::string &dir)
{
    if (access((dir + "/serve").c_str(), F_OK) != 0) return;
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    std::string out;
    int rc = run_cmd("cd " + shell_quote(dir) + " && rm -f serve.pid *.sock && sh ./serve", &out);
    if (rc != 0) die("starting the server in " + dir + " failed (exit " + std::to_string(rc) + "): " + out);
}

void stop_server(const std::string &dir)
{
    std::ifstream f(dir + "/serve.pid");
    long pid = 0;
    if ((f >> pid) && pid > 1) {
        // Our child when start_server made us its subreaper (then reaped here);
        // otherwise waitpid fails with ECHILD and only kill(pid, 0) tells.
        auto gone = [pid] {
            return waitpid(static_cast<pid_t>(pid), nullptr, WNOHANG) == pid || kill(static_cast<pid_t>(pid), 0) != 0;
        };
        if (kill(static_cast<pid_t>(pid), SIGTERM) == 0) {
            for (int i = 0; i < 400 && !gone(); i++) usleep(5000);
            if (kill(static_cast<pid_t>(pid), SIGKILL) == 0) waitpid(static_cast<pid_t>(pid), nullptr, 0);
        }
        unlink((dir + "/serve.pid").c_str());
    }
    if (access((dir + "/unserve").c_str(), F_OK) == 0) {
        std::string out;
        run_cmd("cd " + shell_quote(dir) + " && sh ./unserve", &out);
    }
}

// Stops every server still running and removes every image still served
// under dir (cases that died before their Env's destructor leave theirs
// behind).
void stop_all_servers(const std::string &dir)
{
    std::string out;
    run_cmd("find " + shell_quote(dir) + " -name serve.pid -o -name unserve", &out);
    std::istringstream in(out);
    std::set<std::string> dirs;
    std::string line;
    while (std::getline(in, line)) {
        size_t slash = line.rfind('/');
        if (slash != std::string::npos && slash > 0) dirs.insert(line.substr(0, slash));
    }
    for (const std::string &d : dirs) stop_server(d);
}

void prepare_stack_dir(const Stack &s, const std::string &dir)
{
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) die("mkdir " + dir + ": " + strerror(errno));
    if (!s.setup.empty()) {
        std::string out;
        int rc = run_cmd("cd " + shell_quote(dir) + " && ( " + s.setup + " )", &out);
        if (rc != 0) die("stack '" + s.base + "': set-up failed (exit " + std::to_string(rc) + "): " + out);
    }
}

json stack_tree(const Stack &s, const std::string &dir)
{
    json j = json::parse(substitute_dir(s.tmpl, dir));
    if (s.blkdebug_top) j = json{{"driver", "blkdebug"}, {"image", j}};
    return j;
}

void prepare_stacks()
{
    std::map<std::string, Stack *> done;
    for (Stack &s : g_stacks) {
        auto it = done.find(s.base);
        if (it != done.end()) {
            s.pristine = it->second->pristine;
            s.init_raw = it->second->init_raw;
            s.size = it->second->size;
            s.has_check = it->second->has_check;
            s.has_backing = it->second->has_backing;
            continue;
        }
        std::string base = g_workdir + "/" + s.base;
        if (mkdir(base.c_str(), 0700) != 0) die("mkdir " + base + ": " + strerror(errno));
        s.pristine = base + "/pristine";
        prepare_stack_dir(s, s.pristine);
        json j = stack_tree(s, s.pristine);
        json q = j;
        strip_for_qemu(q);
        s.init_raw = base + "/init.raw";
        std::string out;
        start_server(s.pristine);
        int rc = run_cmd("qemu-img convert -O raw " + shell_quote("json:" + q.dump()) + " " + shell_quote(s.init_raw),
                         &out);
        if (rc != 0) {
            stop_server(s.pristine);
            die("stack '" + s.base + "': qemu-img convert of the fresh images failed: " + out);
        }
        struct stat st;
        if (stat(s.init_raw.c_str(), &st) != 0) die("stat " + s.init_raw);
        s.size = st.st_size;
        std::vector<json> fmts;
        collect_formats(j, &fmts);
        for (json f : fmts) {
            strip_for_qemu(f);
            rc = run_cmd("qemu-img check " + shell_quote("json:" + f.dump()), &out);
            if (rc != 63) s.has_check = true;
            if (rc != 0 && rc != 63) {
                stop_server(s.pristine);
                die("stack '" + s.base + "': the fresh image fails qemu-img check: " + out);
            }
            rc = run_cmd("qemu-img info --output=json " + shell_quote("json:" + f.dump()), &out);
            if (rc == 0 && out.find("\"backing-filename\"") != std::string::npos) s.has_backing = true;
        }
        stop_server(s.pristine);
        done[s.base] = &s;
    }
}

// ---- the result table ----

enum Outcome { kPass, kFail, kSkip };

struct Cell {
    int pass = 0, fail = 0, skip = 0;
};

} // namespace

const char *cap_name(DriverCaps bit)
{
    for (const CapName &c : kCapNames) {
        if (c.bit == bit) return c.name;
    }
    return "?";
}

std::string cap_names(DriverCaps caps)
{
    std::string s;
    for (const CapName &c : kCapNames) {
        if (caps & c.bit) s += (s.empty() ? "" : ",") + std::string(c.name);
    }
    return s.empty() ? "none" : s;
}

std::string shell_quote(const std::string &s)
{
    std::string r = "'";
    for (char c : s) {
        if (c == '\'') r += "'\\''";
        else r += c;
    }
    return r + "'";
}

int run_cmd(const std::string &cmd, std::string *out)
{
    std::string full = "( " + cmd + " ) 2>&1";
    FILE *p = popen(full.c_str(), "r");
    if (!p) return -1;
    std::string o;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) o.append(buf, n);
    int st = pclose(p);
    if (out) *out = trim(o);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// ---------------------------------------------------------------- Model

void Model::init(const std::string &init_raw, int64_t size, bool drops_writes)
{
    init_path_ = init_raw;
    fd_ = open(init_raw.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd_ >= 0, "open %s: %s", init_raw.c_str(), strerror(errno));
    struct stat st;
    fstat(fd_, &st);
    init_len_ = st.st_size;
    size_ = size;
    drops_ = drops_writes;
}

Model::~Model()
{
    if (fd_ >= 0) ::close(fd_);
}

std::vector<uint8_t> &Model::chunk(int64_t idx)
{
    auto it = chunks_.find(idx);
    if (it != chunks_.end()) return it->second;
    std::vector<uint8_t> c(kChunk, 0);
    int64_t off = idx * kChunk;
    if (off < init_len_) {
        int64_t n = std::min(kChunk, init_len_ - off);
        REQUIRE(pread(fd_, c.data(), n, off) == n, "reading %s: %s", init_path_.c_str(), strerror(errno));
    }
    return chunks_[idx] = std::move(c);
}

void Model::write(int64_t off, int64_t len, const uint8_t *buf)
{
    if (drops_) return;
    while (len > 0) {
        int64_t idx = off / kChunk, in = off % kChunk;
        int64_t n = std::min(len, kChunk - in);
        memcpy(chunk(idx).data() + in, buf, n);
        off += n;
        buf += n;
        len -= n;
    }
}

void Model::zero(int64_t off, int64_t len)
{
    if (drops_) return;
    while (len > 0) {
        int64_t idx = off / kChunk, in = off % kChunk;
        int64_t n = std::min(len, kChunk - in);
        memset(chunk(idx).data() + in, 0, n);
        off += n;
        len -= n;
    }
}

void Model::read(int64_t off, int64_t len, uint8_t *buf) const
{
    auto *self = const_cast<Model *>(this);
    while (len > 0) {
        int64_t idx = off / kChunk, in = off % kChunk;
        int64_t n = std::min(len, kChunk - in);
        auto it = chunks_.find(idx);
        if (it != chunks_.end()) {
            memcpy(buf, it->second.data() + in, n);
        } else if (off >= init_len_) {
            memset(buf, 0, n);
        } else {
            memcpy(buf, self->chunk(idx).data() + in, n);
        }
        off += n;
        buf += n;
        len -= n;
    }
}

std::vector<uint8_t> Model::get(int64_t off, int64_t len) const
{
    std::vector<uint8_t> v(len);
    read(off, len, v.data());
    return v;
}

void Model::resize(int64_t new_size)
{
    // Whatever lies between the two sizes reads as zeros afterwards
    // (growing: new area; shrinking then growing again: no stale data).
    bool saved = drops_;
    drops_ = false;
    int64_t lo = std::min(size_, new_size), hi = std::max(size_, new_size);
    zero(lo, hi - lo);
    drops_ = saved;
    size_ = new_size;
}

void Model::materialize(const std::string &path) const
{
    std::string out;
    int rc = run_cmd("cp --sparse=always " + shell_quote(init_path_) + " " + shell_quote(path), &out);
    REQUIRE(rc == 0, "cp %s: %s", init_path_.c_str(), out.c_str());
    int dfd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ck_assert_int_ge(dfd, 0);
    ck_assert_int_eq(ftruncate(dfd, size_), 0);
    for (auto &[idx, c] : chunks_) {
        int64_t off = idx * kChunk;
        if (off >= size_) continue;
        int64_t n = std::min<int64_t>(kChunk, size_ - off);
        REQUIRE(pwrite(dfd, c.data(), n, off) == n, "writing %s: %s", path.c_str(), strerror(errno));
    }
    ::close(dfd);
}

uint8_t pat(uint32_t seed, int64_t off)
{
    uint64_t x = static_cast<uint64_t>(off) * 0x9E3779B97F4A7C15ULL ^ (static_cast<uint64_t>(seed) << 32) ^ seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 29;
    uint8_t b = static_cast<uint8_t>(x);
    return b ? b : 0x5c;
}

std::vector<uint8_t> pattern(uint32_t seed, int64_t off, int64_t len)
{
    std::vector<uint8_t> v(len);
    for (int64_t i = 0; i < len; i++) v[i] = pat(seed, off + i);
    return v;
}

// ---------------------------------------------------------------- Env

Env::Env(int stack, bool do_open) : s(g_stacks.at(stack))
{
    bg::log_set_level(bg::LogLevel::kError);
    dir = g_workdir + "/" + s.base + "/case-" + std::to_string(getpid());
    std::string out;
    run_cmd("rm -rf " + shell_quote(dir), &out);
    copy_dir_sparse(s.pristine, dir);
    start_server(dir);
    m.init(s.init_raw, s.size, (s.caps & bg::kCapDropsWrites) != 0);
    aio = bg::AioContext::create();
    if (do_open) open();
}

Env::~Env()
{
    close();
    aio.reset();
    stop_server(dir);
    std::string out;
    if (!getenv("CONF_KEEP")) run_cmd("rm -rf " + shell_quote(dir), &out);
}

namespace {

void wrap_leaves(json &node, const json &rules)
{
    const bg::BlockDriver *drv = find_driver(node);
    if (drv && drv->kind == bg::BlockDriverKind::kProtocol) {
        json inner = node;
        node = json{{"driver", "blkdebug"}, {"image", inner}, {"inject-error", rules}};
        return;
    }
    for (const char *k : kDataChildKeys) {
        if (node.contains(k) && node[k].is_object()) wrap_leaves(node[k], rules);
    }
}

} // namespace

json Env::stack_json(const OpenOpts &o) const
{
    json j = json::parse(substitute_dir(s.tmpl, dir));
    if (!o.leaf_rules.is_null()) wrap_leaves(j, o.leaf_rules);
    if (s.blkdebug_top) j = json{{"driver", "blkdebug"}, {"image", j}};
    j["node-name"] = "top";
    j["discard"] = o.unmap ? "unmap" : "ignore";
    if (o.read_only) j["read-only"] = true;
    if (o.force_share) j["force-share"] = true;
    return j;
}

std::string Env::qemu_filename() const
{
    json j = json::parse(substitute_dir(s.tmpl, dir));
    if (s.blkdebug_top) j = json{{"driver", "blkdebug"}, {"image", j}};
    strip_for_qemu(j);
    return "json:" + j.dump();
}

std::string Env::try_open(const OpenOpts &o)
{
    close();
    json j = stack_json(o);
    auto opts = bg::blockdev_options_from_tree(bg::builtin_drivers(), j, false);
    if (!opts.ok()) return opts.msg();
    graph = std::make_unique<bg::BlockGraph>();
    auto n = graph->add_node(opts.value());
    if (!n.ok()) {
        graph.reset();
        return n.msg();
    }
    root = n.value();
    auto b = bg::BlockBackend::create(root, o.perm, o.shared, "conformance");
    if (!b.ok()) {
        std::string msg = b.msg();
        graph.reset();
        root = nullptr;
        return msg;
    }
    blk = std::move(b.value());
    return "";
}

void Env::open(const OpenOpts &o)
{
    std::string err = try_open(o);
    REQUIRE(err.empty(), "stack '%s': open failed: %s", s.name.c_str(), err.c_str());
}

void Env::close()
{
    blk.reset();
    if (graph) graph->close_all();
    graph.reset();
    root = nullptr;
}

Env::Second Env::open_second(const OpenOpts &o)
{
    Second sec;
    json j = stack_json(o);
    j["node-name"] = "second";
    auto opts = bg::blockdev_options_from_tree(bg::builtin_drivers(), j, false);
    REQUIRE(opts.ok(), "%s", opts.ok() ? "" : opts.msg().c_str());
    sec.graph = std::make_unique<bg::BlockGraph>();
    auto n = sec.graph->add_node(opts.value());
    if (!n.ok()) {
        sec.error = n.msg();
        return sec;
    }
    auto b = bg::BlockBackend::create(n.value(), o.perm, o.shared, "second");
    if (!b.ok()) {
        sec.error = b.msg();
        return sec;
    }
    sec.blk = std::move(b.value());
    return sec;
}

int Env::rd(int64_t off, int64_t len, void *buf)
{
    return bg::run_in_coroutine([&] { return blk->co_pread(off, len, buf); });
}

int Env::wr(int64_t off, int64_t len, const void *buf, bg::ReqFlags f)
{
    return bg::run_in_coroutine([&] { return blk->co_pwrite(off, len, buf, f); });
}

int Env::wz(int64_t off, int64_t len, bg::ReqFlags f)
{
    return bg::run_in_coroutine([&] { return blk->co_pwrite_zeroes(off, len, f); });
}

int Env::dc(int64_t off, int64_t len)
{
    return bg::run_in_coroutine([&] { return blk->co_pdiscard(off, len); });
}

int Env::fl()
{
    return bg::run_in_coroutine([&] { return blk->co_flush(); });
}

int Env::tr(int64_t len)
{
    return bg::run_in_coroutine([&] { return blk->co_truncate(len, true, bg::PreallocMode::kOff); });
}

int Env::bs(int64_t off, int64_t len, int64_t *pnum, bool want_zero)
{
    return bg::run_in_coroutine([&] {
        int64_t map = 0;
        bg::BlockNode *file = nullptr;
        int depth = 0;
        return blk->co_block_status_above(nullptr, want_zero, off, len, pnum, &map, &file, &depth);
    });
}

void Env::event(const char *name) { blk->root()->debug_event(name); }

void Env::write_pat(int64_t off, int64_t len, uint32_t seed, bg::ReqFlags f)
{
    std::vector<uint8_t> b = pattern(seed, off, len);
    int r = wr(off, len, b.data(), f);
    REQUIRE(r == 0, "write [%ld, +%ld): %s", (long)off, (long)len, strerror(-r));
    m.write(off, len, b.data());
}

void Env::zero(int64_t off, int64_t len, bg::ReqFlags f)
{
    int r = wz(off, len, f);
    REQUIRE(r == 0, "write-zeroes [%ld, +%ld) flags 0x%x: %s", (long)off, (long)len, f, strerror(-r));
    m.zero(off, len);
}

void Env::verify(int64_t off, int64_t len, const char *what)
{
    const int64_t kPiece = 8 << 20;
    for (int64_t done = 0; done < len;) {
        int64_t n = std::min(kPiece, len - done);
        std::vector<uint8_t> got(n, 0xee), want(n);
        int r = rd(off + done, n, got.data());
        REQUIRE(r == 0, "%s: read [%ld, +%ld): %s", what, (long)(off + done), (long)n, strerror(-r));
        m.read(off + done, n, want.data());
        if (got != want) {
            int64_t i = 0;
            while (got[i] == want[i]) i++;
            int64_t j = i;
            while (j < n && got[j] != want[j]) j++;
            ck_abort_msg("%s: data differs at offset %ld (0x%lx): read 0x%02x, expected 0x%02x (first "
                         "differing run %ld bytes)",
                         what, (long)(off + done + i), (long)(off + done + i), got[i], want[i], (long)(j - i));
        }
        done += n;
    }
}

void Env::parallel(const std::vector<std::function<void()>> &fns)
{
    size_t done = 0;
    for (const auto &f : fns) {
        aio->co_enter(bg::coroutine_create_fn([&done, f] {
            f();
            done++;
        }));
    }
    while (done < fns.size()) aio->iterate(true);
}

int Env::qemu_check(std::string *out)
{
    json j = json::parse(substitute_dir(s.tmpl, dir));
    std::vector<json> fmts;
    collect_formats(j, &fmts);
    int worst = 63;
    std::string all;
    for (json f : fmts) {
        strip_for_qemu(f);
        std::string o;
        int rc = run_cmd("qemu-img check " + shell_quote("json:" + f.dump()), &o);
        all += o + "\n";
        if (rc != 63 && (worst == 63 || rc > worst)) worst = rc;
    }
    if (out) *out = all;
    return worst;
}

std::string Env::qemu_compare()
{
    close();
    std::string expected = dir + "/expected.raw";
    m.materialize(expected);
    std::string out;
    int rc = run_cmd("qemu-img compare -F raw " + shell_quote(qemu_filename()) + " " + shell_quote(expected), &out);
    if (rc == 0) return "";
    return "qemu-img compare (exit " + std::to_string(rc) + "): " + out;
}

int64_t unit(const Env &e) { return std::max<int64_t>(e.s.geo.cluster, 64 << 10); }

int64_t work_base(const Env &e, int64_t len, int64_t align)
{
    // One MiB in (or the middle of small devices), aligned.
    int64_t base = std::max<int64_t>(1 << 20, align);
    base = (base + align - 1) / align * align;
    if (base + len > e.size()) base = (e.size() - len) / align * align;
    REQUIRE(base >= 0, "device too small for %ld bytes", (long)len);
    return base;
}

} // namespace conf

// ---------------------------------------------------------------- main

using namespace conf;

namespace {

void usage()
{
    printf("usage: conformance [--stacks FILE] [--filter-stacks GLOB,...] [--filter-cases GLOB,...] [--jobs N]\n"
           "       conformance [--stacks FILE] --list\n"
           "       conformance [--stacks FILE] --prepare STACK DIR\n"
           "         (creates the images in DIR; prints the capabilities, the JSON to open\n"
           "         the stack with, the json: filename for qemu-img, and one json: filename\n"
           "         per format node for qemu-img check)\n"
           "Runs the driver conformance cases over every stack of FILE (default\n"
           "tests/conformance/stacks.txt) and prints a table; see docs/conformance.md.\n"
           "--jobs N runs the groups of cases in N worker processes (default 1).\n"
           "Environment: TMPDIR (scratch space), CONF_KEEP=1 (keep case directories).\n");
}

std::string cell_text(const Cell &c)
{
    if (c.fail) return "FAIL";
    if (c.pass == 0 && c.skip == 0) return "-";
    if (c.pass == 0) return "skip";
    if (c.skip) return "pass*";
    return "pass";
}


// What runs: one Check TCase per (stack, group) with at least one case that
// applies; the cells and the skip list are decided before anything runs.
struct Plan {
    std::vector<TCase *> tcases;
    std::vector<int> tc_worker;          // per TCase: its base's ordinal (worker = ordinal % jobs)
    std::vector<std::string> tc_names;   // owns the names the TCases point to
    std::map<std::pair<std::string, std::string>, Cell> cells;
    std::map<std::string, std::vector<std::string>> skips;   // stack -> "case (reason)"
    std::map<std::string, int> ran_per_stack;
    int n_cases = 0, n_skipped = 0;
};

Plan make_plan(const std::vector<int> &run_stacks, const std::string &filter_cases)
{
    Plan p;
    const auto &cases = all_cases();
    const auto &groups = all_groups();
    p.tc_names.reserve(run_stacks.size() * groups.size());
    std::map<std::string, int> base_ordinal;   // stacks sharing a base share a worker
    for (int si : run_stacks) {
        const Stack &s = g_stacks[si];
        int ordinal = base_ordinal.emplace(s.base, static_cast<int>(base_ordinal.size())).first->second;
        for (const char *g : groups) {
            TCase *tc = nullptr;
            for (const CaseDef &c : cases) {
                if (strcmp(c.group, g) != 0) continue;
                if (!match_any(c.name, filter_cases)) continue;
                std::string reason;
                if ((s.caps & c.needs) != c.needs) {
                    reason = "needs " + cap_names(c.needs & ~s.caps);
                } else if (c.applies) {
                    const char *why = c.applies(s);
                    if (why) reason = why;
                }
                if (!reason.empty()) {
                    p.cells[{s.name, g}].skip++;
                    p.skips[s.name].push_back(std::string(c.name) + " (" + reason + ")");
                    p.n_skipped++;
                    continue;
                }
                if (!tc) {
                    p.tc_names.push_back(s.name + "/" + g);
                    tc = tcase_create(p.tc_names.back().c_str());
                    tcase_set_timeout(tc, 120);
                    p.tcases.push_back(tc);
                    p.tc_worker.push_back(ordinal);
                }
                _tcase_add_test(tc, c.test, 0, 0, si, si + 1);
                p.n_cases++;
                p.ran_per_stack[s.name]++;
            }
        }
    }
    return p;
}

// One result per case that ran: its TCase name ("stack/group"), passed.
struct CaseResult {
    std::string tcname;
    bool pass;
};

std::vector<CaseResult> run_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    std::vector<CaseResult> out;
    int nres = srunner_ntests_run(sr);
    TestResult **res = srunner_results(sr);
    for (int i = 0; i < nres; i++) out.push_back({tr_tcname(res[i]), tr_rtype(res[i]) == CK_PASS});
    free(res);
    srunner_free(sr);
    return out;
}

// Runs the plan's TCases: in this process with jobs == 1; otherwise in
// `jobs` forked workers, each its own Check runner (stdout line-buffered so
// that their lines do not mix) handing its results back through a file in
// g_workdir. All the stacks of one base (NAME and NAME+blkdebug) go to the
// same worker, bases dealt round-robin: no two cases of one stack's images
// or servers run at the same time, as without --jobs. A worker that dies
// returns no results (the caller counts the missing ones as failures).
std::vector<CaseResult> run_tcases(const Plan &plan, int jobs)
{
    const std::vector<TCase *> &tcases = plan.tcases;
    if (jobs <= 1 || tcases.size() <= 1) {
        Suite *suite = suite_create("conformance");
        for (TCase *tc : tcases) suite_add_tcase(suite, tc);
        return run_suite(suite);
    }
    std::vector<pid_t> pids;
    for (int k = 0; k < jobs; k++) {
        Suite *suite = suite_create("conformance");
        for (size_t i = 0; i < tcases.size(); i++) {
            if (plan.tc_worker[i] % jobs == k) suite_add_tcase(suite, tcases[i]);
        }
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) die(std::string("fork: ") + strerror(errno));
        if (pid == 0) {
            setvbuf(stdout, nullptr, _IOLBF, 0);
            std::vector<CaseResult> res = run_suite(suite);
            std::ofstream f(g_workdir + "/results." + std::to_string(k));
            for (const CaseResult &r : res) f << (r.pass ? 'P' : 'F') << ' ' << r.tcname << '\n';
            f.close();
            fflush(stdout);
            _exit(f ? 0 : 1);
        }
        pids.push_back(pid);
    }
    std::vector<CaseResult> all;
    for (int k = 0; k < jobs; k++) {
        int st = 0;
        while (waitpid(pids[k], &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("conformance: worker %d ended with status 0x%x; its results are lost\n", k, st);
            continue;
        }
        std::ifstream f(g_workdir + "/results." + std::to_string(k));
        std::string line;
        while (std::getline(f, line)) {
            if (line.size() > 2) all.push_back({line.substr(2), line[0] == 'P'});
        }
    }
    return all;
}

void print_table(Plan &plan, const std::vector<int> &run_stacks)
{
    const auto &groups = all_groups();
    auto &cells = plan.cells;
    auto &skips = plan.skips;
    auto &ran_per_stack = plan.ran_per_stack;
    size_t w = 10;
    for (int si : run_stacks) w = std::max(w, g_stacks[si].name.size());
    printf("\n%-*s", static_cast<int>(w), "stack");
    for (const char *g : groups) printf(" %-7s", g);
    printf(" %s\n", "run/skip");
    for (int si : run_stacks) {
        const Stack &s = g_stacks[si];
        printf("%-*s", static_cast<int>(w), s.name.c_str());
        for (const char *g : groups) printf(" %-7s", cell_text(cells[{s.name, g}]).c_str());
        printf(" %d/%zu\n", ran_per_stack[s.name], skips[s.name].size());
    }
    printf("\npass = every case of the group ran and passed; pass* = the rest were skipped;\n"
           "skip = no case of the group applies; FAIL = a case failed (see Check's lines above).\n");
    if (!skips.empty()) {
        // One line per (reason, cases), naming the stacks it applies to.
        std::map<std::pair<std::string, std::string>, std::vector<std::string>> lines;
        for (int si : run_stacks) {
            const Stack &s = g_stacks[si];
            auto it = skips.find(s.name);
            if (it == skips.end()) continue;
            std::map<std::string, std::string> by_reason;
            for (const std::string &x : it->second) {
                size_t p = x.find(" (");
                std::string &l = by_reason[x.substr(p + 2, x.size() - p - 3)];
                l += (l.empty() ? "" : " ") + x.substr(0, p);
            }
            for (auto &[why, list] : by_reason) lines[{why, list}].push_back(s.name);
        }
        printf("\nSkipped (never counted as passed):\n");
        for (auto &[key, stacks] : lines) {
            std::string sl;
            for (auto &n : stacks) sl += (sl.empty() ? "" : ", ") + n;
            printf("  %s\n    cases: %s\n    stacks: %s\n", key.first.c_str(), key.second.c_str(), sl.c_str());
        }
    }
}

// --prepare NAME DIR: creates the stack's images in DIR and prints what
// fuse-conformance.sh needs to open it (see usage()).
int prepare_one(const std::string &prepare_name, const std::string &prepare_dir)
{
    for (const Stack &s : g_stacks) {
        if (s.name != prepare_name) continue;
        char real[PATH_MAX];
        prepare_stack_dir(s, prepare_dir);
        if (!realpath(prepare_dir.c_str(), real)) die("realpath " + prepare_dir);
        json j = stack_tree(s, real);
        j["node-name"] = "top";
        j["discard"] = "unmap";
        json q = stack_tree(s, real);
        strip_for_qemu(q);
        printf("%s\n%s\n%s\n", cap_names(s.caps).c_str(), j.dump().c_str(), ("json:" + q.dump()).c_str());
        std::vector<json> fmts;
        collect_formats(stack_tree(s, real), &fmts);
        for (json f : fmts) {
            strip_for_qemu(f);
            printf("json:%s\n", f.dump().c_str());
        }
        return 0;
    }
    die("no stack named '" + prepare_name + "'");
}

} // namespace

int main(int argc, char **argv)
{
    // The rbd stacks, and the qemu-img / rbd commands run for them, find the
    // cluster (scripts/with-ceph.sh's BG_CEPH_DIR) through CEPH_CONF.
    const char *ceph_dir = getenv("BG_CEPH_DIR");
    if (ceph_dir && *ceph_dir && !getenv("CEPH_CONF")) setenv("CEPH_CONF", (std::string(ceph_dir) + "/ceph.conf").c_str(), 1);
    std::string stacks_file = "tests/conformance/stacks.txt";
    std::string filter_stacks, filter_cases;
    bool list = false;
    int jobs = 1;
    std::string prepare_name, prepare_dir;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) die("option " + a + " needs an argument");
            return argv[++i];
        };
        if (a == "--stacks") stacks_file = next();
        else if (a == "--filter-stacks") filter_stacks = next();
        else if (a == "--filter-cases") filter_cases = next();
        else if (a == "--list") list = true;
        else if (a == "--jobs") {
            jobs = atoi(next().c_str());
            if (jobs < 1) die("--jobs needs a positive number");
        } else if (a == "--prepare") {
            prepare_name = next();
            prepare_dir = next();
        } else if (a == "-h" || a == "--help") {
            usage();
            return 0;
        } else {
            die("unknown argument '" + a + "' (see --help)");
        }
    }
    parse_stacks(stacks_file);

    if (list) {
        for (const Stack &s : g_stacks) printf("%-24s %s\n", s.name.c_str(), cap_names(s.caps).c_str());
        return 0;
    }
    if (!prepare_name.empty()) return prepare_one(prepare_name, prepare_dir);

    std::vector<int> run_stacks;
    for (size_t i = 0; i < g_stacks.size(); i++) {
        if (match_any(g_stacks[i].name, filter_stacks)) run_stacks.push_back(static_cast<int>(i));
    }
    if (run_stacks.empty()) die("no stack matches '" + filter_stacks + "'");

    const char *tmp = getenv("TMPDIR");
    std::string wd = std::string(tmp && *tmp ? tmp : "/var/tmp") + "/bg-conformance.XXXXXX";
    std::vector<char> wdbuf(wd.begin(), wd.end());
    wdbuf.push_back(0);
    if (!mkdtemp(wdbuf.data())) die("mkdtemp " + wd + ": " + strerror(errno));
    g_workdir = wdbuf.data();

    // Only the stacks that run need images.
    {
        std::vector<Stack> all = g_stacks;
        std::set<std::string> bases;
        for (int i : run_stacks) bases.insert(g_stacks[i].base);
        std::vector<Stack> keep;
        for (const Stack &s : all) {
            if (bases.count(s.base)) keep.push_back(s);
        }
        std::vector<std::string> names;
        for (int i : run_stacks) names.push_back(g_stacks[i].name);
        g_stacks = keep;
        run_stacks.clear();
        for (size_t i = 0; i < g_stacks.size(); i++) {
            if (std::find(names.begin(), names.end(), g_stacks[i].name) != names.end()) {
                run_stacks.push_back(static_cast<int>(i));
            }
        }
    }
    prepare_stacks();

    Plan plan = make_plan(run_stacks, filter_cases);
    printf("conformance: %zu stacks, %zu cases; %d case runs, %d skipped by capability\n", run_stacks.size(),
           all_cases().size(), plan.n_cases, plan.n_skipped);
    fflush(stdout);
    std::vector<CaseResult> results = run_tcases(plan, jobs);
    int nres = static_cast<int>(results.size());
    int failed = 0;
    for (const CaseResult &r : results) {
        size_t slash = r.tcname.rfind('/');
        Cell &c = plan.cells[{r.tcname.substr(0, slash), r.tcname.substr(slash + 1)}];
        if (r.pass) {
            c.pass++;
        } else {
            c.fail++;
            failed++;
        }
    }
    int passed = nres - failed;
    if (nres < plan.n_cases) {
        printf("conformance: only %d of %d case results came back (a worker died): the rest count as failed\n",
               nres, plan.n_cases);
        failed += plan.n_cases - nres;
    }
    print_table(plan, run_stacks);
    printf("\nconformance: %d stacks, %d cases run, %d passed, %d failed, %d skipped\n",
           static_cast<int>(run_stacks.size()), nres, passed, failed, plan.n_skipped);
    stop_all_servers(g_workdir);
    if (!getenv("CONF_KEEP")) {
        std::string out;
        run_cmd("rm -rf " + shell_quote(g_workdir), &out);
    } else {
        printf("conformance: kept %s\n", g_workdir.c_str());
    }
    return failed == 0 && nres > 0 ? 0 : 1;
}
