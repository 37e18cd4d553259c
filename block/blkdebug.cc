// The blkdebug filter (QEMU block/blkdebug.c): forwards everything to its
// "image" child, except that inject-error rules make matching requests
// fail, and it can force request limits (align, max-transfer, ...) so
// that the generic layer's padding and splitting get exercised.
//
// Rules (docs/drivers.md "## blkdebug" has the user-facing description):
//  - A rule with an event is armed when that event arrives through
//    debug_event() while blkdebug is in the rule's state (0 = any). As in
//    QEMU, the first inject-error rule an event arms replaces the set of
//    armed rules (rules armed by earlier events are disarmed); the rules
//    armed by one event stay armed until then or until a "once" rule fires.
//    "none" is fired once at the end of open, so event=none arms a rule
//    from the start (QEMU 4.1+).
//  - A rule without an event (our extension) is always armed; its state
//    is checked per request.
//  - A request is matched against the armed rules (event-armed first, in
//    definition order, then event-less ones): its I/O type must be in the
//    rule's mask; sector / offset+bytes must lie in / overlap the request
//    (so positional rules never match flush); a rule whose after count is
//    not used up lets the request pass it (counting it) and matching goes
//    on. The first rule matched fails the request with -errno (errno 0:
//    the request passes); once removes the rule for good.
//  - immediately=false (the default) completes the failure from a bottom
//    half (the coroutine is rescheduled once first), like QEMU, whose
//    non-immediate errors complete asynchronously; immediately=true returns
//    at once without yielding.
//  - set-state rules change the state when their event fires while in
//    their state (0 = any); all rules of one event see the state from
//    before the event.
//  - Breakpoints (debug_set_breakpoint, qemu-io's "break EVENT TAG"): the
//    next request whose coroutine raises EVENT here (in any state) removes
//    the breakpoint and is suspended: debug_event() prints "blkdebug:
//    Suspended request 'TAG'" to stdout and yields until resumed
//    (debug_resume_request: the latest request suspended at TAG;
//    debug_remove_breakpoint: all of them), which prints "blkdebug:
//    Resuming request 'TAG'" and enters the request's coroutine. Several
//    breakpoints on one event suspend the request at each tag at once; it
//    yields once per tag. Events raised outside a coroutine never suspend.
//    Breakpoints are set, resumed and queried from the main loop.
//
// Threading: the rule state is guarded by lock_ (requests and events may
// come from several threads); lock_ is never held across a yield.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "qapi/config-file.h"
#include "qapi/option-reader.h"

namespace bg {

namespace {

// ---------------------------------------------------------------- options

enum class BlkdebugIoType { kRead, kWrite, kWriteZeroes, kDiscard, kFlush, kBlockStatus, kTruncate };

constexpr EnumName<BlkdebugIoType> kIoTypeNames[] = {
    {"read", BlkdebugIoType::kRead},
    {"write", BlkdebugIoType::kWrite},
    {"write-zeroes", BlkdebugIoType::kWriteZeroes},
    {"discard", BlkdebugIoType::kDiscard},
    {"flush", BlkdebugIoType::kFlush},
    {"block-status", BlkdebugIoType::kBlockStatus},
    {"truncate", BlkdebugIoType::kTruncate},
};

struct BlkdebugInjectError {
    std::string event;                          // optional: arm the rule when this event fires
    std::optional<BlkdebugIoType> iotype;       // absent: read, write, write-zeroes, discard, flush (QEMU)
    int64_t err = 5;                            // "errno"; positive; default EIO
    int64_t sector = -1;                        // 512-byte sector the request must cover; -1: any
    std::optional<uint64_t> offset;             // extension: byte range the request must overlap
    std::optional<uint64_t> bytes;              //   (with offset; absent = to the end)
    uint64_t after = 0;                         // extension: let this many matching requests pass first
    bool once = false;                          // remove after the first injection
    bool immediately = false;                   // fail without yielding first (default: asynchronously)
    int64_t state = 0;                          // only while blkdebug is in this state; 0 = any
};

struct BlkdebugSetState {
    std::string event;
    int64_t state = 0;                          // 0 = any
    int64_t new_state = 0;                      // "new_state"
};

// blkdebug's options (QEMU's BlockdevOptionsBlkdebug).
struct BlkdebugOptions : DriverOptionsOf<BlkdebugOptions> {
    BlockdevRef image;                          // required
    std::string config;                         // config file: more rules, read at open
    uint32_t align = 0;                         // request alignment to force; 0 = child's
    uint32_t max_transfer = 0;                  // "max-transfer"
    uint32_t opt_write_zero = 0;                // "opt-write-zero"
    uint32_t max_write_zero = 0;                // "max-write-zero"
    uint32_t opt_discard = 0;                   // "opt-discard"
    uint32_t max_discard = 0;                   // "max-discard"
    std::vector<BlkdebugInjectError> inject_error;   // "inject-error"
    std::vector<BlkdebugSetState> set_state;         // "set-state"

