// The driver conformance suite (docs/conformance.md): shared declarations of
// tests/conformance/conformance.cc (stacks, environment, runner) and
// tests/conformance/cases.cc (the cases).
//
// A stack is a JSON graph description from tests/conformance/stacks.txt; a
// case is a Check test run once per stack (Check's loop index is the stack
// index) in a forked child, on a private copy of the stack's images. The
// expected content of the device is a Model: what qemu-img converted from the
// freshly created images, plus what the case wrote.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block-driver.h"
#include "util/aio.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

// ck_assert_msg() without Check's bookkeeping on success (which writes to a
// pipe for every passing assertion: far too slow in per-byte loops).
#define REQUIRE(cond, ...)                                                                                       \
    do {                                                                                                          \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                                   \
    } while (0)

namespace conf {

using bg::BlockPerm;
using bg::DriverCaps;
using nlohmann::json;

// Geometry hints of a stack (stacks.txt), bytes.
struct Geometry {
    int64_t cluster = 64 << 10;   // allocation unit (nominal for drivers without one)
    int64_t l2 = 1 << 20;         // guest bytes one L2 table maps
    int64_t refblock = 2 << 20;   // host bytes one refcount block covers
};

struct Stack {
    std::string name;             // "qcow2-c512", "qcow2-c512+blkdebug"
    std::string base;             // name of the line it comes from
    bool blkdebug_top = false;    // a rule-less blkdebug on top of the line's graph
    std::string setup;            // shell commands (or empty)
    std::string tmpl;             // JSON text with @D@
    DriverCaps caps = 0;          // effective capabilities of the stack
    DriverCaps minus = 0;         // removed by the stack line
    Geometry geo;
    // Filled in by prepare_stacks() (parent process):
    std::string pristine;         // directory with the freshly created images
    std::string init_raw;         // qemu-img convert -O raw of the pristine stack
    int64_t size = 0;             // virtual size (from init_raw)
    bool has_check = false;       // some format node has a qemu-img check
    bool has_backing = false;     // the top image has a backing file
    bool events = false;          // the format node above the metadata leaf fires blkdebug events
    bool data_apart = false;      // ... and reads guest data from another child (qcow2 data-file)
    bool readonly_open = true;    // the stack opens read-only ("-readonly-open" in stacks.txt: no,
                                  // e.g. copy-on-read, whose child must be writable)
};

extern std::vector<Stack> g_stacks;
extern std::string g_workdir;     // per-run scratch directory

// Capability names as used in stacks.txt and the report.
const char *cap_name(DriverCaps bit);
std::string cap_names(DriverCaps caps);

// ---- the expected content ----
class Model {
  public:
    void init(const std::string &init_raw, int64_t size, bool drops_writes);
    ~Model();
    int64_t size() const { return size_; }
    void write(int64_t off, int64_t len, const uint8_t *buf);
    void zero(int64_t off, int64_t len);
    void read(int64_t off, int64_t len, uint8_t *buf) const;
    std::vector<uint8_t> get(int64_t off, int64_t len) const;
    void resize(int64_t new_size);
    // Writes the expected image (size bytes, sparse) to path.
    void materialize(const std::string &path) const;

  private:
    static constexpr int64_t kChunk = 64 << 10;
    std::vector<uint8_t> &chunk(int64_t idx);
    std::string init_path_;
    int fd_ = -1;
    int64_t init_len_ = 0;
    int64_t size_ = 0;
    bool drops_ = false;
    mutable std::map<int64_t, std::vector<uint8_t>> chunks_;
};

// Deterministic, never-zero pattern byte of write `seed` at device offset `off`.
uint8_t pat(uint32_t seed, int64_t off);
std::vector<uint8_t> pattern(uint32_t seed, int64_t off, int64_t len);

// ---- one case's environment ----
struct OpenOpts {
    bool read_only = false;
    bool unmap = true;                      // "discard":"unmap" on the top node
    bool force_share = false;
    json leaf_rules;                        // null: none; else inject-error rules put on every leaf
    BlockPerm perm = bg::kPermConsistentRead | bg::kPermWrite | bg::kPermResize;
    BlockPerm shared = bg::kPermAll;
};

class Env {
  public:
    // Copies the stack's pristine images to a private directory, sets up
    // the model and (open = true) opens the stack with default options.
    explicit Env(int stack, bool open = true);
    ~Env();
    Env(const Env &) = delete;

