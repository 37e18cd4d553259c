// Image management vocabulary (what qemu-img's create, info, check,
// snapshot, amend and measure exchange with a driver), as plain data.
//
// Consumers (tools) see these types and the generic entry points below and
// on BlockNode / BlockDriver (block/block.h, block/block-driver.h); they
// never see a driver's insides. Drivers fill them in.
//
// Included by block/block.h; implemented in block/image-mgmt.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "util/error.h"

namespace bg {

class BlockNode;
class DriverRegistry;
struct BlockDriver;

// ---------------------------------------------------------------- create options

// What a create option holds (how qemu-img -o help names it: <str>,
// <bool (on/off)>, <num>, <size>).
enum class CreateOptionType { kString, kBool, kNumber, kSize };

// One option a driver's create_image (and amend) accepts.
struct CreateOptionDesc {
    const char *name;              // "cluster_size"
    CreateOptionType type;
    const char *help;              // one line, qemu-img's wording
    const char *def;               // default shown in the "Formatting ..." line, or nullptr
};

// The options of an image creation or amendment: qemu-img's "-o" list as
// key=value strings, in the order given, plus "size" (bytes, decimal or with
// a suffix) like any other key. Values are not interpreted here; a driver
// (or validate_create_options) parses them.
// The two lines qemu-img prints after a size that does not parse
// ("... expects a non-negative number below 2^64"), without a newline at
// the end.
extern const char kSizeSuffixHint[];

struct CreateOptions {
    std::vector<std::pair<std::string, std::string>> opts;

    // Value of key (the last one given), or nullopt.
    std::optional<std::string> get(const std::string &key) const;
    bool has(const std::string &key) const { return get(key).has_value(); }
    // Replaces every value of key with value (appends when absent).
    void set(const std::string &key, const std::string &value);
    void erase(const std::string &key);

    // Typed getters. Absent: def. Malformed: EINVAL with QEMU's message
    // ("Parameter 'cluster_size' expects a non-negative number below 2^64"
    // without QEMU's two hint lines; "Value '16E' is out of range for
    // parameter 'size'" / "Parameter 'lazy_refcounts' expects 'on' or
    // 'off'"). Sizes have QEMU's syntax (qapi/size.h strtosz).
    Result<uint64_t> get_size(const std::string &key, uint64_t def) const;
    Result<uint64_t> get_number(const std::string &key, uint64_t def) const;
    Result<bool> get_bool(const std::string &key, bool def) const;

    // Parses qemu-img's -o syntax "a=1,b=2" (",," is a literal comma) and
    // appends the pairs. "help" / "?" alone are kept as the key "help".
    // Error: EINVAL "Invalid option list: ..." for an entry without '='.
    Status parse_append(const std::string &list);
};

// Checks every key of opts against descs and every value against its
// type. Errors (QEMU's wording): EINVAL "Invalid parameter 'foo'", the typed
// getters' messages.
Status validate_create_options(const CreateOptions &opts, std::span<const CreateOptionDesc> descs);

// ---------------------------------------------------------------- measure

// qemu-img measure's answer (QEMU BlockMeasureInfo), bytes.
struct MeasureInfo {
    uint64_t required = 0;              // file size for the data the source holds
    uint64_t fully_allocated = 0;       // file size with every cluster allocated
    std::optional<uint64_t> bitmaps;    // persistent bitmaps size (when both sides support them)
};

// ---------------------------------------------------------------- check

// What check() may repair (QEMU BDRV_FIX_LEAKS / BDRV_FIX_ERRORS).
using CheckFix = uint32_t;
constexpr CheckFix kCheckFixLeaks = 1;    // -r leaks
constexpr CheckFix kCheckFixErrors = 2;   // -r all (with kCheckFixLeaks)

// qemu-img check's result (QEMU BdrvCheckResult + BlockFragInfo). Counts
// are of clusters (or metadata structures) as QEMU counts them.
struct CheckResult {
    int64_t corruptions = 0;            // errors still present after the check
    int64_t leaks = 0;                  // leaked clusters still present
    int64_t check_errors = 0;           // the check could not look at something (I/O error, ENOMEM)
    int64_t corruptions_fixed = 0;
    int64_t leaks_fixed = 0;
    int64_t image_end_offset = 0;       // bytes: end of the last used host cluster (0: not known)
    // Fragmentation info (reported when total_clusters != 0).
    uint64_t total_clusters = 0;        // guest clusters of the virtual disk
    uint64_t allocated_clusters = 0;
    uint64_t fragmented_clusters = 0;
    uint64_t compressed_clusters = 0;
    // The lines qemu-img prints on stderr while checking ("Leaked cluster 5
    // refcount=1 reference=0", "ERROR ...", "Repairing ..."), in order,
    // without newline. The tool prints them.
    std::vector<std::string> messages;
};

// ---------------------------------------------------------------- info / snapshots

// A value of format-specific information, shaped like QEMU's QAPI output so
// a tool can print it both as JSON and in qemu-img's human layout.
struct InfoValue {
    enum class Kind { kNone, kBool, kInt, kString, kList, kDict };
    Kind kind = Kind::kNone;
    bool b = false;
    int64_t i = 0;
    std::string s;
    std::vector<InfoValue> list;
    // Not std::pair: a pair of an incomplete type is not allowed (clang
    // rejects it); vector of an incomplete struct is.
    struct Member;
    std::vector<Member> dict;   // in output order

