// Image creation for the "file" protocol (QEMU raw_co_create in
// block/file-posix.c); the rest of the driver is block/file-posix.cc.
//
// file: the file is created (or truncated) under QEMU's image locks, so an
// image in use by another process is refused; btrfs NOCOW and the XFS
// extent size hint are applied while the file is empty; then it is resized
// to "size" with the preallocation mode (off, falloc, full) through a file
// node, like any other truncate.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/block-driver.h"
#include "util/log.h"

namespace bg {

extern const CreateOptionDesc kFileCreateOptions[4];
const CreateOptionDesc kFileCreateOptions[4] = {
    {"size", CreateOptionType::kSize, "Virtual disk size", nullptr},
    {"preallocation", CreateOptionType::kString, "Preallocation mode (allowed values: off, falloc, full)", nullptr},
    {"nocow", CreateOptionType::kBool, "Turn off copy-on-write (valid only on btrfs)", nullptr},
    {"extent_size_hint", CreateOptionType::kSize, "Extent size hint for the image file, 0 to disable", nullptr},
};



namespace {

#ifndef FS_NOCOW_FL
#define FS_NOCOW_FL 0x00800000
#endif

// Applies nocow / extent_size_hint to the (empty) file, as QEMU does:
// NOCOW failures are ignored; a hint that cannot be set is a warning only
// when it was asked for explicitly.
void apply_file_hints(int fd, const std::string &filename, bool nocow, bool hint_given, uint64_t hint)
{
    if (nocow) {
        int attr = 0;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }
    if (hint > UINT32_MAX) hint = UINT32_MAX;
    if (!hint) return;
#ifdef FS_IOC_FSSETXATTR
    struct fsxattr attr;
    int r = ioctl(fd, FS_IOC_FSGETXATTR, &attr);
    if (r == 0) {
        attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
        attr.fsx_extsize = static_cast<uint32_t>(hint);
        r = ioctl(fd, FS_IOC_FSSETXATTR, &attr);
    }
    if (r < 0 && hint_given) {
        log_warn("%s: Failed to set extent size hint: %s", filename.c_str(), strerror(errno));
    }
#else
    if (hint_given) log_warn("%s: Failed to set extent size hint: not supported", filename.c_str());
#endif
}

} // namespace

Status file_create_image(const std::string &filename, const CreateOptions &opts)
{
    auto size = opts.get_size("size", 0);
    if (!size) return size.error();
    auto prealloc = parse_prealloc_option(opts, false);
    if (!prealloc) return prealloc.error();
    auto nocow = opts.get_bool("nocow", false);
    if (!nocow) return nocow.error();
    auto hint = opts.get_size("extent_size_hint", 1 << 20);
    if (!hint) return hint.error();
    // The file is made a whole number of 512-byte sectors long, as QEMU's
    // file protocol does for a size given as a create option; blockdev-create
    // (block/create-job.cc) passes the internal key "x-exact-size" (which
    // qemu-img's -o refuses as unknown), since QEMU keeps its size as is.
    auto exact = opts.get_bool("x-exact-size", false);
    if (!exact) return exact.error();
    // Too large: qemu-img refuses before making the file; blockdev-create
    // (as QEMU's) empties the file first, then fails to resize it.
    const bool too_large = size.value() > static_cast<uint64_t>(kMaxLength);
    if (too_large && !exact.value()) return make_error(EFBIG, "%s: Image size too large", filename.c_str());
    const int64_t file_size = static_cast<int64_t>(exact.value() ? size.value() : (size.value() + 511) / 512 * 512);

    // Create the file if missing; it is emptied only once the locks say
    // nobody else uses it.
    int fd = ::open(filename.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        return make_error(e, "Could not create '%s': %s", filename.c_str(), strerror(e));
    }
    ::close(fd);

    BlockGraph graph;
    auto node = graph.add_node_json({{"driver", "file"}, {"filename", filename}});
    if (!node) return node.error();
    // QEMU's raw_co_create: WRITE and RESIZE, sharing all but RESIZE.
    auto blk = BlockBackend::create(node.value(), kPermWrite | kPermResize, kPermAll & ~kPermResize, "qemu-img");
    if (!blk) return blk.error();
    BlockBackend *b = blk.value().get();
    int r = run_in_coroutine([&] { return b->co_truncate(0, true, PreallocMode::kOff); });
    if (r < 0) return make_error(-r, "Could not resize file: %s", strerror(-r));
    // Hints go on the empty file, through a descriptor of our own.
    if (nocow.value() || hint.value()) {
        int hfd = ::open(filename.c_str(), O_RDWR | O_CLOEXEC);
        if (hfd >= 0) {
            apply_file_hints(hfd, filename, nocow.value(), opts.has("extent_size_hint"), hint.value());
            ::close(hfd);
        }
    }
    if (too_large) {
        // What ftruncate(2) says: beyond the largest file, or a negative
        // length (a size of 2^63 and more).
        const int e = size.value() > static_cast<uint64_t>(INT64_MAX) ? EINVAL : EFBIG;
        return make_error(e, "Could not resize file: %s", strerror(e));
    }
    r = run_in_coroutine(
        [&] { return b->co_truncate(file_size, true, prealloc.value()); });
    if (r < 0) return make_error(-r, "Could not resize file: %s", strerror(-r));
    r = run_in_coroutine([&] { return b->co_flush(); });
    if (r < 0) return make_error(-r, "Could not flush '%s': %s", filename.c_str(), strerror(-r));
    return {};
}

} // namespace bg