    const Stack &s;
    std::string dir;
    std::unique_ptr<bg::AioContext> aio;
    std::unique_ptr<bg::BlockGraph> graph;
    bg::BlockNode *root = nullptr;
    std::unique_ptr<bg::BlockBackend> blk;
    Model m;

    bool has(DriverCaps c) const { return (s.caps & c) == c; }
    int64_t size() const { return m.size(); }

    // JSON of the stack for this environment's directory.
    json stack_json(const OpenOpts &o) const;
    // The JSON as QEMU's json: pseudo-filename (no node-name, no rules).
    std::string qemu_filename() const;
    // Opens (after close()) into graph/root/blk; fails the case on error.
    void open(const OpenOpts &o = OpenOpts());
    // As open(), but returns the error message instead ("" = opened).
    std::string try_open(const OpenOpts &o);
    void close();
    // Opens the same stack in a second graph (for locking / visibility).
    struct Second {
        std::unique_ptr<bg::BlockGraph> graph;
        std::unique_ptr<bg::BlockBackend> blk;
        std::string error;
        // The backend goes before its graph.
        void reset()
        {
            blk.reset();
            graph.reset();
        }
        Second() = default;
        Second(Second &&) = default;
        ~Second() { reset(); }
    };
    Second open_second(const OpenOpts &o);

    // Synchronous I/O through blk (run_in_coroutine).
    int rd(int64_t off, int64_t len, void *buf);
    int wr(int64_t off, int64_t len, const void *buf, bg::ReqFlags f = 0);
    int wz(int64_t off, int64_t len, bg::ReqFlags f = 0);
    int dc(int64_t off, int64_t len);
    int fl();
    int tr(int64_t len);
    // Block status through the backing chain (BlockBackend::co_block_status_above).
    int bs(int64_t off, int64_t len, int64_t *pnum, bool want_zero = true);
    // Fires a blkdebug event on the whole graph (arms/disarms the rules).
    void event(const char *name);

    // Model-tracked helpers; each asserts success.
    void write_pat(int64_t off, int64_t len, uint32_t seed, bg::ReqFlags f = 0);
    void zero(int64_t off, int64_t len, bg::ReqFlags f = 0);
    // Reads [off, off+len) and compares with the model; fails the case with
    // the first difference.
    void verify(int64_t off, int64_t len, const char *what);
    // Runs fns as concurrent coroutines in this thread and waits for all.
    void parallel(const std::vector<std::function<void()>> &fns);

    // qemu-img check of every format node: exit status (0 clean, 3 leaks
    // only, 63 not supported, ...) of the worst, and its output.
    int qemu_check(std::string *out);
    // Closes, writes the model and runs qemu-img compare; "" = identical.
    std::string qemu_compare();
};

// A base offset inside the device at which a case may use `len` bytes,
// aligned to `align`, away from offset 0 (so that cases hit allocated and
// unallocated metadata alike).
int64_t work_base(const Env &e, int64_t len, int64_t align);
// The allocation unit cases align discard / write-zeroes ranges to.
int64_t unit(const Env &e);

// ---- case registry (cases.cc) ----
struct CaseDef {
    const char *group;                        // a column of the table
    const char *name;
    const TTest *test;
    DriverCaps needs;                         // capabilities the case requires
    // Further applicability (geometry, image properties): nullptr if the
    // case applies, else the reason it is skipped.
    const char *(*applies)(const Stack &s);
};
const std::vector<CaseDef> &all_cases();
const std::vector<const char *> &all_groups();

// Runs a command with /bin/sh (stderr merged); returns the exit status.
int run_cmd(const std::string &cmd, std::string *out = nullptr);
std::string shell_quote(const std::string &s);

} // namespace conf
