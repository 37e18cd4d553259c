// monitor/block-info.cc -- query-named-block-nodes (see block-info.h).
#include "monitor/block-info.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include "block/block.h"
#include "qapi/block-parse.h"

namespace bg {

using ojson = nlohmann::ordered_json;

namespace {

// ---------------------------------------------------------------- node kinds

// A node QEMU treats as a filter (its child counts in backing_file_depth
// and shows as backing-image): a filter driver's filtered child. raw
// passes its data through too but is a format for QEMU.
BdrvChild *qemu_filter_child(BlockNode *n)
{
    if (n->driver()->kind != BlockDriverKind::kFilter) return nullptr;
    return n->filtered_child();
}

// QEMU's "filter or COW child": what backing-image and backing_file_depth
// follow.
BdrvChild *filter_or_cow_child(BlockNode *n)
{
    if (BdrvChild *c = qemu_filter_child(n)) return c;
    return n->backing_child();
}

} // namespace

BlockNode *block_info_node(BlockNode *n)
{
    for (int depth = 0; n && depth < 64; depth++) {
        const BlockDriver *d = n->driver();
        if ((d->caps & kCapPassthrough) || d->kind == BlockDriverKind::kFilter) {
            BdrvChild *c = n->file_child();
            n = c ? c->node() : nullptr;
            continue;
        }
        return (d->caps & kCapPersistent) ? n : nullptr;
    }
    return nullptr;
}

namespace {

// Host bytes a node occupies as QEMU's QMP counts them: a format node
// adds up its data, metadata and filtered children (a qcow2 data file
// included), other nodes answer themselves. Negative errno if a part
// cannot tell.
int64_t allocated_size(BlockNode *n, int depth = 0)
{
    if (n->driver()->kind != BlockDriverKind::kFormat || depth > 32) return n->allocated_file_size();
    int64_t sum = 0;
    for (BdrvChild *c : n->children()) {
        if ((c->role() & kRoleCow) || !(c->role() & (kRoleData | kRoleMetadata | kRoleFiltered))) continue;
        int64_t r = allocated_size(c->node(), depth + 1);
        if (r < 0) return r;
        sum += r;
    }
    return sum;
}

// ---------------------------------------------------------------- file names

// The option keys QEMU calls "strong" per driver: options that change what
// the node's data is, so that its file name alone could not reopen it. A
// node with one of them set is named "json:{...}". (The generic members and
// tuning options such as aio, locking or cache sizes are not strong.) This
// is a property of each driver; should another consumer need it, it
// belongs in the BlockDriver descriptor.
struct StrongKeys {
    const char *driver;
    std::vector<const char *> keys;
};

const std::vector<const char *> &strong_keys(const char *driver)
{
    static const std::vector<StrongKeys> kTable = {
        {"file", {"filename"}},
        {"null-co", {"size", "read-zeroes"}},
        {"null-aio", {"size", "read-zeroes"}},
        {"raw", {"offset", "size"}},
        {"blkdebug", {"config", "align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard",
                      "max-discard", "inject-error", "set-state"}},
        {"blklogwrites", {"log-append", "log-sector-size"}},
    };
    static const std::vector<const char *> kNone;
    for (const StrongKeys &s : kTable) {
        if (std::strcmp(s.driver, driver) == 0) return s.keys;
    }
    return kNone;
}

// The file name QEMU gives a node: exact (a plain name, or empty) and full
// (the options that describe it, for "json:{...}").
struct QemuName {
    std::string exact;
    ojson full;