    void encode(nlohmann::json &j) const override;
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override { fn("image", image); }
};

void BlkdebugOptions::encode(nlohmann::json &j) const
{
    put_ref(j, "image", image);
    if (!config.empty()) j["config"] = config;
    const std::pair<const char *, uint32_t> limits[] = {
        {"align", align}, {"max-transfer", max_transfer}, {"opt-write-zero", opt_write_zero},
        {"max-write-zero", max_write_zero}, {"opt-discard", opt_discard}, {"max-discard", max_discard},
    };
    for (const auto &[key, value] : limits) {
        if (value) j[key] = value;
    }
    if (!inject_error.empty()) {
        nlohmann::json list = nlohmann::json::array();
        const BlkdebugInjectError def;
        for (const auto &e : inject_error) {
            nlohmann::json x = nlohmann::json::object();
            if (!e.event.empty()) x["event"] = e.event;
            if (e.iotype) x["iotype"] = enum_name(kIoTypeNames, *e.iotype);
            if (e.err != def.err) x["errno"] = e.err;
            if (e.sector != def.sector) x["sector"] = e.sector;
            if (e.offset) x["offset"] = *e.offset;
            if (e.bytes) x["bytes"] = *e.bytes;
            if (e.after) x["after"] = e.after;
            if (e.once) x["once"] = true;
            if (e.immediately) x["immediately"] = true;
            if (e.state) x["state"] = e.state;
            list.push_back(std::move(x));
        }
        j["inject-error"] = std::move(list);
    }
    if (!set_state.empty()) {
        nlohmann::json list = nlohmann::json::array();
        for (const auto &s : set_state) {
            nlohmann::json x = nlohmann::json::object();
            x["event"] = s.event;
            if (s.state) x["state"] = s.state;
            x["new_state"] = s.new_state;
            list.push_back(std::move(x));
        }
        j["set-state"] = std::move(list);
    }
}

Status decode_inject_error(OptionReader &r, BlkdebugInjectError *e)
{
    BG_TRY(r.get("event", &e->event));
    if (r.has("event") && e->event.empty()) return r.error("event", "must not be empty");
    BG_TRY(r.get_enum("iotype", &e->iotype, kIoTypeNames));
    BG_TRY(r.get_int("errno", &e->err, 1, 4095));
    BG_TRY(r.get_int("sector", &e->sector, -1, INT64_MAX));
    BG_TRY(r.get_size("offset", &e->offset, INT64_MAX));
    BG_TRY(r.get_size("bytes", &e->bytes, INT64_MAX));
    if (e->bytes && !e->offset) return r.error("bytes", "requires offset");
    BG_TRY(r.get_uint("after", &e->after, UINT64_MAX));
    BG_TRY(r.get("once", &e->once));
    BG_TRY(r.get("immediately", &e->immediately));
    return r.get_int("state", &e->state, 0, INT64_MAX);
}

Status decode_set_state(OptionReader &r, BlkdebugSetState *s)
{
    BG_TRY(r.require("event", &s->event));
    if (s->event.empty()) return r.error("event", "must not be empty");
    BG_TRY(r.get_int("state", &s->state, 0, INT64_MAX));
    if (!r.has("new_state")) return r.error("", "missing required key 'new_state'");
    return r.get_int("new_state", &s->new_state, 0, INT64_MAX);
}

// The limits. Their rules (QEMU's blkdebug_open() rules, with QEMU's
// "Cannot meet constraints with <option> N") are checked at open, against
// the child's alignment too.
Status decode_limits(OptionReader &r, BlkdebugOptions *b)
{
    const std::pair<const char *, uint32_t *> limits[] = {
        {"align", &b->align},
        {"max-transfer", &b->max_transfer},
        {"opt-write-zero", &b->opt_write_zero},
        {"max-write-zero", &b->max_write_zero},
        {"opt-discard", &b->opt_discard},
        {"max-discard", &b->max_discard},
    };
    for (const auto &[key, field] : limits) {
        uint64_t x = 0;
        BG_TRY(r.get_size(key, &x, UINT32_MAX));
        *field = static_cast<uint32_t>(x);
    }
    return {};
}

Result<std::unique_ptr<DriverOptions>> decode_blkdebug_options(OptionReader &r, const BlockdevOptions &)
{
    auto b = std::make_unique<BlkdebugOptions>();
    BG_TRY(r.get_ref("image", &b->image, OptionReader::RefMode::kRequired));
    BG_TRY(r.get("config", &b->config));
    BG_TRY(decode_limits(r, b.get()));
    BG_TRY(r.get_object_list("inject-error", [&b](OptionReader &e) -> Status {
        BlkdebugInjectError rule;
        BG_TRY(decode_inject_error(e, &rule));
        b->inject_error.push_back(std::move(rule));
        return {};
    }));
    BG_TRY(r.get_object_list("set-state", [&b](OptionReader &e) -> Status {
        BlkdebugSetState rule;
        BG_TRY(decode_set_state(e, &rule));
        b->set_state.push_back(std::move(rule));
        return {};
    }));
    return std::unique_ptr<DriverOptions>(std::move(b));
}

// ---------------------------------------------------------------- the node

// QEMU's BlkdebugEvent names (qapi/block-core.json).
const char *const kEventNames[] = {
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table", "l2_load",
    "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write", "read_aio",
    "read_backing_aio", "read_compressed", "write_aio", "write_compressed", "vmstate_load", "vmstate_save",
    "cow_read", "cow_write", "reftable_load", "reftable_grow", "reftable_update", "refblock_load",
    "refblock_update", "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
    "refblock_alloc_write", "refblock_alloc_write_blocks", "refblock_alloc_write_table",
    "refblock_alloc_switch_table", "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os",
    "flush_to_disk", "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail",
    "pwritev_rmw_after_tail", "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
    "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
};

bool event_valid(const std::string &name)
{
    for (const char *e : kEventNames) {
        if (name == e) return true;
    }
    return false;
}

// ---------------------------------------------------------------- config file

constexpr ConfigKeySchema kInjectErrorKeys[] = {
    {"event", ConfigValueType::kString},   {"state", ConfigValueType::kNumber},
    {"iotype", ConfigValueType::kString},  {"errno", ConfigValueType::kNumber},
    {"sector", ConfigValueType::kNumber},  {"once", ConfigValueType::kBool},
    {"immediately", ConfigValueType::kBool},
};
constexpr ConfigKeySchema kSetStateKeys[] = {
    {"event", ConfigValueType::kString},
    {"state", ConfigValueType::kNumber},
    {"new_state", ConfigValueType::kNumber},
};
constexpr ConfigGroupSchema kConfigGroups[] = {
    {"inject-error", kInjectErrorKeys},
    {"set-state", kSetStateKeys},
};

struct ConfigRules {
    std::vector<BlkdebugInjectError> inject_error;
    std::vector<BlkdebugSetState> set_state;
};

// A number key of g that must fit [min, max] once read as QEMU stores it
// (an int for errno and the states, an int64_t for sector).
Status config_int(const ConfigGroup &g, const char *key, int64_t min, int64_t max, int64_t *out)
{
    auto it = g.values.find(key);
    if (it == g.values.end()) return {};
    Result<uint64_t> n = parse_config_number(key, it->second);
    if (!n) return n.error();
    int64_t v = static_cast<int64_t>(n.value());
    if (std::strcmp(key, "sector") != 0) v = static_cast<int32_t>(n.value());
    if (v < min || v > max) {
        return make_error(EINVAL, "Value '%s' is out of range for parameter '%s'", it->second.c_str(), key);
    }
    *out = v;
    return {};
}

Status config_bool(const ConfigGroup &g, const char *key, bool *out)
{
    auto it = g.values.find(key);
    if (it == g.values.end()) return {};
    Result<bool> b = parse_config_bool(key, it->second);
    if (!b) return b.error();
    *out = b.value();
    return {};
}

// The event of a rule group: required, one of QEMU's names.
Status config_event(const ConfigGroup &g, std::string *out)
{
    auto it = g.values.find("event");
    if (it == g.values.end()) return make_error(EINVAL, "Missing event name for rule");
    if (!event_valid(it->second)) return make_error(EINVAL, "invalid parameter value: %s", it->second.c_str());
    *out = it->second;
    return {};
}

// The rules of a blkdebug config file's text (QEMU's format, see
// qapi/config-file.h): inject-error groups first, then set-state groups,
// each in file order, as QEMU adds them. Errors: QEMU's messages.
Result<ConfigRules> parse_config_rules(const std::string &text)
{
    Result<std::vector<ConfigGroup>> groups = parse_config_file(text, kConfigGroups);
    if (!groups) return groups.error();
    ConfigRules rules;
    for (const ConfigGroup &g : groups.value()) {
        if (g.name != "inject-error") continue;
        BlkdebugInjectError e;
        BG_TRY(config_event(g, &e.event));
        BG_TRY(config_int(g, "state", 0, INT32_MAX, &e.state));
        auto io = g.values.find("iotype");
        if (io != g.values.end()) {
            bool found = false;
            for (const auto &n : kIoTypeNames) {
                if (io->second == n.name) {
                    e.iotype = n.value;
                    found = true;
                }
            }
            if (!found) return make_error(EINVAL, "invalid parameter value: %s", io->second.c_str());
        }
        BG_TRY(config_int(g, "errno", 0, 4095, &e.err));
        BG_TRY(config_int(g, "sector", -1, INT64_MAX, &e.sector));
        BG_TRY(config_bool(g, "once", &e.once));
        BG_TRY(config_bool(g, "immediately", &e.immediately));
        rules.inject_error.push_back(std::move(e));
    }
    for (const ConfigGroup &g : groups.value()) {
        if (g.name != "set-state") continue;
        BlkdebugSetState st;
        BG_TRY(config_event(g, &st.event));
        BG_TRY(config_int(g, "state", 0, INT32_MAX, &st.state));
        BG_TRY(config_int(g, "new_state", 0, INT32_MAX, &st.new_state));
        rules.set_state.push_back(std::move(st));
    }
    return rules;
}

// Reads and parses the config file path.
Result<ConfigRules> read_config_rules(const std::string &path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        int err = errno ? errno : EIO;
        return make_error(err, "Could not read blkdebug config file: %s", std::strerror(err));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) return make_error(EIO, "Could not read blkdebug config file: %s", std::strerror(EIO));
    return parse_config_rules(text.str());
}

// "blkdebug:[CONFIG]:IMAGE", QEMU's legacy file name: the config file (if
// any) and the image, whose own name is read as any file name is.
Result<nlohmann::json> parse_blkdebug_filename(const std::string &filename, const DriverRegistry &registry)
{
    static const std::string kPrefix = "blkdebug:";
    if (filename.compare(0, kPrefix.size(), kPrefix) != 0) {
        return make_error(EINVAL, "blkdebug requires both config file and image path");
    }
    const size_t colon = filename.find(':', kPrefix.size());
    if (colon == std::string::npos) return make_error(EINVAL, "blkdebug requires both config file and image path");
    nlohmann::json j{{"driver", "blkdebug"}};
    if (colon > kPrefix.size()) j["config"] = filename.substr(kPrefix.size(), colon - kPrefix.size());
    Result<nlohmann::json> image = filename_node_options(filename.substr(colon + 1), registry);
    if (!image) return image.error();
    j["image"] = std::move(image.value());
    return j;
}

constexpr uint32_t iotype_bit(BlkdebugIoType t) { return 1u << static_cast<unsigned>(t); }

// QEMU's default when iotype is absent.
constexpr uint32_t kDefaultIoMask = iotype_bit(BlkdebugIoType::kRead) | iotype_bit(BlkdebugIoType::kWrite) |
                                    iotype_bit(BlkdebugIoType::kWriteZeroes) |
                                    iotype_bit(BlkdebugIoType::kDiscard) | iotype_bit(BlkdebugIoType::kFlush);

struct InjectRule {
    BlkdebugInjectError opt;
    uint32_t iotype_mask = kDefaultIoMask;
    uint64_t passed = 0;     // matching requests let through so far (for opt.after)
    bool removed = false;    // a once rule that fired
};

bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

class BlkdebugNode final : public FilterNode {
  public:
    // QEMU's name for a blkdebug node set up by its file name alone (a
    // config file at most): "blkdebug:CONFIG:IMAGE", IMAGE being the
    // child's name. With rules or limits in its options: the child's name.
    std::string filename() const override
    {
        std::string child = FilterNode::filename();
        if (child.empty() || !legacy_name_) return child;
        return "blkdebug:" + config_ + ":" + child;
    }

