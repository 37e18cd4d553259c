// For driver authors: the driver descriptor, the registry, and the filter
// base class. Consumers include block/block.h only.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "block/block.h"

namespace bg {

enum class BlockDriverKind { kProtocol, kFormat, kFilter };

// Capability flags a driver declares; the conformance suite skips cases by
// them (a skip is reported as a skip).
using DriverCaps = uint32_t;
constexpr DriverCaps kCapWrite = 1 << 0;        // can be opened writable
constexpr DriverCaps kCapDiscard = 1 << 1;      // discard frees/zeroes data
constexpr DriverCaps kCapWriteZeroes = 1 << 2;  // efficient write-zeroes
constexpr DriverCaps kCapResize = 1 << 3;       // truncate (grow)
constexpr DriverCaps kCapShrink = 1 << 4;       // truncate (shrink)
constexpr DriverCaps kCapBacking = 1 << 5;      // has a backing (COW) child
constexpr DriverCaps kCapBlockStatus = 1 << 6;  // reports holes/zeroes
constexpr DriverCaps kCapFlush = 1 << 7;        // flush reaches stable storage
constexpr DriverCaps kCapDiscardZeroes = 1 << 8;// discarded ranges read back as zeros
constexpr DriverCaps kCapPersistent = 1 << 9;   // data survives close/reopen
constexpr DriverCaps kCapWriteCompressed = 1 << 10; // honours kReqWriteCompressed (else -ENOTSUP)
// Bits the conformance suite (tests/conformance/, docs/conformance.md) uses:
constexpr DriverCaps kCapPassthrough = 1 << 11; // data is the primary child's bytes 1:1 (raw, filters): the
                                                // stack's capabilities are this driver's AND its child's
constexpr DriverCaps kCapDropsWrites = 1 << 12; // writes succeed but are not stored; reads return zeros (null-co)
constexpr DriverCaps kCapDebugEvents = 1 << 13; // fires QEMU's blkdebug events (l1_update, l2_update,
                                                // refblock_update, ...) to its file child on metadata paths
constexpr DriverCaps kCapLocking = 1 << 14;     // image locks: other graphs/processes see conflicts

// A constexpr descriptor per driver (STYLE.md rule 1).
struct BlockDriver {
    const char *name;                       // the "driver" option value
    BlockDriverKind kind;
    DriverCaps caps;
    const char *summary;                    // one line for --help
    // Creates an unopened node of this driver.
    std::unique_ptr<BlockNode> (*create)();
    // Format probe: score for the first bytes of an image (0 = not this
    // format; raw answers 1, qcow2 100). nullptr: never probed.
    int (*probe)(const uint8_t *buf, size_t len);

    // ---- image management (block/image-mgmt.h); optional, nullptr or
    // empty = not supported: img_create / img_measure then fail with
    // ENOTSUP and qemu-img's message.
    // Options create_image accepts (this driver's own, in the order the
    // "Formatting" line prints them; img_create merges the protocol's).
    std::span<const CreateOptionDesc> create_opts;
    // Creates the image filename (formats create their file through the
    // "file" driver's create_image). opts was validated against the merged
    // options and holds "size"; unknown keys are the protocol's. Does not
    // need a coroutine; REQUIRES AioContext::current() (opens nodes).
    // Errors name the file; EFBIG for a size the format cannot hold.
    Status (*create_image)(const std::string &filename, const CreateOptions &opts);
    // qemu-img measure: file sizes for an image created with opts holding
    // src's data (src == nullptr: "size" from opts). src is any node (read
    // through co_block_status_above); may yield when called in a coroutine.
    Result<MeasureInfo> (*measure)(const CreateOptions &opts, BlockNode *src);
};

// One explicit list of drivers (STYLE.md rule 4).
class DriverRegistry {
  public:
    void add(const BlockDriver *drv) { drivers_.push_back(drv); }
    const BlockDriver *find(const std::string &name) const;
    const std::vector<const BlockDriver *> &all() const { return drivers_; }
    // The format whose probe scores highest for buf ("raw" at worst).
    const BlockDriver *probe_format(const uint8_t *buf, size_t len) const;

  private:
    std::vector<const BlockDriver *> drivers_;
};

// block/drivers.cc: every built-in driver, added one line each.
void register_builtin_drivers(DriverRegistry *registry);
// The registry with every built-in driver (built on first use).
const DriverRegistry &builtin_drivers();

// Base class for filters: one FILTERED|PRIMARY child; every operation is
// forwarded to it unless the subclass overrides it, so no operation can be
// forgotten in a filter.
class FilterNode : public BlockNode {
  public:
    BdrvChild *filtered_child() const override { return filtered_; }
    std::string filename() const override;

  protected:
    // Opens the filtered child from ref under name ("file", "image").
    Status open_filtered(const std::string &name, const BlockdevRef &ref);

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override;
    int64_t do_getlength() override;
    int64_t allocated_file_size() override;
    int do_passthrough_fd(bool write, std::string *why) override;

    BdrvChild *filtered_ = nullptr;
};

} // namespace bg