    std::string filename() const { return exact.empty() ? "json:" + qdict_json_string(full) : exact; }
};

QemuName qemu_name(BlockNode *n, int depth);

// Puts option key = v into o as QEMU keeps a node's options: lists and
// objects flattened to dotted keys ("inject-error.0.event").
void put_flat(ojson &o, const std::string &key, const nlohmann::json &v)
{
    if (v.is_object()) {
        for (auto it = v.begin(); it != v.end(); ++it) put_flat(o, key + "." + it.key(), it.value());
    } else if (v.is_array()) {
        for (size_t i = 0; i < v.size(); i++) put_flat(o, key + "." + std::to_string(i), v[i]);
    } else {
        o[key] = v;
    }
}

// Whether the user chose the node's backing (a node name, an inline
// definition or null) rather than leaving it to the image. A format
// driver that opens a whole chain from the images' headers gives each
// level below the top its backing explicitly; those levels count as left
// to the image when the level above them was.
bool backing_given(BlockNode *n, int depth)
{
    bool given = false;
    if (const DriverOptions *o = n->options().drv.get()) {
        o->for_each_child([&](const char *key, const BlockdevRef &ref) {
            if (std::strcmp(key, "backing") == 0) given = ref.present();
        });
    }
    if (!given || !n->implicit() || n->parents().empty() || depth > 64) return given;
    BdrvChild *up = n->parents().front();
    BlockNode *p = up->parent_node();
    if (!p || !(up->role() & kRoleCow)) return true;
    return backing_given(p, depth + 1);
}

// Whether the node's backing is not what its image names: chosen by the
// user (by node name or inline) under another name than the image
// records, or left out (backing: null) although the image names one.
// header: the backing file name the image records.
bool backing_overridden(BlockNode *n, const std::optional<std::string> &header, int depth)
{
    BdrvChild *b = n->backing_child();
    if (!b) return header.has_value() && !header->empty();
    if (!backing_given(n, 0)) return false;
    return !header || *header != qemu_name(b->node(), depth + 1).filename();
}

QemuName qemu_name(BlockNode *n, int depth)
{
    QemuName q;
    q.full = ojson::object();
    const BlockDriver *drv = n->driver();
    q.full["driver"] = drv->name;
    if (depth > 32) return q;   // a cycle cannot be; stay finite anyway

    // The driver's options that are set, minus those that are not strong.
    nlohmann::json enc = nlohmann::json::object();
    if (n->options().drv) n->options().drv->encode(enc);
    bool strong = false;
    for (const char *k : strong_keys(drv->name)) {
        if (!enc.contains(k)) continue;
        put_flat(q.full, k, enc[k]);
        if (std::strcmp(k, "filename") != 0 && std::strcmp(k, "config") != 0) strong = true;
    }
    if (drv->kind == BlockDriverKind::kProtocol) {
        if (!strong) q.exact = n->filename();
        return q;
    }

    std::optional<std::string> header;
    if (n->backing_child() || (drv->caps & kCapBacking)) {
        Result<ImageInfo> ri = n->get_info();
        if (ri) header = ri.value().backing_filename;
    }
    const bool overridden = backing_overridden(n, header, depth);
    BdrvChild *primary = n->file_child();
    QemuName primary_name;
    for (BdrvChild *c : n->children()) {
        if ((c->role() & kRoleCow) && !overridden) continue;
        QemuName cn = qemu_name(c->node(), depth + 1);
        q.full[c->name()] = cn.full;
        if (c == primary) primary_name = std::move(cn);
    }
    if (overridden && !n->backing_child()) q.full["backing"] = nullptr;
    if (!primary || primary_name.exact.empty()) return q;

    if (drv->kind == BlockDriverKind::kFilter) {
        if (strong) return q;
        // blklogwrites has no file name of its own and its log child is
        // part of what it is: QEMU names it by its options.
        if (std::strcmp(drv->name, "blklogwrites") == 0) return q;
        // A filter without a file name syntax of its own (copy-on-read,
        // commit_top, mirror_top) has its child's name (QEMU's generic
        // rule for a node without strong options).
        if (!drv->parse_filename) {
            q.exact = primary_name.exact;
            return q;
        }
        // A debugging filter names itself "<driver>:<config>:<image>".
        std::string config = enc.contains("config") ? enc["config"].get<std::string>() : "";
        q.exact = std::string(drv->name) + ":" + config + ":" + primary_name.exact;
        return q;
    }
    // A format takes over its file's name when that reopens the same
    // tree: the file is a protocol (or a protocol-like filter), nothing
    // strong is set and the backing file is the one the image names. (A
    // data file, even one given by node name, does not count.)
    if (primary->node()->driver()->kind != BlockDriverKind::kFormat && !strong && !overridden) {
        q.exact = primary_name.exact;
    }
    return q;
}

// The directory part of a plain file name ("" for none), with its '/'.
std::string dirname_of(const std::string &path)
{
    size_t slash = path.rfind('/');
    return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

bool has_protocol_prefix(const std::string &name)
{
    size_t colon = name.find(':');
    return colon != std::string::npos && name.find('/') > colon;
}

// QEMU's full-backing-filename: the recorded name resolved against the
// directory of the image's file; nullopt where it cannot be resolved (the
// image's own name is a json: description).
std::optional<std::string> full_backing_filename(BlockNode *n, const std::string &recorded)
{
    if (recorded.empty() || recorded[0] == '/' || has_protocol_prefix(recorded)) return recorded;
    BlockNode *f = n;
    while (f->driver()->kind != BlockDriverKind::kProtocol) {
        BdrvChild *c = f->file_child();
        if (!c) return std::nullopt;
        f = c->node();
    }
    std::string base = qemu_name(f, 0).filename();
    if (has_protocol_prefix(base)) return std::nullopt;
    return dirname_of(base) + recorded;
}

// ---------------------------------------------------------------- image info


// QEMU's ImageInfo of one node (backing-image added by the caller).
ojson image_info(BlockNode *n)
{
    ojson j = ojson::object();
    j["filename"] = node_qemu_filename(n);
    j["format"] = n->driver_name();
    Result<ImageInfo> ri = n->get_info();
    BlockNode *bn = block_info_node(n);
    Result<ImageInfo> bi = bn == n || !bn ? ri : bn->get_info();
    const bool info = bn && bi.ok();
    if (info) j["dirty-flag"] = bi.value().dirty_flag;
    int64_t actual = allocated_size(n);
    if (actual >= 0) j["actual-size"] = actual;
    // QEMU keeps lengths in 512-byte sectors: a file's odd tail rounds up.
    j["virtual-size"] = (n->getlength() + 511) & ~int64_t{511};
    if (!ri) return j;
    const ImageInfo &ii = ri.value();
    const std::optional<uint64_t> cluster = info ? bi.value().cluster_size : std::nullopt;
    if (cluster && *cluster) j["cluster-size"] = *cluster;
    if (ii.backing_filename && !ii.backing_filename->empty()) {
        j["backing-filename"] = *ii.backing_filename;
        std::optional<std::string> full = full_backing_filename(n, *ii.backing_filename);
        if (!full) full = ii.full_backing_filename;
        if (full) j["full-backing-filename"] = *full;
        if (ii.backing_format) j["backing-filename-format"] = *ii.backing_format;
    }
    // Asked of the node: raw and filters pass the question down.
    Result<std::vector<SnapshotInfo>> sn = n->snapshot_list();
    if (sn.ok() && !sn.value().empty()) {
        ojson a = ojson::array();
        for (const SnapshotInfo &s : sn.value()) a.push_back(snapshot_info_json<ojson>(s));
        j["snapshots"] = std::move(a);
    }
    if (ii.format_specific.kind != InfoValue::Kind::kNone) {
        j["format-specific"] = info_value_json<ojson>(ii.format_specific);
    }
    return j;
}

// The ImageInfo with the chain of backing-image members below it.
ojson image_info_chain(BlockNode *n, bool flat)
{
    ojson j = image_info(n);
    if (flat) return j;
    BdrvChild *c = filter_or_cow_child(n);
    if (!c) return j;
    // backing-image goes before format-specific in QEMU's member order.
    ojson fs;
    bool had_fs = j.contains("format-specific");
    if (had_fs) {
        fs = std::move(j["format-specific"]);
        j.erase("format-specific");
    }
    j["backing-image"] = image_info_chain(c->node(), false);
    if (had_fs) j["format-specific"] = std::move(fs);
    return j;
}

// The dirty bitmaps of a node, newest first (BlockNode::dirty_bitmaps()).
std::vector<DirtyBitmapStatus> node_dirty_bitmaps(BlockNode *n)
{
    std::vector<DirtyBitmapStatus> out;
    for (const DirtyBitmapInfo &b : n->dirty_bitmaps()) {
        out.push_back({b.name, b.count, b.granularity, b.recording, b.busy, b.persistent, b.inconsistent});
    }
    return out;
}

// QEMU's order of naming: an inline "file" child (opened before its
// parent), the node, then the other inline children (opened by the
// driver), the inline backing last.
void naming_order(BlockNode *n, std::set<BlockNode *> &seen, std::vector<BlockNode *> &out)
{
    if (!seen.insert(n).second) return;
    auto inline_child = [](BdrvChild *c) { return c->node()->implicit() && c->node()->parents().front() == c; };
    BdrvChild *file = n->child("file");
    if (file && inline_child(file)) naming_order(file->node(), seen, out);
    out.push_back(n);
    for (BdrvChild *c : n->children()) {
        if (c != file && !(c->role() & kRoleCow) && inline_child(c)) naming_order(c->node(), seen, out);
    }
    for (BdrvChild *c : n->children()) {
        if ((c->role() & kRoleCow) && inline_child(c)) naming_order(c->node(), seen, out);
    }
}

// ---------------------------------------------------------------- QEMU JSON

void append_json_string(std::string &out, const std::string &s)
{
    out += '"';
    for (size_t i = 0; i < s.size();) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        char buf[16];
        switch (c) {
        case '"': out += "\\\""; i++; continue;
        case '\\': out += "\\\\"; i++; continue;
        case '\b': out += "\\b"; i++; continue;
        case '\f': out += "\\f"; i++; continue;
        case '\n': out += "\\n"; i++; continue;
        case '\r': out += "\\r"; i++; continue;
        case '\t': out += "\\t"; i++; continue;
        default: break;
        }
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
            i++;
            continue;
        }
        // Decode one UTF-8 sequence (a bad byte stands for U+FFFD).
        uint32_t cp = 0xfffd;
        size_t len = 1;
        if (c < 0x80) {
            cp = c;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
        }
        if (len > 1) {
            if (i + len <= s.size()) {
                cp = c & (0x7f >> len);
                for (size_t k = 1; k < len; k++) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
            } else {
                len = 1;
            }
        }
        i += len;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            std::snprintf(buf, sizeof(buf), "\\u%04X\\u%04X", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
        } else {
            std::snprintf(buf, sizeof(buf), "\\u%04X", cp);
        }
        out += buf;
    }
    out += '"';
}

void append_qdict_json(std::string &out, const ojson &v)
{
    switch (v.type()) {
    case ojson::value_t::object: {
        std::vector<size_t> order(v.size());
        std::vector<const std::string *> keys;
        std::vector<const ojson *> vals;
        for (auto it = v.begin(); it != v.end(); ++it) {
            keys.push_back(&it.key());
            vals.push_back(&it.value());
        }
        for (size_t i = 0; i < order.size(); i++) order[i] = i;
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
            unsigned ba = qdict_bucket(*keys[a]), bb = qdict_bucket(*keys[b]);
            return ba != bb ? ba < bb : a > b;
        });
        out += '{';
        for (size_t k = 0; k < order.size(); k++) {
            if (k) out += ", ";
            append_json_string(out, *keys[order[k]]);
            out += ": ";
            append_qdict_json(out, *vals[order[k]]);
        }
        out += '}';
        return;
    }
    case ojson::value_t::array: {
        out += '[';
        bool first = true;
        for (const ojson &e : v) {
            if (!first) out += ", ";
            first = false;
            append_qdict_json(out, e);
        }
        out += ']';
        return;
    }
    case ojson::value_t::string: append_json_string(out, v.get_ref<const std::string &>()); return;
    default: out += v.dump(); return;
    }
}

} // namespace