  protected:
    Status open(const BlockdevOptions &opts) override;

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        int err = rule_check(offset, bytes, BlkdebugIoType::kRead);
        if (err) return err;
        return filtered_->co_preadv(offset, bytes, qiov, flags);
    }

    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        int err = rule_check(offset, bytes, BlkdebugIoType::kWrite);
        if (err) return err;
        return filtered_->co_pwritev(offset, bytes, qiov, flags);
    }

    // Like QEMU, requests smaller than the (forced) write-zeroes alignment
    // are refused with -ENOTSUP so that the generic fallback gets tested.
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override
    {
        uint32_t align = limits().request_alignment;
        if (limits().pwrite_zeroes_alignment > align) align = limits().pwrite_zeroes_alignment;
        if (bytes < static_cast<int64_t>(align)) return -ENOTSUP;
        int err = rule_check(offset, bytes, BlkdebugIoType::kWriteZeroes);
        if (err) return err;
        return filtered_->co_pwrite_zeroes(offset, bytes, flags);
    }

    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override
    {
        if (bytes < static_cast<int64_t>(limits().request_alignment)) return -ENOTSUP;
        int err = rule_check(offset, bytes, BlkdebugIoType::kDiscard);
        if (err) return err;
        return filtered_->co_pdiscard(offset, bytes);
    }

    // Like QEMU's blkdebug (a protocol driver there), no disk usage: "disk
    // size: unavailable" in img info, no actual-size in the QMP queries.
    int64_t allocated_file_size() override { return -ENOTSUP; }

    // The generic layer flushes the child afterwards.
    int coroutine_fn do_co_flush_to_disk() override { return rule_check(0, 0, BlkdebugIoType::kFlush); }

    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override
    {
        int err = rule_check(offset, 0, BlkdebugIoType::kTruncate);
        if (err) return err;
        return filtered_->co_truncate(offset, exact, prealloc, flags);
    }

    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override
    {
        (void)want_zero;
        int err = rule_check(offset, bytes, BlkdebugIoType::kBlockStatus);
        if (err) return err;
        *pnum = bytes;
        *map = offset;
        *file = filtered_->node();
        return kStatusRaw | kStatusOffsetValid;
    }

    void refresh_limits(BlockLimits *bl) override
    {
        if (align_) bl->request_alignment = align_;
        if (max_transfer_) bl->max_transfer = max_transfer_;
        if (opt_write_zero_) bl->pwrite_zeroes_alignment = opt_write_zero_;
        if (max_write_zero_) bl->max_pwrite_zeroes = max_write_zero_;
        if (opt_discard_) bl->pdiscard_alignment = opt_discard_;
        if (max_discard_) bl->max_pdiscard = max_discard_;
    }

    void debug_event(const char *event) override
    {
        process_event(event);
        if (in_coroutine()) suspend_at_breakpoints(event);
        BlockNode::debug_event(event);
    }

    int do_debug_set_breakpoint(const std::string &event, const std::string &tag) override;
    int do_debug_remove_breakpoint(const std::string &tag) override;
    int do_debug_resume_request(const std::string &tag) override;
    bool do_debug_is_suspended(const std::string &tag) override;

    // Requests that bypass the node would bypass its rules.
    int do_passthrough_fd(bool write, std::string *why) override
    {
        (void)write;
        *why = "node '" + node_name() + "' (blkdebug) injects errors";
        return -1;
    }

  private:
    struct Breakpoint {
        std::string event;
        std::string tag;
    };
    struct Suspended {
        std::string tag;
        Coroutine *co;
    };

    void process_event(const char *event);
    void coroutine_fn suspend_at_breakpoints(const char *event);
    // Removes the suspended request at index i and enters its coroutine.
    void resume_at(size_t i);
    int coroutine_fn rule_check(int64_t offset, int64_t bytes, BlkdebugIoType iotype);
    bool rule_matches(InjectRule &r, uint64_t offset, uint64_t bytes, uint32_t bit, bool check_state);

    std::string config_;                     // the config file's name, as given
    bool legacy_name_ = false;               // no option but config: named "blkdebug:..."
    uint32_t align_ = 0, max_transfer_ = 0, opt_write_zero_ = 0, max_write_zero_ = 0;
    uint32_t opt_discard_ = 0, max_discard_ = 0;

    std::mutex lock_;                        // guards everything below
    std::vector<InjectRule> rules_;          // all inject-error rules, in definition order
    std::vector<BlkdebugSetState> set_state_;
    std::vector<size_t> armed_;              // indices into rules_ armed by the last event
    int64_t state_ = 1;
    std::vector<Breakpoint> breakpoints_;    // in the order set
    std::vector<Suspended> suspended_;       // in the order suspended
};

