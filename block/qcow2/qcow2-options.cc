// qcow2's runtime options: decoding from the user's keys and encoding back.
#include <climits>

#include "block/qcow2/qcow2.h"
#include "qapi/option-reader.h"

namespace bg {

namespace {

constexpr EnumName<Qcow2OverlapCheckMode> kOverlapNames[] = {
    {"none", Qcow2OverlapCheckMode::kNone},
    {"constant", Qcow2OverlapCheckMode::kConstant},
    {"cached", Qcow2OverlapCheckMode::kCached},
    {"all", Qcow2OverlapCheckMode::kAll},
};

// snapshot.id / snapshot.name: literal dotted keys or a nested object.
Status decode_snapshot(OptionReader &r, BlockdevOptionsQcow2 *q)
{
    std::optional<std::string> nested_id, nested_name;
    BG_TRY(r.get_object("snapshot", [&](OptionReader &s) -> Status {
        std::string v;
        if (s.has("id")) {
            BG_TRY(s.get("id", &v));
            nested_id = v;
        }
        if (s.has("name")) {
            BG_TRY(s.get("name", &v));
            nested_name = v;
        }
        return {};
    }));
    for (const char *k : {"id", "name"}) {
        const bool id = k[0] == 'i';
        std::string dotted = std::string("snapshot.") + k;
        std::optional<std::string> &nested = id ? nested_id : nested_name;
        std::optional<std::string> &dst = id ? q->snapshot_id : q->snapshot_name;
        if (r.has(dotted.c_str())) {
            if (nested) return r.error(dotted, "given twice");
            std::string v;
            BG_TRY(r.get(dotted.c_str(), &v));
            dst = v;
        } else if (nested) {
            dst = nested;
        }
    }
    return {};
}

Status decode_caches(OptionReader &r, BlockdevOptionsQcow2 *q)
{
    BG_TRY(r.get_size("cache-size", &q->cache_size, INT64_MAX));
    BG_TRY(r.get_size("l2-cache-size", &q->l2_cache_size, INT64_MAX));
    BG_TRY(r.get_size("refcount-cache-size", &q->refcount_cache_size, INT64_MAX));
    BG_TRY(r.get_size("l2-cache-entry-size", &q->l2_cache_entry_size, INT64_MAX));
    if (q->l2_cache_entry_size) {
        uint64_t x = *q->l2_cache_entry_size;
        if ((x & (x - 1)) || x < 512 || x > (2u << 20)) {
            return r.error("l2-cache-entry-size",
                           "L2 cache entry size must be a power of two between 512 and the cluster size");
        }
    }
    BG_TRY(r.get_uint("cache-clean-interval", &q->cache_clean_interval, UINT_MAX));
    if (q->cache_size) {
        if (q->l2_cache_size && q->refcount_cache_size) {
            return r.error("", "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
        }
        if (q->l2_cache_size && *q->l2_cache_size > *q->cache_size) {
            return r.error("", "l2-cache-size may not exceed cache-size");
        }
        if (q->refcount_cache_size && *q->refcount_cache_size > *q->cache_size) {
            return r.error("", "refcount-cache-size may not exceed cache-size");
        }
    }
    return {};
}

} // namespace

Result<std::unique_ptr<DriverOptions>> decode_qcow2_options(OptionReader &r, const BlockdevOptions &generic)
{
    auto q = std::make_unique<BlockdevOptionsQcow2>();
    BG_TRY(r.get_ref("file", &q->file, OptionReader::RefMode::kRequired));
    BG_TRY(r.get_ref("backing", &q->backing, OptionReader::RefMode::kNullable));
    BG_TRY(r.get_ref("data-file", &q->data_file, OptionReader::RefMode::kOptional));
    q->lazy_refcounts_set = r.has("lazy-refcounts");
    BG_TRY(r.get("lazy-refcounts", &q->lazy_refcounts));
    q->pass_discard_request_set = r.has("pass-discard-request");
    BG_TRY(r.get("pass-discard-request", &q->pass_discard_request));
    BG_TRY(r.get("pass-discard-snapshot", &q->pass_discard_snapshot));
    BG_TRY(r.get("pass-discard-other", &q->pass_discard_other));
    BG_TRY(r.get("discard-no-unref", &q->discard_no_unref));
    if (const nlohmann::json *v = r.take("overlap-check"); v && v->is_object()) {
        return r.error("overlap-check", "only the string form (none, constant, cached, all) is supported, not an "
                                        "object of per-structure flags");
    }
    BG_TRY(r.get_enum("overlap-check", &q->overlap_check, kOverlapNames));
    BG_TRY(decode_caches(r, q.get()));
    BG_TRY(decode_snapshot(r, q.get()));
    if ((q->snapshot_id || q->snapshot_name) && !generic.read_only) {
        return r.error("", "snapshot.id and snapshot.name require read-only=on");
    }
    return std::unique_ptr<DriverOptions>(std::move(q));
}

void BlockdevOptionsQcow2::for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn)
{
    fn("file", file);
    fn("backing", backing);
    fn("data-file", data_file);
}

void BlockdevOptionsQcow2::encode(nlohmann::json &j) const
{
    const BlockdevOptionsQcow2 def;
    put_ref(j, "file", file);
    put_ref(j, "backing", backing);
    put_ref(j, "data-file", data_file);
    if (lazy_refcounts_set) j["lazy-refcounts"] = lazy_refcounts;
    auto put_bool = [&j](const char *key, bool value, bool dflt) {
        if (value != dflt) j[key] = value;
    };
    if (pass_discard_request_set) j["pass-discard-request"] = pass_discard_request;
    put_bool("pass-discard-snapshot", pass_discard_snapshot, def.pass_discard_snapshot);
    put_bool("pass-discard-other", pass_discard_other, def.pass_discard_other);
    put_bool("discard-no-unref", discard_no_unref, def.discard_no_unref);
    if (overlap_check != def.overlap_check) j["overlap-check"] = enum_name(kOverlapNames, overlap_check);
    if (cache_size) j["cache-size"] = *cache_size;
    if (l2_cache_size) j["l2-cache-size"] = *l2_cache_size;
    if (l2_cache_entry_size) j["l2-cache-entry-size"] = *l2_cache_entry_size;
    if (refcount_cache_size) j["refcount-cache-size"] = *refcount_cache_size;
    if (cache_clean_interval != def.cache_clean_interval) j["cache-clean-interval"] = cache_clean_interval;
    if (snapshot_id) j["snapshot.id"] = *snapshot_id;
    if (snapshot_name) j["snapshot.name"] = *snapshot_name;
}

} // namespace bg