unsigned qdict_bucket(const std::string &key)
{
    uint32_t v = 0x238F13AFu * static_cast<uint32_t>(key.size());
    for (size_t i = 0; i < key.size(); i++) {
        v += static_cast<uint32_t>(static_cast<unsigned char>(key[i])) << (i * 5 % 24);
    }
    return (1103515243u * v + 12345u) % 512u;
}

std::string qdict_json_string(const ojson &v)
{
    std::string out;
    append_qdict_json(out, v);
    return out;
}

std::string node_qemu_filename(BlockNode *node) { return qemu_name(node, 0).filename(); }

std::optional<std::string> node_full_backing_filename(BlockNode *node, const std::string &recorded)
{
    return full_backing_filename(node, recorded);
}

ojson dirty_bitmaps_json(const std::vector<DirtyBitmapStatus> &bitmaps)
{
    ojson a = ojson::array();
    for (const DirtyBitmapStatus &b : bitmaps) {
        ojson j = ojson::object();
        j["name"] = b.name;
        j["count"] = b.count;
        j["granularity"] = b.granularity;
        j["recording"] = b.recording;
        j["busy"] = b.busy;
        j["persistent"] = b.persistent;
        if (b.inconsistent) j["inconsistent"] = true;
        a.push_back(std::move(j));
    }
    return a;
}

