// The raw format driver (QEMU block/raw-format.c): the image is its file
// child's bytes, optionally a window [offset, offset+size) of them. Reads
// and writes tell the file child "read_aio" / "write_aio" first (blkdebug
// rules on those events fire for raw images, as in QEMU).
//
// Threading: options are immutable after open; probed-raw writes touching
// sector 0 are serialised by a CoMutex; everything else is stateless.
#include "block/raw-format.h"

#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <string>

#include "qapi/option-reader.h"

namespace bg {

int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1;
}

// ---------------------------------------------------------------- options

namespace {

// The raw driver's options (QEMU's BlockdevOptionsRaw).
struct RawOptions : DriverOptionsOf<RawOptions> {
    BlockdevRef file;                           // required
    std::optional<uint64_t> offset;             // bytes into file
    std::optional<uint64_t> size;               // bytes, multiple of 512

    void encode(nlohmann::json &j) const override
    {
        put_ref(j, "file", file);
        if (offset) j["offset"] = *offset;
        if (size) j["size"] = *size;
    }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override { fn("file", file); }
};

Result<std::unique_ptr<DriverOptions>> decode_raw_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<RawOptions>();
    BG_TRY(r.get_ref("file", &o->file, OptionReader::RefMode::kRequired));
    BG_TRY(r.get_size("offset", &o->offset, INT64_MAX));
    BG_TRY(r.get_size("size", &o->size, INT64_MAX));
    if (o->size && *o->size % 512) return r.error("size", "Specified size is not multiple of 512");
    return std::unique_ptr<DriverOptions>(std::move(o));
}

} // namespace

// ---------------------------------------------------------------- the node

Status RawFormatNode::open(const BlockdevOptions &opts)
{
    const auto *o = opts.as<RawOptions>();
    if (!o) return node_error(EINVAL, "options are not raw options");
    probed_ = opts.probed;
    uint64_t offset = o->offset.value_or(0);
    has_size_ = o->size.has_value();
    uint64_t size = o->size.value_or(0);

    // Without offset and size limits raw behaves like a filter (QEMU: an
    // explicit offset of 0 counts as no offset).
    is_filter_ = offset == 0 && !has_size_;
    ChildRole role = is_filter_ ? (kRoleFiltered | kRolePrimary) : (kRoleData | kRolePrimary);
    Result<BdrvChild *> c = open_child("file", o->file, role);
    if (!c) return c.error();
    filtered_ = c.value();
    supports_fua_ = true;
    supported_zero_flags_ = kReqMayUnmap | kReqFua | kReqNoFallback;

    BG_TRY(check_window(offset, has_size_, size));
    offset_ = offset;
    size_ = has_size_ ? size : static_cast<uint64_t>(filtered_->getlength()) - offset;
    return {};
}

Status RawFormatNode::check_window(uint64_t offset, bool has_size, uint64_t size) const
{
    int64_t real_size = filtered_->getlength();
    if (real_size < 0) return node_error(static_cast<int>(-real_size), "Could not get image size");
    if (offset > static_cast<uint64_t>(real_size)) {
        return node_error(EINVAL, "Offset (" + std::to_string(offset) +
                                      ") cannot be greater than size of the containing file (" +
                                      std::to_string(real_size) + ")");
    }
    if (has_size && static_cast<uint64_t>(real_size) - offset < size) {
        // QEMU's wording, double space included.
        return node_error(EINVAL, "The sum of offset (" + std::to_string(offset) + ") and size (" +
                                      std::to_string(size) +
                                      ") has to be smaller or equal to the  actual size of the containing file (" +
                                      std::to_string(real_size) + ")");
    }
    // A size that is not a sector multiple would be rounded up and leak
    // out of the window.
    if (has_size && size % 512 != 0) return node_error(EINVAL, "Specified size is not multiple of 512");
    return {};
}

// Reopen: offset and size may change while the node stays a window (some
// offset or size given) or stays a plain filter; turning one into the
// other would change the role of the child edge.
Status RawFormatNode::reopen_prepare(const BlockdevOptions &opts)
{
    const auto *o = opts.as<RawOptions>();
    if (!o) return node_error(EINVAL, "options are not raw options");
    if (auto k = changed_driver_option(opts, {"offset", "size"})) {
        return node_error(EINVAL, "Cannot change the option '" + *k + "'");
    }
    const uint64_t offset = o->offset.value_or(0);
    const bool filter = offset == 0 && !o->size;
    if (filter != is_filter_) {
        const char *key = o->size.has_value() != has_size_ ? "size" : "offset";
        return node_error(EINVAL, std::string("Cannot change the option '") + key + "'");
    }
    BG_TRY(check_window(offset, o->size.has_value(), o->size.value_or(0)));
    reopen_window_ = {offset, o->size};
    return {};
}