Status BlkdebugNode::open(const BlockdevOptions &opts)
{
    const auto *o = opts.as<BlkdebugOptions>();
    if (!o) return node_error(EINVAL, "options are not blkdebug options");
    // Rules from the config file come first, then those of the options.
    ConfigRules all;
    if (!o->config.empty()) {
        Result<ConfigRules> c = read_config_rules(o->config);
        if (!c) return c.error();
        all = std::move(c.value());
    }
    all.inject_error.insert(all.inject_error.end(), o->inject_error.begin(), o->inject_error.end());
    all.set_state.insert(all.set_state.end(), o->set_state.begin(), o->set_state.end());

    for (const BlkdebugInjectError &e : all.inject_error) {
        if (!e.event.empty() && !event_valid(e.event)) {
            return node_error(EINVAL, "inject-error: invalid event '" + e.event + "'");
        }
        if (e.err < 0) return node_error(EINVAL, "inject-error: errno must not be negative");
        if (e.bytes && !e.offset) return node_error(EINVAL, "inject-error: bytes requires offset");
        InjectRule r;
        r.opt = e;
        if (e.iotype) r.iotype_mask = iotype_bit(*e.iotype);
        rules_.push_back(r);
    }
    for (const BlkdebugSetState &s : all.set_state) {
        if (s.event.empty()) return node_error(EINVAL, "Missing event name for rule");
        if (!event_valid(s.event)) return node_error(EINVAL, "set-state: invalid event '" + s.event + "'");
        set_state_.push_back(s);
    }
    state_ = 1;

    BG_TRY(open_filtered("image", o->image));

    // Limit overrides, checked as QEMU does.
    if (o->align && (o->align >= INT32_MAX || !is_pow2(o->align))) {
        return node_error(EINVAL, "Cannot meet constraints with align " + std::to_string(o->align));
    }
    uint64_t align = o->align;
    uint32_t child_align = filtered_->node()->limits().request_alignment;
    if (child_align > align) align = child_align;
    auto check = [&](uint32_t v, uint64_t multiple_of, const char *name) -> Status {
        if (v && (v >= INT32_MAX || v % multiple_of != 0)) {
            return node_error(EINVAL, std::string("Cannot meet constraints with ") + name + " " + std::to_string(v));
        }
        return {};
    };
    BG_TRY(check(o->max_transfer, align, "max-transfer"));
    BG_TRY(check(o->opt_write_zero, align, "opt-write-zero"));
    BG_TRY(check(o->max_write_zero, o->opt_write_zero > align ? o->opt_write_zero : align, "max-write-zero"));
    BG_TRY(check(o->opt_discard, align, "opt-discard"));
    BG_TRY(check(o->max_discard, o->opt_discard > align ? o->opt_discard : align, "max-discard"));
    config_ = o->config;
    legacy_name_ = o->inject_error.empty() && o->set_state.empty() && !o->align && !o->max_transfer &&
                   !o->opt_write_zero && !o->max_write_zero && !o->opt_discard && !o->max_discard;
    align_ = o->align;
    max_transfer_ = o->max_transfer;
    opt_write_zero_ = o->opt_write_zero;
    max_write_zero_ = o->max_write_zero;
    opt_discard_ = o->opt_discard;
    max_discard_ = o->max_discard;

    process_event("none");
    return {};
}

