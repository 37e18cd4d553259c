// Image management: create options, qemu-img create's generic part
// (QEMU bdrv_img_create), measure, and the BlockNode wrappers around the
// management hooks (QEMU bdrv_check, bdrv_snapshot_*, bdrv_amend_options,
// bdrv_get_info / bdrv_get_specific_info). See block/image-mgmt.h.
#include "block/image-mgmt.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/block-driver.h"
#include "block/block.h"
#include "qapi/block-parse.h"
#include "qapi/size.h"

namespace bg {

// ---------------------------------------------------------------- CreateOptions

std::optional<std::string> CreateOptions::get(const std::string &key) const
{
    for (auto it = opts.rbegin(); it != opts.rend(); ++it) {
        if (it->first == key) return it->second;
    }
    return std::nullopt;
}

void CreateOptions::set(const std::string &key, const std::string &value)
{
    erase(key);
    opts.emplace_back(key, value);
}

void CreateOptions::erase(const std::string &key)
{
    opts.erase(std::remove_if(opts.begin(), opts.end(), [&](const auto &kv) { return kv.first == key; }), opts.end());
}

const char kSizeSuffixHint[] = "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                               "and exabytes, respectively.";

Result<uint64_t> CreateOptions::get_size(const std::string &key, uint64_t def) const
{
    auto v = get(key);
    if (!v) return def;
    uint64_t n = 0;
    const int err = strtosz(*v, &n);
    if (err == -ERANGE) {
        return make_error(EINVAL, "Value '%s' is out of range for parameter '%s'", v->c_str(), key.c_str());
    }
    if (err) {
        Error e = make_error(EINVAL, "Parameter '%s' expects a non-negative number below 2^64", key.c_str());
        // qemu-img adds the suffix hint on two more lines.
        return e.with_qemu_text(e.msg + "\n" + kSizeSuffixHint);
    }
    return n;
}

Result<uint64_t> CreateOptions::get_number(const std::string &key, uint64_t def) const
{
    auto v = get(key);
    if (!v) return def;
    const std::string &s = *v;
    if (s.empty() || s[0] == '-' || s[0] == '+' || s[0] == ' ') {
        return make_error(EINVAL, "Parameter '%s' expects a number", key.c_str());
    }
    errno = 0;
    char *end = nullptr;
    unsigned long long n = strtoull(s.c_str(), &end, 0);
    if (errno || *end) return make_error(EINVAL, "Parameter '%s' expects a number", key.c_str());
    return static_cast<uint64_t>(n);
}

Result<bool> CreateOptions::get_bool(const std::string &key, bool def) const
{
    auto v = get(key);
    if (!v) return def;
    const std::string &s = *v;
    if (s == "on" || s == "yes" || s == "true" || s == "y") return true;
    if (s == "off" || s == "no" || s == "false" || s == "n") return false;
    return make_error(EINVAL, "Parameter '%s' expects 'on' or 'off'", key.c_str());
}

Status CreateOptions::parse_append(const std::string &list)
{
    // Split at single commas; ",," is a literal comma.
    std::vector<std::string> items;
    std::string cur;
    for (size_t i = 0; i < list.size(); i++) {
        if (list[i] == ',') {
            if (i + 1 < list.size() && list[i + 1] == ',') {
                cur += ',';
                i++;
                continue;
            }
            items.push_back(cur);
            cur.clear();
            continue;
        }
        cur += list[i];
    }
    items.push_back(cur);
    for (const std::string &it : items) {
        if (it.empty()) continue;
        size_t eq = it.find('=');
        if (eq == std::string::npos) {
            if (it == "help" || it == "?") {
                opts.emplace_back("help", "");
                continue;
            }
            return make_error(EINVAL, "Invalid option list: '%s' has no value", it.c_str());
        }
        opts.emplace_back(it.substr(0, eq), it.substr(eq + 1));
    }
    return {};
}

Status validate_create_options(const CreateOptions &opts, std::span<const CreateOptionDesc> descs)
{
    for (const auto &[key, value] : opts.opts) {
        const CreateOptionDesc *d = nullptr;
        for (const CreateOptionDesc &x : descs) {
            if (key == x.name) {
                d = &x;
                break;
            }
        }
        if (!d) return make_error(EINVAL, "Invalid parameter '%s'", key.c_str());
        CreateOptions one;
        one.opts.emplace_back(key, value);
        switch (d->type) {
        case CreateOptionType::kString: break;
        case CreateOptionType::kBool: BG_TRY(one.get_bool(key, false)); break;
        case CreateOptionType::kNumber: BG_TRY(one.get_number(key, 0)); break;
        case CreateOptionType::kSize: BG_TRY(one.get_size(key, 0)); break;
        }
    }
    return {};
}

// ---------------------------------------------------------------- InfoValue

InfoValue InfoValue::of_bool(bool v)
{
    InfoValue x;
    x.kind = Kind::kBool;
    x.b = v;
    return x;
}

InfoValue InfoValue::of_int(int64_t v)
{
    InfoValue x;
    x.kind = Kind::kInt;
    x.i = v;
    return x;
}

InfoValue InfoValue::of_string(std::string v)
{
    InfoValue x;
    x.kind = Kind::kString;
    x.s = std::move(v);
    return x;
}

InfoValue InfoValue::new_list()
{
    InfoValue x;
    x.kind = Kind::kList;
    return x;
}

InfoValue InfoValue::new_dict()
{
    InfoValue x;
    x.kind = Kind::kDict;
    return x;
}

InfoValue &InfoValue::add(const std::string &key, InfoValue v)
{
    dict.push_back(Member{key, std::move(v)});
    return *this;
}

const InfoValue *InfoValue::find(const std::string &key) const
{
    for (const auto &[k, v] : dict) {
        if (k == key) return &v;
    }
    return nullptr;
}

// ---------------------------------------------------------------- img create

std::vector<CreateOptionDesc> merged_create_options(const BlockDriver *fmt, const BlockDriver *proto)
{
    std::vector<CreateOptionDesc> out(fmt->create_opts.begin(), fmt->create_opts.end());
    if (proto && proto != fmt) {
        for (const CreateOptionDesc &d : proto->create_opts) {
            bool dup = std::any_of(out.begin(), out.end(), [&](const CreateOptionDesc &x) {
                return std::strcmp(x.name, d.name) == 0;
            });
            if (!dup) out.push_back(d);
        }
    }
    return out;
}

std::string formatting_line(const std::string &filename, const std::string &fmt, const CreateOptions &opts,
                            std::span<const CreateOptionDesc> descs)
{
    std::string line = "Formatting '" + filename + "', fmt=" + fmt;
    for (const CreateOptionDesc &d : descs) {
        auto v = opts.get(d.name);
        std::string value;
        if (v) {
            value = *v;
            // Sizes and numbers are printed as numbers (QEMU keeps the parsed value).
            if (d.type == CreateOptionType::kSize) {
                auto n = opts.get_size(d.name, 0);
                if (n) value = std::to_string(n.value());
            } else if (d.type == CreateOptionType::kNumber) {
                auto n = opts.get_number(d.name, 0);
                if (n) value = std::to_string(n.value());
            }
        } else if (d.def) {
            value = d.def;
        } else {
            continue;
        }
        line += " ";
        line += d.name;
        line += "=" + value;
    }
    return line;
}

namespace {

// The directory part of path including the slash, or "" (QEMU path_combine).
std::string combine_with_dir(const std::string &base, const std::string &name)
{
    if (filename_has_protocol(name)) return name;   // absolute to QEMU
    if (name.empty() || name[0] == '/') return name;
    size_t slash = base.rfind('/');
    if (slash == std::string::npos) return name;
    return base.substr(0, slash + 1) + name;
}

// Opens filename read-only, shared, with format fmt (empty: probe) and
// returns (format name, length). The graph is closed before returning.
Result<std::pair<std::string, int64_t>> probe_backing(const DriverRegistry &registry, const std::string &path,
                                                      const std::optional<std::string> &fmt)
{
    BlockGraph graph(&registry);
    Result<nlohmann::json> node = filename_node_options(path, registry);
    if (!node) return make_error(node.err(), "Could not open '%s': %s", path.c_str(), node.msg().c_str());
    nlohmann::json fo = std::move(node.value());
    fo["read-only"] = true;
    fo["force-share"] = true;
    auto file = graph.add_node_json(fo);
    if (!file) {
        return make_error(file.err(), "Could not open '%s': %s", path.c_str(), strerror(file.err()));
    }
    std::string format;
    if (fmt) {
        format = *fmt;
    } else {
        auto d = registry.probe_node_format(file.value());
        if (!d) return d.error().prefixed(path);
        format = d.value()->name;
    }
    const BlockDriver *drv = registry.find(format);
    if (!drv) return make_error(EINVAL, "Unknown driver '%s'", format.c_str());
    if (drv->kind == BlockDriverKind::kProtocol) return std::make_pair(format, file.value()->getlength());
    if (drv->kind != BlockDriverKind::kFormat) {
        return make_error(ENOTSUP, "Backing file format '%s' is not supported", format.c_str());
    }
    nlohmann::json o{{"driver", format}, {"read-only", true}, {"force-share", true},
                     {"file", file.value()->node_name()}};
    auto top = graph.add_node_json(o);
    if (!top) return top.error();
    return std::make_pair(format, top.value()->getlength());
}

} // namespace

namespace {

// The protocol of plain file names (an option default, as QEMU's).
constexpr const char *kDefaultProtocol = "file";

// True if filename has a protocol prefix (a ':' before any '/'); *prefix is
// the part before that ':' (possibly empty).
bool split_protocol(const std::string &filename, std::string *prefix)
{
    size_t stop = filename.find_first_of(":/");
    if (stop == std::string::npos || filename[stop] != ':') return false;
    *prefix = filename.substr(0, stop);
    return true;
}

bool claims_prefix(const BlockDriver *d, const std::string &prefix)
{
    if (d->parse_filename && prefix == d->name) return true;
    if (d->kind != BlockDriverKind::kProtocol || !d->protocol_prefixes) return false;
    for (const char *const *p = d->protocol_prefixes; *p; p++) {
        if (prefix == *p) return true;
    }
    return false;
}

} // namespace

bool filename_has_protocol(const std::string &filename)
{
    std::string prefix;
    return split_protocol(filename, &prefix);
}

namespace {

nlohmann::json default_protocol_options(const DriverRegistry &registry, const std::string &path)
{
    const BlockDriver *d = registry.find(kDefaultProtocol);
    return nlohmann::json{{"driver", d ? d->name : kDefaultProtocol}, {"filename", path}};
}

} // namespace

const BlockDriver *protocol_driver_for(const DriverRegistry &registry, const std::string &filename)
{
    std::string prefix;
    if (split_protocol(filename, &prefix) && prefix != kDefaultProtocol) {
        for (const BlockDriver *d : registry.all()) {
            if (claims_prefix(d, prefix)) return d;
        }
    }
    return registry.find(kDefaultProtocol);
}

Result<nlohmann::json> filename_node_options(const std::string &filename, const DriverRegistry &registry)
{
    std::string prefix;
    if (!split_protocol(filename, &prefix)) return default_protocol_options(registry, filename);
    if (prefix == kDefaultProtocol) {
        // The rest is a path; "./" keeps a ':' in it from reading as a prefix.
        std::string path = filename.substr(prefix.size() + 1);
        std::string inner;
        if (split_protocol(path, &inner)) path = "./" + path;
        return default_protocol_options(registry, path);
    }
    for (const BlockDriver *d : registry.all()) {
        if (!claims_prefix(d, prefix)) continue;
        if (d->parse_filename && prefix == d->name) return d->parse_filename(filename, registry);
        return nlohmann::json{{"driver", d->name}, {"filename", filename}};
    }
    return make_error(EINVAL, "Unknown protocol '%s'", prefix.c_str());
}

nlohmann::json protocol_node_options(const std::string &filename, const DriverRegistry &registry)
{
    Result<nlohmann::json> r = filename_node_options(filename, registry);
    return r ? std::move(r.value()) : default_protocol_options(registry, filename);
}

Status create_image_file(const std::string &filename, const CreateOptions &opts)
{
    const BlockDriver *proto = protocol_driver_for(builtin_drivers(), filename);
    if (!proto || !proto->create_image) {
        return make_error(ENOTSUP, "%s: the protocol cannot create image files", filename.c_str());
    }
    // The default protocol creates the path its "file:" prefix names.
    if (std::strcmp(proto->name, kDefaultProtocol) == 0) {
        const nlohmann::json node = protocol_node_options(filename);
        return proto->create_image(node["filename"].get<std::string>(), opts);
    }
    return proto->create_image(filename, opts);
}

Result<PreallocMode> parse_prealloc_option(const CreateOptions &opts, bool allow_metadata)
{
    auto v = opts.get("preallocation");
    PreallocMode m = PreallocMode::kOff;
    if (v && (!parse_prealloc_mode(*v, &m) || (m == PreallocMode::kMetadata && !allow_metadata))) {
        return make_error(EINVAL, "Parameter 'preallocation' does not accept value '%s'", v->c_str());
    }
    return m;
}

Status img_create(const DriverRegistry &registry, const ImgCreateParams &p)
{
    const BlockDriver *drv = registry.find(p.fmt);
    if (!drv) return make_error(EINVAL, "Unknown file format '%s'", p.fmt.c_str());
    Result<nlohmann::json> node = filename_node_options(p.filename, registry);
    if (!node) return node.error();
    const BlockDriver *proto = protocol_driver_for(registry, p.filename);
    if (!drv->create_image) {
        return make_error(ENOTSUP, "Format driver '%s' does not support image creation", drv->name);
    }
    std::vector<CreateOptionDesc> descs = merged_create_options(drv, proto);
    CreateOptions opts = p.opts;
    BG_TRY(validate_create_options(opts, descs));
    auto has_desc = [&](const char *name) {
        return std::any_of(descs.begin(), descs.end(), [&](const CreateOptionDesc &d) {
            return std::strcmp(d.name, name) == 0;
        });
    };
    if (p.backing_file) {
        if (!has_desc("backing_file")) return make_error(ENOTSUP, "Backing file not supported for file format '%s'", drv->name);
        opts.set("backing_file", *p.backing_file);
    }
    if (p.backing_fmt) {
        if (!has_desc("backing_fmt")) return make_error(ENOTSUP, "Backing file format not supported for file format '%s'", drv->name);
        opts.set("backing_fmt", *p.backing_fmt);
    }
    auto backing_file = opts.get("backing_file");
    auto backing_fmt = opts.get("backing_fmt");
    if (backing_file && backing_file->empty()) backing_file.reset();
    if (backing_file && *backing_file == p.filename) {
        return make_error(EINVAL, "Error: Trying to create an image with the same filename as the backing file");
    }
    if (backing_fmt && !registry.find(*backing_fmt)) {
        return make_error(EINVAL, "Unknown backing file format '%s'", backing_fmt->c_str());
    }
    auto size_r = opts.get_size("size", UINT64_MAX);
    if (!size_r) return size_r.error();
    uint64_t size = size_r.value();
    if (backing_file && !p.unsafe) {
        const std::string full = combine_with_dir(p.filename, *backing_file);
        auto b = probe_backing(registry, full, backing_fmt);
        if (!b) {
            return Error{b.err(), b.msg() + "\nCould not open backing image.",
                         b.error().qemu_text() + "\nCould not open backing image."};
        }
        if (!backing_fmt) {
            return make_error(EINVAL, "Backing file specified without backing format\nDetected format of %s.",
                              b.value().first.c_str());
        }
        if (size == UINT64_MAX) {
            if (b.value().second < 0) {
                return errno_error(static_cast<int>(-b.value().second), "Could not get size of '" + full + "'");
            }
            size = static_cast<uint64_t>(b.value().second);
            opts.set("size", std::to_string(size));
        }
    } else if (backing_file && !backing_fmt) {
        return make_error(EINVAL, "Backing file specified without backing format");
    }
    if (size == UINT64_MAX) return make_error(EINVAL, "Image creation needs a size parameter");
    opts.set("size", std::to_string(size));
    if (p.on_formatting) p.on_formatting(formatting_line(p.filename, p.fmt, opts, descs));
    Status s = drv->create_image(p.filename, opts);
    if (!s && s.err() == EFBIG) {
        return make_error(EFBIG, "The image size is too large for file format '%s'%s", drv->name,
                          opts.has("cluster_size") || has_desc("cluster_size") ? " (try using a larger cluster size)" : "");
    }
    return s;
}

Result<MeasureInfo> img_measure(const BlockDriver *fmt, const CreateOptions &opts, BlockNode *src)
{
    if (!fmt->measure) return make_error(ENOTSUP, "Format driver '%s' does not support size measurement", fmt->name);
    return fmt->measure(opts, src);
}

// ---------------------------------------------------------------- BlockNode wrappers

namespace {

Error not_supported(const BlockNode *n, const char *what)
{
    return make_error(ENOTSUP, "Node '%s' (driver '%s') does not support %s", n->node_name().c_str(),
                      n->driver_name(), what);
}

// The node snapshot operations fall back to (QEMU bdrv_snapshot_fallback):
// a filter's filtered child.
BlockNode *snapshot_fallback(BlockNode *n)
{
    BdrvChild *c = n->filtered_child();
    return c ? c->node() : nullptr;
}

// Runs fn with n drained (the hooks change the image under no I/O).
template <typename F>
auto drained(BlockNode *n, F &&fn)
{
    n->drained_begin();
    auto r = fn();
    n->drained_end();
    return r;
}

Status need_writable(const BlockNode *n)
{
    if (n->read_only()) return make_error(EACCES, "Image is read-only");
    return {};
}

} // namespace

Status DriverHooks::co_get_info(ImageInfo *info)
{
    (void)info;
    return {};
}
Status DriverHooks::co_check(CheckResult *res, CheckFix fix)
{
    (void)res;
    (void)fix;
    return Error{ENOTSUP, "This image format does not support checks"};
}
Result<std::vector<SnapshotInfo>> DriverHooks::co_snapshot_list() { return not_supported(self(), "internal snapshots"); }
Status DriverHooks::co_snapshot_create(SnapshotInfo *sn)
{
    (void)sn;
    return not_supported(self(), "internal snapshots");
}
Status DriverHooks::co_snapshot_goto(const std::string &id_or_name)
{
    (void)id_or_name;
    return not_supported(self(), "internal snapshots");
}
Status DriverHooks::co_snapshot_delete(const std::optional<std::string> &id, const std::optional<std::string> &name)
{
    (void)id;
    (void)name;
    return not_supported(self(), "internal snapshots");
}
Status DriverHooks::co_amend(const CreateOptions &opts, bool force, const ProgressFn &progress)
{
    (void)opts;
    (void)force;
    (void)progress;
    return make_error(ENOTSUP, "Format driver '%s' does not support option amendment", self()->driver_name());
}
Status DriverHooks::co_make_empty()
{
    return make_error(ENOTSUP, "%s does not support emptying nodes", self()->driver_name());
}
Result<std::vector<PersistentBitmapInfo>> DriverHooks::co_persistent_bitmaps()
{
    return not_supported(self(), "persistent dirty bitmaps");
}
Result<DirtyBitmapData> DriverHooks::co_bitmap_data(const std::string &)
{
    return not_supported(self(), "persistent dirty bitmaps");
}
Status DriverHooks::co_bitmap_change(const BitmapChange &)
{
    return not_supported(self(), "persistent dirty bitmaps");
}
Status DriverHooks::co_inactivate() { return {}; }

Result<ImageInfo> BlockNode::get_info()
{
    return run_in_coroutine([&]() -> Result<ImageInfo> {
        ImageInfo info;
        BG_TRY(co_get_info(&info));
        return info;
    });
}

Status BlockNode::check(CheckResult *res, CheckFix fix)
{
    *res = CheckResult{};
    if (fix) BG_TRY(need_writable(this));
    return drained(this, [&] { return run_in_coroutine([&] { return co_check(res, fix); }); });
}

Result<std::vector<SnapshotInfo>> BlockNode::snapshot_list()
{
    auto r = run_in_coroutine([&] { return co_snapshot_list(); });
    if (!r && r.err() == ENOTSUP) {
        if (BlockNode *b = snapshot_fallback(this)) return b->snapshot_list();
    }
    return r;
}

Status BlockNode::snapshot_create(SnapshotInfo *sn)
{
    BG_TRY(need_writable(this));
    Status s = drained(this, [&] { return run_in_coroutine([&] { return co_snapshot_create(sn); }); });
    if (!s && s.err() == ENOTSUP) {
        if (BlockNode *b = snapshot_fallback(this)) return b->snapshot_create(sn);
    }
    return s;
}

Status BlockNode::snapshot_goto(const std::string &id_or_name)
{
    BG_TRY(need_writable(this));
    Status s = drained(this, [&] { return run_in_coroutine([&] { return co_snapshot_goto(id_or_name); }); });
    if (!s && s.err() == ENOTSUP) {
        if (BlockNode *b = snapshot_fallback(this)) {
            s = b->snapshot_goto(id_or_name);
            if (s) refresh_length();
        }
    }
    return s;
}

Status BlockNode::snapshot_delete(const std::optional<std::string> &id, const std::optional<std::string> &name)
{
    if (!id && !name) return make_error(EINVAL, "snapshot id or name required");
    BG_TRY(need_writable(this));
    Status s = drained(this, [&] { return run_in_coroutine([&] { return co_snapshot_delete(id, name); }); });
    if (!s && s.err() == ENOTSUP) {
        if (BlockNode *b = snapshot_fallback(this)) return b->snapshot_delete(id, name);
    }
    return s;
}

Status BlockNode::amend(const CreateOptions &opts, bool force, const ProgressFn &progress)
{
    BG_TRY(need_writable(this));
    return drained(this, [&] { return run_in_coroutine([&] { return co_amend(opts, force, progress); }); });
}

Status BlockNode::make_empty()
{
    BG_TRY(need_writable(this));
    return drained(this, [&] { return run_in_coroutine([&] { return co_make_empty(); }); });
}

Result<std::vector<PersistentBitmapInfo>> BlockNode::persistent_bitmaps()
{
    return run_in_coroutine([&] { return co_persistent_bitmaps(); });
}

Result<DirtyBitmapData> BlockNode::bitmap_data(const std::string &name)
{
    return run_in_coroutine([&] { return co_bitmap_data(name); });
}

Status BlockNode::bitmap_change(const BitmapChange &c)
{
    BG_TRY(need_writable(this));
    return drained(this, [&] { return run_in_coroutine([&] { return co_bitmap_change(c); }); });
}

Status BlockNode::inactivate()
{
    if (read_only()) return {};
    return drained(this, [&] { return run_in_coroutine([&] { return co_inactivate(); }); });
}

} // namespace bg
