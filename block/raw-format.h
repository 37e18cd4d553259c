// The raw format driver's node class, for its own source file and its unit
// test. Nothing else includes this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

#include "block/block-driver.h"

namespace bg {

// raw's probe: 1 for anything (the lowest positive score, so that raw is
// chosen only when no other format recognises the image).
int raw_probe(const uint8_t *buf, size_t len);

// A raw node. With neither offset nor size it is a filter of its "file"
// child (FILTERED|PRIMARY); otherwise a window [offset, offset+size) onto
// it (DATA|PRIMARY), and filtered_child() is nullptr.
class RawFormatNode : public FilterNode {
  public:
    BdrvChild *filtered_child() const override { return is_filter_ ? filtered_ : nullptr; }

    // Probed raw (BlockdevOptions::probed at open): the format was guessed,
    // not given. Then writes that would change the first 512 bytes of the
    // image into something another registered format's probe recognises
    // fail with -EPERM (the format-probing attack: a guest writing a qcow2
    // header naming a host file as its backing file). set_probed is for
    // tests; call it before anyone writes (not thread-safe against requests).
    void set_probed(bool probed) { probed_ = probed; }
    bool probed() const { return probed_; }

    uint64_t window_offset() const { return offset_; }   // bytes into the file child

  protected:
    Status open(const BlockdevOptions &opts) override;
    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override;
    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override;
    int64_t do_getlength() override;
    void refresh_limits(BlockLimits *bl) override;
    int do_passthrough_fd(bool write, std::string *why) override;
    Status reopen_prepare(const BlockdevOptions &opts) override;
    void reopen_commit() override;
    void reopen_abort() override;
    // What the file child knows of itself (QEMU's raw does the same): an
    // rbd image's object size, features and snapshots; nothing for a file.
    Status coroutine_fn co_get_info(ImageInfo *info) override;

  private:
    // The checks of a window [offset, offset+size) against the file child,
    // QEMU's texts (size: the file's length minus offset when !has_size).
    Status check_window(uint64_t offset, bool has_size, uint64_t size) const;
    std::optional<std::pair<uint64_t, std::optional<uint64_t>>> reopen_window_;   // prepared offset, size
    int adjust_offset(int64_t *offset, int64_t bytes, bool is_write) const;
    int coroutine_fn check_probed_write(int64_t offset, int64_t bytes, const IOVector *qiov, uint8_t *sector0);

    uint64_t offset_ = 0;       // bytes into the file child where the window starts
    uint64_t size_ = 0;         // window length in bytes, when has_size_
    bool has_size_ = false;
    bool is_filter_ = true;     // neither offset nor size given
    bool probed_ = false;
    CoMutex probe_lock_;        // serialises probed-raw writes touching sector 0
};

} // namespace bg
