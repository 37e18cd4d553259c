// The driver author's header: a driver's source file includes this (and its
// own headers), nothing else of block/ but consumer headers. It brings
//   - block/block.h: the graph, edges, backends, the BlockDriver descriptor
//     a driver defines and the registry it is added to (block/drivers.cc);
//   - block/driver-hooks.h: DriverHooks, every hook a driver implements and
//     every helper it may use, documented one by one;
//   - qapi/option-reader.h: OptionReader, to decode the driver's own keys;
// and adds FilterNode and the helpers for image creation. docs/drivers.md
// "Writing a driver" walks through the smallest driver. Consumers (export/,
// tools/) never include this header (make check-layering).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "block/block.h"
#include "block/driver-hooks.h"
#include "qapi/option-reader.h"

namespace bg {

// ---- helpers for image creation (create_image hooks; block/image-mgmt.cc)

// Creates (or empties) the file that holds an image, or its data file,
// through the protocol driver that serves filename (built-in registry).
// opts: the protocol's create options (nocow, extent_size_hint,
// preallocation ...) and "size". Errors: ENOTSUP if that protocol cannot
// create images, else the protocol's.
Status create_image_file(const std::string &filename, const CreateOptions &opts);
// The "preallocation" create option: off (default), falloc, full, and
// metadata if allowed. EINVAL "Parameter 'preallocation' does not accept value 'x'".
Result<PreallocMode> parse_prealloc_option(const CreateOptions &opts, bool allow_metadata);

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