ojson block_device_info_ordered(BlockNode *node, bool flat)
{
    ojson j = ojson::object();
    j["file"] = node_qemu_filename(node);
    j["node-name"] = node->node_name();
    j["ro"] = node->read_only();
    j["drv"] = node->driver_name();
    if (BdrvChild *b = node->backing_child()) j["backing_file"] = node_qemu_filename(b->node());
    int depth = 0;
    if (!flat) {
        for (BdrvChild *c = filter_or_cow_child(node); c && depth < 1000; c = filter_or_cow_child(c->node())) depth++;
    }
    j["backing_file_depth"] = depth;
    j["encrypted"] = false;
    const BlockdevOptions &o = node->options();
    j["detect_zeroes"] = detect_zeroes_name(o.detect_zeroes);
    for (const char *k : {"bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"}) j[k] = 0;
    j["image"] = image_info_chain(node, flat);
    j["cache"] = ojson::object();
    j["cache"]["writeback"] = true;
    j["cache"]["direct"] = o.cache_direct;
    j["cache"]["no-flush"] = o.cache_no_flush;
    j["write_threshold"] = 0;
    std::vector<DirtyBitmapStatus> bitmaps = node_dirty_bitmaps(node);
    if (!bitmaps.empty()) j["dirty-bitmaps"] = dirty_bitmaps_json(bitmaps);
    return j;
}

nlohmann::json block_device_info(BlockNode *node, bool flat)
{
    return nlohmann::json(block_device_info_ordered(node, flat));
}

std::vector<BlockNode *> named_nodes_in_qemu_order(BlockGraph &graph)
{
    std::vector<BlockNode *> all = graph.nodes();
    std::set<BlockNode *> seen;
    std::vector<BlockNode *> named;
    for (BlockNode *n : all) {
        if (!n->implicit()) naming_order(n, seen, named);
    }
    for (BlockNode *n : all) {   // inline nodes whose parent is gone
        if (!seen.count(n)) naming_order(n, seen, named);
    }
    std::reverse(named.begin(), named.end());
    return named;
}

ojson query_named_block_nodes_ordered(BlockGraph &graph, bool flat)
{
    ojson a = ojson::array();
    for (BlockNode *n : named_nodes_in_qemu_order(graph)) a.push_back(block_device_info_ordered(n, flat));
    return a;
}

nlohmann::json query_named_block_nodes(BlockGraph &graph, bool flat)
{
    return nlohmann::json(query_named_block_nodes_ordered(graph, flat));
}

} // namespace bg