void RawFormatNode::reopen_commit()
{
    if (!reopen_window_) return;
    offset_ = reopen_window_->first;
    has_size_ = reopen_window_->second.has_value();
    size_ = has_size_ ? *reopen_window_->second : static_cast<uint64_t>(filtered_->getlength()) - offset_;
    reopen_window_.reset();
}

void RawFormatNode::reopen_abort() { reopen_window_.reset(); }

// Checks [*offset, *offset+bytes) against the window and translates it to
// the file child. -ENOSPC (writes) / -EINVAL (reads) outside a sized
// window (iotest 171), -EINVAL on overflow.
int RawFormatNode::adjust_offset(int64_t *offset, int64_t bytes, bool is_write) const
{
    if (has_size_ && (static_cast<uint64_t>(*offset) > size_ ||
                      static_cast<uint64_t>(bytes) > size_ - static_cast<uint64_t>(*offset))) {
        return is_write ? -ENOSPC : -EINVAL;
    }
    if (static_cast<uint64_t>(*offset) > static_cast<uint64_t>(INT64_MAX) - offset_) return -EINVAL;
    *offset += static_cast<int64_t>(offset_);
    return 0;
}

// Probed raw: composes the first sector as it would be after writing
// [offset, offset+bytes) with qiov (nullptr: zeros) into sector0 and
// returns -EPERM if that would probe as another format. offset is a node
// offset < kProbeBufSize. REQUIRES probe_lock_ held. Yields.
int coroutine_fn RawFormatNode::check_probed_write(int64_t offset, int64_t bytes, const IOVector *qiov,
                                                   uint8_t *sector0)
{
    const int64_t sec = static_cast<int64_t>(kProbeBufSize);
    int64_t end = offset + bytes < sec ? offset + bytes : sec;
    std::memset(sector0, 0, kProbeBufSize);
    if (offset > 0 || end < sec) {
        // Partial: the rest comes from the image as it is now.
        int64_t len = do_getlength();
        if (len < 0) return static_cast<int>(len);
        int64_t n = len < sec ? len : sec;
        if (n > 0) {
            int ret = filtered_->co_pread(static_cast<int64_t>(offset_), n, sector0);
            if (ret < 0) return ret;
        }
    }
    size_t part = static_cast<size_t>(end - offset);
    if (qiov) {
        if (qiov->to_buf(0, sector0 + offset, part) != part) return -EINVAL;
    } else {
        std::memset(sector0 + offset, 0, part);
    }
    if (graph()->registry().probe_recognises(sector0)) return -EPERM;
    return 0;
}

int coroutine_fn RawFormatNode::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    int ret = adjust_offset(&offset, bytes, false);
    if (ret) return ret;
    filtered_->debug_event("read_aio");
    return filtered_->co_preadv(offset, bytes, qiov, flags);
}

int coroutine_fn RawFormatNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    int64_t file_offset = offset;
    int ret = adjust_offset(&file_offset, bytes, true);
    if (ret) return ret;
    if (!probed_ || offset >= static_cast<int64_t>(kProbeBufSize) || bytes == 0) {
        filtered_->debug_event("write_aio");
        return filtered_->co_pwritev(file_offset, bytes, qiov, flags);
    }

    CoMutexGuard guard(probe_lock_);
    uint8_t sector0[kProbeBufSize];
    ret = check_probed_write(offset, bytes, &qiov, sector0);
    if (ret < 0) return ret;
    filtered_->debug_event("write_aio");
    // Write the checked copy: the caller might change its buffer meanwhile.
    size_t head = static_cast<size_t>(
        (offset + bytes < static_cast<int64_t>(kProbeBufSize) ? offset + bytes : kProbeBufSize) - offset);
    IOVector local;
    local.add(sector0 + offset, head);
    if (static_cast<size_t>(bytes) > head) local.add_slice(qiov, head, static_cast<size_t>(bytes) - head);
    return filtered_->co_pwritev(file_offset, bytes, local, flags);
}