void BlkdebugNode::process_event(const char *event)
{
    std::lock_guard<std::mutex> g(lock_);
    int64_t new_state = state_;
    bool first_inject = true;
    for (size_t i = 0; i < rules_.size(); i++) {
        InjectRule &r = rules_[i];
        if (r.removed || r.opt.event.empty() || r.opt.event != event) continue;
        if (r.opt.state && r.opt.state != state_) continue;
        if (first_inject) {
            armed_.clear();
            first_inject = false;
        }
        armed_.push_back(i);
    }
    for (const BlkdebugSetState &s : set_state_) {
        if (s.event != event) continue;
        if (s.state && s.state != state_) continue;
        new_state = s.new_state;
    }
    state_ = new_state;
}

void coroutine_fn BlkdebugNode::suspend_at_breakpoints(const char *event)
{
    // Every breakpoint on the event fires at once (the latest set first):
    // the request is suspended at each tag, and yields once per tag.
    size_t count = 0;
    {
        std::lock_guard<std::mutex> g(lock_);
        for (size_t i = breakpoints_.size(); i-- > 0;) {
            if (breakpoints_[i].event != event) continue;
            std::printf("blkdebug: Suspended request '%s'\n", breakpoints_[i].tag.c_str());
            suspended_.push_back({breakpoints_[i].tag, coroutine_self()});
            breakpoints_.erase(breakpoints_.begin() + static_cast<std::ptrdiff_t>(i));
            count++;
        }
    }
    while (count-- > 0) coroutine_yield();
}

