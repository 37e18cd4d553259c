// Typed, validated options for block nodes: plain data, the shape of QEMU's
// BlockdevOptions (qapi/block-core.json).
//
// The members every node has (node-name, read-only, cache.*, discard, ...)
// live in BlockdevOptions itself. The members of one driver live in an
// options object that the driver defines in its own source file, derived
// from DriverOptions: the driver decodes its keys into it (through
// qapi/option-reader.h) and encodes them back to JSON. Nothing here knows
// any driver. qapi/block-parse.h turns JSON or keyval text into these
// structures and back, given a BlockdevSchema that finds a driver's decoder
// by name (block/'s driver registry is one).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <nlohmann/json_fwd.hpp>

#include "util/error.h"

namespace bg {

struct BlockdevOptions;

// A child reference: a node name, an inline definition, or (backing only) null.
struct BlockdevRef {
    enum class Kind { kNone, kReference, kInline, kNull };
    Kind kind = Kind::kNone;          // kNone: key absent
    std::string reference;            // kReference: node-name of an existing node
    std::shared_ptr<BlockdevOptions> def;   // kInline

    bool present() const { return kind != Kind::kNone; }
};

enum class BlockdevDiscardOptions { kIgnore, kUnmap };
enum class BlockdevDetectZeroes { kOff, kOn, kUnmap };
enum class OnOffAuto { kOff, kOn, kAuto };
enum class PreallocMode { kOff, kMetadata, kFalloc, kFull };

// The driver-specific part of a node's options. A driver derives its own
// struct from DriverOptionsOf<ItsStruct> (which supplies clone()).
// Instances are plain data: no handles, no pointers into a graph.
struct DriverOptions {
    virtual ~DriverOptions() = default;
    // A deep copy (inline child definitions included).
    virtual std::unique_ptr<DriverOptions> clone() const = 0;
    // Adds the driver's members to the JSON object j: required members
    // always, the others only where they differ from their defaults, so that
    // decoding the result gives equal options. Children are written with
    // put_ref() (qapi/option-reader.h). Must not throw but for bad_alloc.
    virtual void encode(nlohmann::json &j) const = 0;
    // Calls fn with the key and the reference of every child member
    // ("file", "backing", ...), absent ones included. Default: none.
    virtual void for_each_child(const std::function<void(const char *key, BlockdevRef &ref)> &fn);
    void for_each_child(const std::function<void(const char *key, const BlockdevRef &ref)> &fn) const;
};

template <typename T>
struct DriverOptionsOf : DriverOptions {
    std::unique_ptr<DriverOptions> clone() const override
    {
        return std::make_unique<T>(static_cast<const T &>(*this));
    }
};

// Owns a DriverOptions with value semantics: copies are deep.
class DriverOptionsPtr {
  public:
    DriverOptionsPtr() = default;
    DriverOptionsPtr(std::unique_ptr<DriverOptions> p) : p_(std::move(p)) {}
    DriverOptionsPtr(const DriverOptionsPtr &o) : p_(o.p_ ? o.p_->clone() : nullptr) {}
    DriverOptionsPtr(DriverOptionsPtr &&) = default;
    DriverOptionsPtr &operator=(const DriverOptionsPtr &o)
    {
        if (this != &o) p_ = o.p_ ? o.p_->clone() : nullptr;
        return *this;
    }
    DriverOptionsPtr &operator=(DriverOptionsPtr &&) = default;

    DriverOptions *get() const { return p_.get(); }
    DriverOptions *operator->() const { return p_.get(); }
    explicit operator bool() const { return p_ != nullptr; }

  private:
    std::unique_ptr<DriverOptions> p_;
};

struct BlockdevOptions {
    std::string driver;                         // required: a driver name of the schema
    std::string node_name;                      // "node-name"; empty = auto-generated at open
    bool read_only = false;                     // "read-only"
    bool auto_read_only = false;                // "auto-read-only"
    bool force_share = false;                   // "force-share" (requires read-only)
    BlockdevDiscardOptions discard = BlockdevDiscardOptions::kIgnore;
    bool discard_set = false;                   // "discard" was given (an inline child inherits unmap otherwise)
    BlockdevDetectZeroes detect_zeroes = BlockdevDetectZeroes::kOff;  // "detect-zeroes"
    bool cache_direct = false;                  // "cache": {"direct"}  (keyval: cache.direct)
    bool cache_no_flush = false;                // "cache": {"no-flush"}
    // Open flags that are not options of the JSON/keyval forms; only the
    // program that opens the node sets them (never encoded).
    // check_repair: set by "img check -r" on the node it repairs (QEMU's
    // BDRV_O_CHECK). A format driver then opens writable what it would
    // refuse (qcow2: the corrupt bit) and leaves repairs it would do at open
    // (qcow2: a dirty image) to the check.
    bool check_repair = false;
    // probed: the format was guessed from the image's first bytes, not
    // given by the user. A format that any data can imitate (raw) then
    // refuses writes that would make the image probe as another format.
    bool probed = false;
    DriverOptionsPtr drv;                       // the driver's members; set by the decoder

    // The driver's options as its own struct, or nullptr if they are of
    // another type (or unset).
    template <typename T> T *as() { return dynamic_cast<T *>(drv.get()); }
    template <typename T> const T *as() const { return dynamic_cast<const T *>(drv.get()); }
};

class OptionReader;

// Decodes a driver's own keys into its options object (see
// qapi/option-reader.h). generic holds the node's already-decoded common
// members, for checks that combine both (e.g. "requires read-only=on").
using DriverOptionsDecoder = Result<std::unique_ptr<DriverOptions>> (*)(OptionReader &r,
                                                                        const BlockdevOptions &generic);

// Where the generic decoder finds a driver's decoder by the "driver" value.
class BlockdevSchema {
  public:
    virtual ~BlockdevSchema() = default;
    // nullptr: no such driver.
    virtual DriverOptionsDecoder options_decoder(const std::string &driver) const = 0;
};

} // namespace bg