int coroutine_fn RawFormatNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    int64_t file_offset = offset;
    int ret = adjust_offset(&file_offset, bytes, true);
    if (ret) return ret;
    if (!probed_ || offset >= static_cast<int64_t>(kProbeBufSize) || bytes == 0) {
        return filtered_->co_pwrite_zeroes(file_offset, bytes, flags);
    }
    CoMutexGuard guard(probe_lock_);
    uint8_t sector0[kProbeBufSize];
    ret = check_probed_write(offset, bytes, nullptr, sector0);
    if (ret < 0) return ret;
    return filtered_->co_pwrite_zeroes(file_offset, bytes, flags);
}

int coroutine_fn RawFormatNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    int ret = adjust_offset(&offset, bytes, true);
    if (ret) return ret;
    return filtered_->co_pdiscard(offset, bytes);
}

// QEMU: a sized window cannot be resized; an offset-only window grows or
// shrinks with the file (the file becomes offset + new length).
int coroutine_fn RawFormatNode::do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    if (has_size_) return -ENOTSUP;
    if (offset < 0 || static_cast<uint64_t>(INT64_MAX) - static_cast<uint64_t>(offset) < offset_) return -EINVAL;
    return filtered_->co_truncate(offset + static_cast<int64_t>(offset_), exact, prealloc, flags);
}

// RAW: the generic layer asks the file child at *map.
Status coroutine_fn RawFormatNode::co_get_info(ImageInfo *info)
{
    BG_TRY_ASSIGN(*info, filtered_->node()->get_info());
    return {};
}

int coroutine_fn RawFormatNode::do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                                   int64_t *map, BlockNode **file)
{
    (void)want_zero;
    *pnum = bytes;
    *file = filtered_->node();
    *map = offset + static_cast<int64_t>(offset_);
    return kStatusRaw | kStatusOffsetValid;
}

// The window, clipped to what the file child still holds (it may have
// been changed from outside).
int64_t RawFormatNode::do_getlength()
{
    int64_t len = filtered_->getlength();
    if (len < 0) return len;
    uint64_t ulen = static_cast<uint64_t>(len);
    if (ulen < offset_) return 0;
    if (has_size_) return static_cast<int64_t>(size_ < ulen - offset_ ? size_ : ulen - offset_);
    return static_cast<int64_t>(ulen - offset_);
}

// The file child's bytes are ours only without a window. A probed raw
// node checks writes to its first sector (set_probed), which writes that
// bypass it would not be.
int RawFormatNode::do_passthrough_fd(bool write, std::string *why)
{
    if (!is_filter_) {
        *why = "the raw node has an offset or size";
        return -1;
    }
    if (write && probed_) {
        *why = "the format of node '" + node_name() + "' was probed: writes to its first sector are checked";
        return -1;
    }
    return FilterNode::do_passthrough_fd(write, why);
}

// Probed raw: sub-sector writes become read-modify-write of whole sectors
// (QEMU does the same), so a write touching sector 0 carries all of it.
void RawFormatNode::refresh_limits(BlockLimits *bl)
{
    if (probed_ && bl->request_alignment < 512) bl->request_alignment = 512;
}

// ---------------------------------------------------------------- creation

namespace {

const CreateOptionDesc kRawCreateOptions[1] = {
    {"size", CreateOptionType::kSize, "Virtual disk size", nullptr},
};

Status raw_create_image(const std::string &filename, const CreateOptions &opts)
{
    // Everything but "size" belongs to the protocol, which gets all.
    return create_image_file(filename, opts);
}

// QEMU raw_measure: the file is as large as the virtual disk either way.
Result<MeasureInfo> raw_measure(const CreateOptions &opts, BlockNode *src)
{
    MeasureInfo m;
    if (src) {
        int64_t len = src->getlength();
        if (len < 0) return errno_error(static_cast<int>(-len), "Unable to get image virtual_size");
        m.required = static_cast<uint64_t>(len);
    } else {
        auto size = opts.get_size("size", 0);
        if (!size) return size.error();
        m.required = (size.value() + 511) & ~uint64_t{511};
    }
    m.fully_allocated = m.required;
    return m;
}


std::unique_ptr<BlockNode> create_raw() { return std::make_unique<RawFormatNode>(); }
} // namespace

extern const BlockDriver kDriverRaw = {
    "raw", BlockDriverKind::kFormat,
    kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBlockStatus | kCapFlush |
        kCapPersistent | kCapPassthrough | kCapDiscardZeroes,
    "the file child's bytes as they are, optionally a window (offset, size)",
    decode_raw_options, create_raw, raw_probe,
    kRawCreateOptions, raw_create_image, raw_measure,
};

} // namespace bg