    static InfoValue of_bool(bool v);
    static InfoValue of_int(int64_t v);
    static InfoValue of_string(std::string v);
    static InfoValue new_list();
    static InfoValue new_dict();
    // Dict: appends key -> v (returns *this for chaining).
    InfoValue &add(const std::string &key, InfoValue v);
    // Dict: the member named key, or nullptr.
    const InfoValue *find(const std::string &key) const;
};

struct InfoValue::Member {
    std::string first;    // key
    InfoValue second;     // value
};

// An InfoValue as a JSON value of type Json (nlohmann::json, or
// nlohmann::ordered_json to keep the dictionaries' member order); kNone
// is null.
template <typename Json>
Json info_value_json(const InfoValue &v)
{
    switch (v.kind) {
    case InfoValue::Kind::kNone: return nullptr;
    case InfoValue::Kind::kBool: return v.b;
    case InfoValue::Kind::kInt: return v.i;
    case InfoValue::Kind::kString: return v.s;
    case InfoValue::Kind::kList: {
        Json a = Json::array();
        for (const InfoValue &e : v.list) a.push_back(info_value_json<Json>(e));
        return a;
    }
    case InfoValue::Kind::kDict: {
        Json o = Json::object();
        for (const InfoValue::Member &m : v.dict) o[m.first] = info_value_json<Json>(m.second);
        return o;
    }
    }
    return nullptr;
}

// One internal snapshot (QEMU QEMUSnapshotInfo / SnapshotInfo).
struct SnapshotInfo {
    std::string id;                     // "1", "2", ...; empty at create: the driver picks one
    std::string name;
    uint64_t vm_state_size = 0;         // bytes
    uint32_t date_sec = 0;
    uint32_t date_nsec = 0;
    uint64_t vm_clock_nsec = 0;
    std::optional<uint64_t> icount;     // absent: not recorded (QEMU's -1)
    uint64_t disk_size = 0;             // virtual size when taken (bytes; filled by snapshot_list)
};

// QEMU's SnapshotInfo JSON object (qemu-img info, QMP), members in QEMU's
// order when Json keeps order.
template <typename Json>
Json snapshot_info_json(const SnapshotInfo &s)
{
    Json j = Json::object();
    j["id"] = s.id;
    j["name"] = s.name;
    j["vm-state-size"] = s.vm_state_size;
    j["date-sec"] = s.date_sec;
    j["date-nsec"] = s.date_nsec;
    j["vm-clock-sec"] = s.vm_clock_nsec / 1000000000ULL;
    j["vm-clock-nsec"] = s.vm_clock_nsec % 1000000000ULL;
    if (s.icount) j["icount"] = *s.icount;
    return j;
}

// What a format driver knows about an image beyond its node's length
// (QEMU BlockDriverInfo + ImageInfoSpecific + the snapshot list).
struct ImageInfo {
    std::optional<uint64_t> cluster_size;           // "cluster-size"
    bool dirty_flag = false;                        // "dirty-flag"
    std::optional<std::string> backing_filename;    // as recorded in the image
    std::optional<std::string> full_backing_filename;// resolved as the driver opens it
    std::optional<std::string> backing_format;      // "backing-filename-format"
    std::vector<SnapshotInfo> snapshots;
    // {"type": "<format>", "data": {...}} as qemu-img info --output=json
    // prints it under "format-specific"; kind kNone when the format has
    // nothing specific.
    InfoValue format_specific;
};

// One persistent dirty bitmap stored in an image (for measure and info).
struct PersistentBitmapInfo {
    std::string name;
    uint32_t granularity = 0;           // bytes
    std::vector<std::string> flags;     // "in-use", "auto"
};

// The bits of a persistent dirty bitmap (qemu-img bitmap --merge, convert
// --bitmaps): bit i, stored LSB first in bytes[i / 8], covers guest bytes
// [i * granularity, (i + 1) * granularity).
struct DirtyBitmapData {
    uint32_t granularity = 0;           // bytes, a power of two
    uint64_t nb_bits = 0;
    bool enabled = true;                // tracks writes ("auto" in qcow2)
    std::vector<uint8_t> bytes;         // (nb_bits + 7) / 8
};

// One change to a node's persistent dirty bitmaps (qemu-img bitmap).
struct BitmapChange {
    enum class Kind { kAdd, kRemove, kClear, kEnable, kDisable, kMerge };
    Kind kind = Kind::kAdd;
    std::string name;
    uint32_t granularity = 0;           // kAdd; 0: the format's default
    bool disabled = false;              // kAdd: created disabled
    DirtyBitmapData source;             // kMerge: ORed in (granularities may differ)
};

// Progress of a long operation (amend): done out of total units.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// ---------------------------------------------------------------- img create

// QEMU's bdrv_img_create: the generic part of "qemu-img create".
struct ImgCreateParams {
    std::string fmt;                    // format driver ("qcow2", "raw", "file")
    std::string filename;
    CreateOptions opts;                 // -o list; "size" set from the positional size
    std::optional<std::string> backing_file;   // -b (also accepted as -o backing_file)
    std::optional<std::string> backing_fmt;    // -F (also -o backing_fmt)
    bool unsafe = false;                // -u: do not open the backing file
    // Called with the "Formatting 'f', fmt=qcow2 size=..." line (no
    // newline) just before the image is created; qemu-img prints it unless -q.
    std::function<void(const std::string &)> on_formatting;
};

// Creates the image as qemu-img create does: checks the format and its
// options (format's and the "file" protocol's, merged), the backing file
// (opened read-only and shared unless unsafe, for its existence, format
// and, when no size is given, its size), then calls the driver's
// create_image. Errors carry qemu-img's message (without the program name):
//   "Unknown file format 'x'", "Format driver 'x' does not support image creation",
//   "Invalid parameter 'x'", "Backing file specified without backing format",
//   "Could not open 'b': No such file or directory" (+ "\nCould not open backing image."),
//   "Image creation needs a size parameter",
//   "Error: Trying to create an image with the same filename as the backing file",
//   "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
//   and the driver's own.
// REQUIRES AioContext::current() (it opens the backing image).
Status img_create(const DriverRegistry &registry, const ImgCreateParams &p);

// The create options of format fmt merged with those of the protocol
// ("file"), in the order qemu-img prints them; for "-o help" (which sorts
// them by name) and the Formatting line.
std::vector<CreateOptionDesc> merged_create_options(const BlockDriver *fmt, const BlockDriver *proto);

// The "Formatting ..." line for opts (every option with a value or a
// default, in descs order; strings quoted as qemu-img does).
std::string formatting_line(const std::string &filename, const std::string &fmt, const CreateOptions &opts,
                            std::span<const CreateOptionDesc> descs);

// qemu-img measure: the format's measure function on opts and an optional
// source node (nullptr: size from opts). Errors: ENOTSUP "Format driver
// 'x' does not support size measurement", the driver's.
Result<MeasureInfo> img_measure(const BlockDriver *fmt, const CreateOptions &opts, BlockNode *src);

} // namespace bg