int BlkdebugNode::do_debug_set_breakpoint(const std::string &event, const std::string &tag)
{
    if (!event_valid(event)) return -ENOENT;
    std::lock_guard<std::mutex> g(lock_);
    breakpoints_.push_back({event, tag});
    return 0;
}

void BlkdebugNode::resume_at(size_t i)
{
    Coroutine *co;
    {
        std::lock_guard<std::mutex> g(lock_);
        std::printf("blkdebug: Resuming request '%s'\n", suspended_[i].tag.c_str());
        co = suspended_[i].co;
        suspended_.erase(suspended_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    AioContext::current()->co_enter(co);
}

int BlkdebugNode::do_debug_resume_request(const std::string &tag)
{
    size_t i;
    {
        std::lock_guard<std::mutex> g(lock_);
        for (i = suspended_.size(); i > 0 && suspended_[i - 1].tag != tag; i--) {
        }
        if (i == 0) return -ENOENT;
    }
    resume_at(i - 1);
    return 0;
}

int BlkdebugNode::do_debug_remove_breakpoint(const std::string &tag)
{
    // The requests suspended at the tag are resumed, but only removing a
    // breakpoint counts as success (as in QEMU).
    for (;;) {
        size_t i;
        {
            std::lock_guard<std::mutex> g(lock_);
            for (i = suspended_.size(); i > 0 && suspended_[i - 1].tag != tag; i--) {
            }
        }
        if (i == 0) break;
        resume_at(i - 1);
    }
    std::lock_guard<std::mutex> g(lock_);
    const size_t before = breakpoints_.size();
    breakpoints_.erase(std::remove_if(breakpoints_.begin(), breakpoints_.end(),
                                      [&tag](const Breakpoint &b) { return b.tag == tag; }),
                       breakpoints_.end());
    return breakpoints_.size() != before ? 0 : -ENOENT;
}

bool BlkdebugNode::do_debug_is_suspended(const std::string &tag)
{
    std::lock_guard<std::mutex> g(lock_);
    for (const Suspended &s : suspended_) {
        if (s.tag == tag) return true;
    }
    return false;
}

// REQUIRES lock_ held.
bool BlkdebugNode::rule_matches(InjectRule &r, uint64_t offset, uint64_t bytes, uint32_t bit, bool check_state)
{
    if (r.removed || !(r.iotype_mask & bit)) return false;
    if (check_state && r.opt.state && r.opt.state != state_) return false;
    if (r.opt.sector >= 0) {
        uint64_t at = static_cast<uint64_t>(r.opt.sector) * 512;
        if (!bytes || at < offset || at - offset >= bytes) return false;
    }
    if (r.opt.offset) {
        uint64_t start = *r.opt.offset;
        uint64_t end = r.opt.bytes ? start + *r.opt.bytes : UINT64_MAX;
        if (end < start) end = UINT64_MAX;
        if (!bytes || start >= offset + bytes || end <= offset) return false;
    }
    if (r.passed < r.opt.after) {
        r.passed++;
        return false;
    }
    return true;
}

int coroutine_fn BlkdebugNode::rule_check(int64_t offset, int64_t bytes, BlkdebugIoType iotype)
{
    uint32_t bit = iotype_bit(iotype);
    uint64_t off = static_cast<uint64_t>(offset), len = static_cast<uint64_t>(bytes);
    int err = 0;
    bool immediately = false;
    {
        std::lock_guard<std::mutex> g(lock_);
        InjectRule *hit = nullptr;
        for (size_t idx : armed_) {
            if (rule_matches(rules_[idx], off, len, bit, false)) {
                hit = &rules_[idx];
                break;
            }
        }
        if (!hit) {
            for (InjectRule &r : rules_) {
                if (r.opt.event.empty() && rule_matches(r, off, len, bit, true)) {
                    hit = &r;
                    break;
                }
            }
        }
        if (!hit || hit->opt.err == 0) return 0;
        err = hit->opt.err;
        immediately = hit->opt.immediately;
        if (hit->opt.once) {
            hit->removed = true;
            size_t idx = static_cast<size_t>(hit - rules_.data());
            for (size_t k = 0; k < armed_.size(); k++) {
                if (armed_[k] == idx) {
                    armed_.erase(armed_.begin() + static_cast<std::ptrdiff_t>(k));
                    break;
                }
            }
        }
    }
    if (!immediately) {
        AioContext::current()->co_schedule(coroutine_self());
        coroutine_yield();
    }
    return -err;
}

std::unique_ptr<BlockNode> create_blkdebug() { return std::make_unique<BlkdebugNode>(); }

} // namespace

extern const BlockDriver kDriverBlkdebug = {
    .name = "blkdebug",
    .kind = BlockDriverKind::kFilter,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBlockStatus | kCapFlush |
        kCapPersistent | kCapPassthrough | kCapDiscardZeroes,
    .summary = "fault injection and forced request limits for testing (filter; child \"image\")",
    .decode_options = decode_blkdebug_options,
    .create = create_blkdebug,
    .probe = nullptr,
    .create_opts = {},
    .create_image = nullptr,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = nullptr,
    .parse_filename = parse_blkdebug_filename,
};

} // namespace bg
