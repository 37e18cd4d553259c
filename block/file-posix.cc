// The `file` protocol driver: a regular file on a POSIX host (QEMU's
// block/file-posix.c, regular files only; block devices are host_device's).
//
// I/O goes through the calling thread's AioContext I/O backend (io_uring or
// the thread pool, chosen by aio=), looked up per request: requests may come
// from coroutines of several threads, each with its own context and ring.
// cache.direct=on opens with O_DIRECT; request and memory alignment are
// probed at open, and callers whose buffers are not memory-aligned are served
// through a bounce buffer.
//
// Image locking follows QEMU's OFD byte-range scheme so that blockgraph and
// QEMU processes see each other's permissions (QEMU's raw_apply_lock_bytes):
//   byte 100+i  read-locked while this node holds permission bit i;
//   byte 200+i  read-locked while this node does not share permission bit i.
// The locks live on a separate O_RDONLY descriptor (so read-only nodes can
// lock too) and follow BlockNode's permission transaction: check_perm takes
// the union of the old and new locks and tests for conflicting openers;
// set_perm drops what the new permissions do not need; abort_perm returns to
// the old set.
//
// Threading model: open/close and the permission hooks run in the graph's
// thread. The I/O hooks may run concurrently from several threads; the state
// they share (capability flags, the flush error) is atomic.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <string>

#include "block/block-driver.h"
#include "qapi/option-reader.h"
#include "util/aio.h"
#include "util/io.h"
#include "util/iov.h"
#include "util/log.h"

namespace bg {

// Image creation, in block/file-create.cc.
extern const CreateOptionDesc kFileCreateOptions[4];
Status file_create_image(const std::string &filename, const CreateOptions &opts);

namespace {

// QEMU's RAW_LOCK_PERM_BASE / RAW_LOCK_SHARED_BASE. Byte 0 belongs to libvirt.
constexpr int kLockPermBase = 100;
constexpr int kLockSharedBase = 200;

// Largest bounce buffer for a misaligned O_DIRECT request, in bytes; longer
// requests are bounced in pieces of this size.
constexpr size_t kBounceChunk = 4 << 20;
// Zero buffer for preallocation=full, in bytes.
constexpr size_t kZeroChunk = 1 << 20;

size_t host_page_size()
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? static_cast<size_t>(ps) : 4096;
}

// fallocate's "not supported" errors, folded into -ENOTSUP (QEMU's
// translate_err).
int translate_fallocate_err(int ret)
{
    if (ret == -ENODEV || ret == -ENOSYS || ret == -EOPNOTSUPP || ret == -ENOTTY) return -ENOTSUP;
    return ret;
}

// Whether a read of len bytes into buf at offset 0 passes O_DIRECT's
// alignment rules (QEMU's raw_is_io_aligned): only EINVAL means misaligned.
bool io_is_aligned(int fd, void *buf, size_t len)
{
    ssize_t r = pread(fd, buf, len, 0);
    return r >= 0 || errno != EINVAL;
}

bool ofd_locks_available(int fd)
{
    struct flock fl = {};
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 0;
    fl.l_type = F_WRLCK;
    return fcntl(fd, F_OFD_GETLK, &fl) == 0;
}

class FileNode final : public BlockNode {
  public:
    FileNode() = default;
    ~FileNode() override { close_fds(); }

    std::string filename() const override { return filename_; }

    // st_blocks * 512, or negative errno.
    int64_t allocated_file_size() override
    {
        struct stat st;
        if (fstat(fd_, &st) < 0) return -errno;
        return static_cast<int64_t>(st.st_blocks) * 512;
    }

  protected:
    Status open(const BlockdevOptions &opts) override;
    void close() override { close_fds(); }

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_flush_to_disk() override;
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override;
    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override;
    int64_t do_getlength() override;
    void refresh_limits(BlockLimits *bl) override;
    int do_passthrough_fd(bool write, std::string *why) override;

    Status check_perm(BlockPerm perm, BlockPerm shared) override;
    void set_perm(BlockPerm perm, BlockPerm shared) override;
    void abort_perm() override;

    // Reopen: a change of read-only or cache.direct opens the file anew
    // with the new flags (prepare; with O_DIRECT its alignment is probed
    // on the new descriptor) and swaps the descriptors (commit). The lock
    // descriptor stays: the permission refresh of the reopen takes or
    // drops the lock bytes of the new permissions on it.
    Status reopen_prepare(const BlockdevOptions &opts) override;
    void reopen_commit() override;
    void reopen_abort() override;

  private:
    IoBackend *io() const
    {
        AioContext *ctx = AioContext::current();
        assert(ctx);
        return ctx->io(aio_kind_);
    }
    void close_fds();
    Status probe_alignment();
    void choose_inline_io();
    bool iov_aligned(const IOVector &qiov) const;
    int coroutine_fn co_bounce_preadv(int64_t offset, int64_t bytes, IOVector &qiov);
    int coroutine_fn co_bounce_pwritev(int64_t offset, int64_t bytes, IOVector &qiov);
    int coroutine_fn co_fallocate(int mode, int64_t offset, int64_t bytes);
    int coroutine_fn co_write_zeroes_nounmap(int64_t offset, int64_t bytes);
    int coroutine_fn co_write_zero_buffers(int64_t from, int64_t to);

    // Locks.
    int lock_byte(int off, bool lock);
    int test_byte(int off);
    int apply_lock_bytes(BlockPerm perm_bits, BlockPerm unshared_bits, bool unlock, Error *err);
    Status check_lock_bytes(BlockPerm perm, BlockPerm shared);

    std::string filename_;
    int fd_ = -1;
    int open_flags_ = 0;
    int reopen_fd_ = -1;        // prepared by reopen_prepare, -1 if none
    int reopen_flags_ = 0;
    uint32_t reopen_req_align_ = 1, reopen_buf_align_ = 1;   // for reopen_flags_
    bool direct_ = false;
    // Page-cache I/O done in the loop thread when nothing else is in flight
    // (choose_inline_io): writes on local filesystems, reads on tmpfs.
    bool inline_writes_ = false;
    bool inline_reads_ = false;
    AioBackendKind aio_kind_ = AioBackendKind::kIoUring;

    // O_DIRECT alignment (bytes, powers of 2); 1 without O_DIRECT.
    uint32_t request_alignment_ = 1;
    uint32_t buf_align_ = 1;

    // Capabilities, cleared the first time the kernel says "not supported".
    std::atomic<bool> has_discard_{true};
    std::atomic<bool> has_write_zeroes_{true};
    std::atomic<bool> has_fallocate_{true};
    // errno of a failed fdatasync (page cache state unknown): every later
    // flush fails with it. 0 = none.
    std::atomic<int> page_cache_inconsistent_{0};

    // Locking.
    bool use_lock_ = false;
    int lock_fd_ = -1;
    int setlk_cmd_ = F_OFD_SETLK;
    int getlk_cmd_ = F_OFD_GETLK;
    BlockPerm perm_ = 0;                   // committed permissions
    BlockPerm shared_perm_ = kPermAll;     // committed shared permissions
    BlockPerm locked_perm_ = 0;            // bits i with byte 100+i locked
    BlockPerm locked_shared_perm_ = 0;     // bits i with byte 200+i locked (i not shared)
};

void FileNode::close_fds()
{
    reopen_abort();
    if (lock_fd_ >= 0) ::close(lock_fd_);
    if (fd_ >= 0) ::close(fd_);
    lock_fd_ = fd_ = -1;
    locked_perm_ = locked_shared_perm_ = 0;
}

namespace {

enum class FileAio { kThreads, kNative, kIoUring };

constexpr EnumName<FileAio> kAioNames[] = {
    {"threads", FileAio::kThreads},
    {"native", FileAio::kNative},
    {"io_uring", FileAio::kIoUring},
};

constexpr EnumName<OnOffAuto> kLockingNames[] = {
    {"on", OnOffAuto::kOn},
    {"off", OnOffAuto::kOff},
    {"auto", OnOffAuto::kAuto},
};

// The file driver's options (QEMU's BlockdevOptionsFile).
struct FileOptions : DriverOptionsOf<FileOptions> {
    std::string filename;                       // required; "file:" prefix stripped
    // QEMU's default is threads; ours is io_uring (falls back to threads with
    // a warning when a ring cannot be set up).
    FileAio aio = FileAio::kIoUring;
    OnOffAuto locking = OnOffAuto::kAuto;
    uint32_t aio_max_batch = 0;                 // "aio-max-batch"; 0 = no limit
    bool drop_cache = true;                     // "drop-cache"

    void encode(nlohmann::json &j) const override
    {
        // Keep a literal "file:" at the start of the name: the decoder
        // strips one prefix.
        j["filename"] = filename.compare(0, 5, "file:") == 0 ? "file:" + filename : filename;
        if (aio != FileAio::kIoUring) j["aio"] = enum_name(kAioNames, aio);
        if (locking != OnOffAuto::kAuto) j["locking"] = enum_name(kLockingNames, locking);
        if (aio_max_batch) j["aio-max-batch"] = aio_max_batch;
        if (!drop_cache) j["drop-cache"] = false;
    }
};

Result<std::unique_ptr<DriverOptions>> decode_file_options(OptionReader &r, const BlockdevOptions &generic)
{
    auto f = std::make_unique<FileOptions>();
    BG_TRY(r.require("filename", &f->filename));
    if (f->filename.compare(0, 5, "file:") == 0) f->filename.erase(0, 5);
    if (f->filename.empty()) return r.error("filename", "must not be empty");
    BG_TRY(r.get_enum("aio", &f->aio, kAioNames));
    BG_TRY(r.get_enum("locking", &f->locking, kLockingNames));
    BG_TRY(r.get_uint("aio-max-batch", &f->aio_max_batch, INT_MAX));
    BG_TRY(r.get("drop-cache", &f->drop_cache));
    if (f->aio == FileAio::kNative && !generic.cache_direct) {
        return r.error("", "aio=native was specified, but it requires cache.direct=on, which was not specified.");
    }
    return std::unique_ptr<DriverOptions>(std::move(f));
}

} // namespace

Status FileNode::open(const BlockdevOptions &opts)
{
    const auto *fo = opts.as<FileOptions>();
    if (!fo) return node_error(EINVAL, "options are not for the 'file' driver");
    filename_ = fo->filename;
    if (filename_.empty()) return node_error(EINVAL, "Parameter 'filename' is missing");

    direct_ = opts.cache_direct;
    switch (fo->aio) {
    case FileAio::kThreads:
        aio_kind_ = AioBackendKind::kThreads;
        break;
    case FileAio::kNative:
        // Linux AIO is served by io_uring, but keeps QEMU's precondition.
        if (!direct_)
            return node_error(EINVAL,
                              "aio=native was specified, but it requires cache.direct=on, which was not specified.");
        aio_kind_ = AioBackendKind::kIoUring;
        break;
    case FileAio::kIoUring:
        aio_kind_ = AioBackendKind::kIoUring;
        break;
    }

    bool ro = read_only_ || opts.read_only;
    open_flags_ = (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct_ ? O_DIRECT : 0);
    fd_ = ::open(filename_.c_str(), open_flags_);
    if (fd_ < 0 && !ro && opts.auto_read_only && (errno == EACCES || errno == EPERM || errno == EROFS)) {
        // auto-read-only: settle for read-only access.
        ro = true;
        open_flags_ = (open_flags_ & ~O_ACCMODE) | O_RDONLY;
        fd_ = ::open(filename_.c_str(), open_flags_);
    }
    if (fd_ < 0) {
        int e = errno;
        Error err = node_error(e == EROFS ? EACCES : e,
                               "Could not open '" + filename_ + "': " + strerror(e));
        return err;
    }
    read_only_ = ro;

    struct stat st;
    if (fstat(fd_, &st) < 0) {
        int e = errno;
        close_fds();
        return node_error(e, std::string("Could not stat file: ") + strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close_fds();
        return node_error(EINVAL, "'file' driver requires '" + filename_ + "' to be a regular file");
    }

    choose_inline_io();
    if (direct_) {
        Status s = probe_alignment();
        if (!s) {
            close_fds();
            return s;
        }
    }

    switch (fo->locking) {
    case OnOffAuto::kOff:
        use_lock_ = false;
        break;
    case OnOffAuto::kOn:
    case OnOffAuto::kAuto:
        use_lock_ = true;
        break;
    }
    if (use_lock_) {
        lock_fd_ = ::open(filename_.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
        struct stat lst;
        if (lock_fd_ < 0 || fstat(lock_fd_, &lst) < 0 || lst.st_dev != st.st_dev || lst.st_ino != st.st_ino) {
            int e = lock_fd_ < 0 ? errno : ESTALE;
            close_fds();
            return node_error(e, "Could not open '" + filename_ + "' for locking: " + strerror(e));
        }
        if (!ofd_locks_available(lock_fd_)) {
            if (fo->locking == OnOffAuto::kAuto) {
                use_lock_ = false;
                ::close(lock_fd_);
                lock_fd_ = -1;
            } else {
                log_warn("File lock requested but OFD locking syscall is unavailable, falling back to POSIX "
                         "file locks; due to the implementation, locks can be lost unexpectedly");
                setlk_cmd_ = F_SETLK;
                getlk_cmd_ = F_GETLK;
            }
        }
    }
    perm_ = 0;
    shared_perm_ = kPermAll;

    supports_fua_ = false;
    // We never write zero buffers ourselves, so NO_FALLBACK is honoured too.
    supported_zero_flags_ = kReqMayUnmap | kReqNoFallback;
    return {};
}

// Neither ext4, xfs, btrfs nor tmpfs take a buffered write without blocking
// (RWF_NOWAIT: EOPNOTSUPP), nor tmpfs a read, so io_uring hands each such
// request to a kernel worker thread, and its completion wakes the loop thread
// again: two thread wake-ups, often across CPUs, for a copy of microseconds.
// When nothing else is in flight (low queue depth) the loop thread does the
// copy itself. Only on these local filesystems, whose page-cache writes block
// at worst briefly (a partial page read, dirty throttling); a read on a disk
// filesystem stays with io_uring, which serves page-cache hits inline and
// would otherwise block the loop on a miss. BLOCKGRAPH_INLINE_IO=0 turns it
// off (for measurements, docs/performance.md).
void FileNode::choose_inline_io()
{
    const char *env = getenv("BLOCKGRAPH_INLINE_IO");
    struct statfs sfs;
    if (direct_ || (env && strcmp(env, "0") == 0) || fstatfs(fd_, &sfs) != 0) return;
    switch (static_cast<unsigned long>(sfs.f_type)) {
    case TMPFS_MAGIC:
        inline_reads_ = true;
        [[fallthrough]];
    case EXT4_SUPER_MAGIC:
    case XFS_SUPER_MAGIC:
    case BTRFS_SUPER_MAGIC:
        inline_writes_ = true;
        break;
    default:
        break;
    }
}

// QEMU's raw_probe_alignment for O_DIRECT: the logical block size, else trial
// reads; fallback max(4096, page size).
Status FileNode::probe_alignment()
{
    struct statfs sfs;
    if (fstatfs(fd_, &sfs) == 0 && sfs.f_type == NFS_SUPER_MAGIC) {
        // NFS does byte-aligned O_DIRECT.
        request_alignment_ = buf_align_ = 1;
        return {};
    }
    const size_t max_align = std::max<size_t>(4096, host_page_size());
    static const size_t kAlignments[] = {1, 512, 1024, 2048, 4096};
    uint32_t req = 0, mem = 0;

    unsigned int sector_size = 0;
    if (ioctl(fd_, BLKSSZGET, &sector_size) >= 0 && sector_size) req = sector_size;

    if (!req) {
        AlignedBuf buf = aligned_alloc_buf(max_align, max_align);
        for (size_t a : kAlignments) {
            if (io_is_aligned(fd_, buf.get(), a)) {
                req = static_cast<uint32_t>(a != 1 ? a : max_align);
                break;
            }
        }
    }
    if (req) {
        AlignedBuf buf = aligned_alloc_buf(max_align, 2 * max_align);
        for (size_t a : kAlignments) {
            if (io_is_aligned(fd_, buf.get() + a, max_align)) {
                mem = static_cast<uint32_t>(a != 1 ? a : req);
                break;
            }
        }
    }
    if (!req || !mem) return node_error(EINVAL, "Could not find working O_DIRECT alignment (try cache.direct=off)");
    request_alignment_ = req;
    buf_align_ = mem;
    log_debug("file '%s': O_DIRECT request alignment %u, memory alignment %u", filename_.c_str(), req, mem);
    return {};
}

void FileNode::refresh_limits(BlockLimits *bl)
{
    bl->request_alignment = request_alignment_;
    bl->min_mem_alignment = buf_align_;
    bl->opt_mem_alignment = std::max<uint32_t>(buf_align_, static_cast<uint32_t>(host_page_size()));
}

int64_t FileNode::do_getlength()
{
    struct stat st;
    if (fstat(fd_, &st) < 0) return -errno;
    return st.st_size;
}

// The file itself, when it is used through the host page cache (an
// O_DIRECT descriptor would make the kernel's accesses bypass the cache our
// own requests go through, and impose alignment).
int FileNode::do_passthrough_fd(bool write, std::string *why)
{
    if (fd_ < 0) {
        *why = "node '" + node_name() + "' is not open";
        return -1;
    }
    if (direct_) {
        *why = "cache.direct=on";
        return -1;
    }
    if (write && (open_flags_ & O_ACCMODE) == O_RDONLY) {
        *why = "node '" + node_name() + "' is open read-only";
        return -1;
    }
    return fd_;
}

// ---------------------------------------------------------------- read/write

// True if O_DIRECT can take the vector as it is: every entry's address is
// memory-aligned and every entry's length a multiple of the request alignment.
bool FileNode::iov_aligned(const IOVector &qiov) const
{
    if (!direct_ || (buf_align_ <= 1 && request_alignment_ <= 1)) return true;
    const size_t len_align = std::max(buf_align_, request_alignment_);
    const struct iovec *v = qiov.iov();
    for (int i = 0; i < qiov.niov(); i++) {
        if (reinterpret_cast<uintptr_t>(v[i].iov_base) % buf_align_) return false;
        if (v[i].iov_len % len_align) return false;
    }
    return true;
}

int coroutine_fn FileNode::co_bounce_preadv(int64_t offset, int64_t bytes, IOVector &qiov)
{
    const size_t chunk = std::min<size_t>(static_cast<size_t>(bytes), kBounceChunk);
    AlignedBuf buf = aligned_alloc_buf(std::max<size_t>(buf_align_, host_page_size()), chunk);
    IoBackend *be = io();
    for (int64_t done = 0; done < bytes;) {
        size_t n = std::min<size_t>(chunk, static_cast<size_t>(bytes - done));
        struct iovec v = {buf.get(), n};
        int64_t r = be->co_preadv(fd_, &v, 1, offset + done);
        if (r < 0) return static_cast<int>(r);
        qiov.from_buf(static_cast<size_t>(done), buf.get(), n);
        done += static_cast<int64_t>(n);
    }
    return 0;
}

int coroutine_fn FileNode::co_bounce_pwritev(int64_t offset, int64_t bytes, IOVector &qiov)
{
    const size_t chunk = std::min<size_t>(static_cast<size_t>(bytes), kBounceChunk);
    AlignedBuf buf = aligned_alloc_buf(std::max<size_t>(buf_align_, host_page_size()), chunk);
    IoBackend *be = io();
    for (int64_t done = 0; done < bytes;) {
        size_t n = std::min<size_t>(chunk, static_cast<size_t>(bytes - done));
        qiov.to_buf(static_cast<size_t>(done), buf.get(), n);
        struct iovec v = {buf.get(), n};
        int64_t r = be->co_pwritev(fd_, &v, 1, offset + done);
        if (r < 0) return static_cast<int>(r);
        done += static_cast<int64_t>(n);
    }
    return 0;
}

int coroutine_fn FileNode::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)flags;
    assert(static_cast<int64_t>(qiov.size()) == bytes);
    if (bytes == 0) return 0;
    if (!iov_aligned(qiov)) return co_bounce_preadv(offset, bytes, qiov);
    int64_t r = io()->co_preadv(fd_, qiov.iov(), qiov.niov(), offset, inline_reads_);
    return r < 0 ? static_cast<int>(r) : 0;
}

int coroutine_fn FileNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)flags;   // no FUA: supports_fua_ is false, the generic layer flushes
    assert(static_cast<int64_t>(qiov.size()) == bytes);
    if (bytes == 0) return 0;
    if (!iov_aligned(qiov)) return co_bounce_pwritev(offset, bytes, qiov);
    int64_t r = io()->co_pwritev(fd_, qiov.iov(), qiov.niov(), offset, inline_writes_);
    return r < 0 ? static_cast<int>(r) : 0;
}

// ---------------------------------------------------------------- zeroes, discard

int coroutine_fn FileNode::co_fallocate(int mode, int64_t offset, int64_t bytes)
{
    return translate_fallocate_err(io()->co_fallocate(fd_, mode, offset, bytes));
}

// QEMU's handle_aiocb_write_zeroes for regular files.
int coroutine_fn FileNode::co_write_zeroes_nounmap(int64_t offset, int64_t bytes)
{
    if (has_write_zeroes_.load(std::memory_order_relaxed)) {
        int r = co_fallocate(FALLOC_FL_ZERO_RANGE, offset, bytes);
        if (r == -ENOTSUP) {
            has_write_zeroes_.store(false, std::memory_order_relaxed);
        } else if (r != -EINVAL) {
            // Some file systems refuse unaligned ranges with EINVAL although
            // fallocate(2) allows them: try the other ways then.
            return r;
        }
    }
    if (has_discard_.load(std::memory_order_relaxed) && has_fallocate_.load(std::memory_order_relaxed)) {
        int r = co_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
        if (r == 0) {
            // Allocate again: write-zeroes without MAY_UNMAP keeps the space.
            r = co_fallocate(0, offset, bytes);
            if (r != -ENOTSUP) return r;
            has_fallocate_.store(false, std::memory_order_relaxed);
        } else if (r == -EINVAL) {
            log_warn("file '%s': the file system is misbehaving: fallocate(FALLOC_FL_PUNCH_HOLE) returned EINVAL",
                     filename_.c_str());
        } else if (r != -ENOTSUP) {
            return r;
        } else {
            has_discard_.store(false, std::memory_order_relaxed);
        }
    }
    if (has_fallocate_.load(std::memory_order_relaxed) && offset >= do_getlength()) {
        int r = co_fallocate(0, offset, bytes);
        if (r != -ENOTSUP) return r;
        has_fallocate_.store(false, std::memory_order_relaxed);
    }
    return -ENOTSUP;
}

int coroutine_fn FileNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    if (bytes == 0) return 0;
    if (flags & kReqMayUnmap) {
        // Zero and unmap in one step; the hole reads as zeros.
        int r = co_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
        if (r != -ENOTSUP && r != -EINVAL && r != -EBUSY) return r;
    }
    return co_write_zeroes_nounmap(offset, bytes);
}

int coroutine_fn FileNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    if (!has_discard_.load(std::memory_order_relaxed)) return -ENOTSUP;
    if (bytes == 0) return 0;
    int r = co_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
    if (r == -ENOTSUP) has_discard_.store(false, std::memory_order_relaxed);
    return r;
}

// ---------------------------------------------------------------- flush

int coroutine_fn FileNode::do_co_flush_to_disk()
{
    int poisoned = page_cache_inconsistent_.load(std::memory_order_acquire);
    if (poisoned) return -poisoned;
    int r = io()->co_fsync(fd_, true);
    if (r < 0 && !direct_) {
        // After a failed fdatasync some pages may be marked clean although
        // they never reached the disk; a later fdatasync would succeed
        // without writing them. Fail every later flush instead (QEMU).
        // O_DIRECT bypasses the page cache, so it is not affected.
        int expected = 0;
        page_cache_inconsistent_.compare_exchange_strong(expected, -r, std::memory_order_acq_rel);
    }
    return r;
}

// ---------------------------------------------------------------- truncate

// Writes zeros over [from, to) of the file, whose length is already at least
// to. With O_DIRECT the range is widened to the request alignment; the head
// block is read back and rewritten (it may hold data before from), the tail
// past to is cut off by the caller's ftruncate.
int coroutine_fn FileNode::co_write_zero_buffers(int64_t from, int64_t to)
{
    const int64_t align = request_alignment_;
    const size_t chunk = std::max<size_t>(kZeroChunk, static_cast<size_t>(align));
    AlignedBuf buf = aligned_alloc_buf(std::max<size_t>(buf_align_, host_page_size()), chunk);
    IoBackend *be = io();
    int64_t pos = from / align * align;
    if (pos < from) {
        struct iovec v = {buf.get(), static_cast<size_t>(align)};
        int64_t r = be->co_preadv(fd_, &v, 1, pos);
        if (r < 0) return static_cast<int>(r);
        std::memset(buf.get() + (from - pos), 0, static_cast<size_t>(align - (from - pos)));
        r = be->co_pwritev(fd_, &v, 1, pos);
        if (r < 0) return static_cast<int>(r);
        pos += align;
    }
    std::memset(buf.get(), 0, chunk);
    while (pos < to) {
        int64_t n = std::min<int64_t>(static_cast<int64_t>(chunk), to - pos);
        n = (n + align - 1) / align * align;
        struct iovec v = {buf.get(), static_cast<size_t>(n)};
        int64_t r = be->co_pwritev(fd_, &v, 1, pos);
        if (r < 0) return static_cast<int>(r);
        pos += n;
    }
    return 0;
}

int coroutine_fn FileNode::do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    (void)exact;   // regular files are always resized exactly
    (void)flags;   // a grown regular file reads as zeros: ZERO_WRITE holds anyway
    struct stat st;
    if (fstat(fd_, &st) < 0) return -errno;
    const int64_t cur = st.st_size;
    // Like QEMU's file-posix: a file has no metadata to preallocate, so
    // "Unsupported preallocation mode: metadata" (formats pass off instead).
    if (prealloc == PreallocMode::kMetadata) return -ENOTSUP;
    if (cur > offset && prealloc != PreallocMode::kOff) return -ENOTSUP;      // "Cannot use preallocation for shrinking files"

    int r = 0;
    switch (prealloc) {
    case PreallocMode::kMetadata:   // refused above
    case PreallocMode::kOff:
        return ftruncate(fd_, offset) < 0 ? -errno : 0;
    case PreallocMode::kFalloc:
        if (offset == cur) return 0;
        // posix_fallocate(): fallocate(2), or writing zeros where that is
        // not supported.
        r = co_fallocate(0, cur, offset - cur);
        if (r == -ENOTSUP) {
            if (ftruncate(fd_, offset) < 0) r = -errno;
            else r = co_write_zero_buffers(cur, offset);
            if (r == 0 && ftruncate(fd_, offset) < 0) r = -errno;
        }
        break;
    case PreallocMode::kFull:
        // Setting the final size first lets the file system allocate better.
        if (ftruncate(fd_, offset) < 0) return -errno;
        r = co_write_zero_buffers(cur, offset);
        if (r == 0 && ftruncate(fd_, offset) < 0) r = -errno;   // O_DIRECT may have written past offset
        if (r == 0) r = io()->co_fsync(fd_, false);
        break;
    }
    if (r < 0 && ftruncate(fd_, cur) < 0)
        log_error("file '%s': failed to restore old file length: %s", filename_.c_str(), strerror(errno));
    return r;
}

// ---------------------------------------------------------------- block status

int coroutine_fn FileNode::do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                              int64_t *map, BlockNode **file)
{
    *map = offset;
    *file = this;
    if (!want_zero) {
        *pnum = bytes;
        return kStatusData | kStatusOffsetValid;
    }

    // QEMU's find_allocation: where does the extent containing offset end?
    int ret;
    int64_t data = -1, hole = -1;
    off_t d = lseek(fd_, offset, SEEK_DATA);
    if (d < 0) {
        ret = -errno;                      // ENXIO: only a hole until EOF
    } else if (d < offset) {
        ret = -EIO;
    } else if (d > offset) {
        ret = 0;                           // in a hole; data follows at d
        hole = offset;
        data = d;
    } else {
        off_t h = lseek(fd_, offset, SEEK_HOLE);
        if (h < 0) ret = -errno;
        else if (h < offset) ret = -EIO;
        else if (h > offset) {
            ret = 0;                       // in data; a hole (maybe EOF) follows at h
            data = offset;
            hole = h;
        } else {
            ret = -EBUSY;                  // data and hole at once: changed under us
        }
    }

    if (ret == -ENXIO) {
        *pnum = bytes;                     // trailing hole
        ret = kStatusZero;
    } else if (ret < 0) {
        *pnum = bytes;                     // no information: pretend there are no holes
        ret = kStatusData;
    } else if (data == offset) {
        // Partial block at EOF: round up, blocks are never split.
        int64_t n = hole - offset;
        n = (n + request_alignment_ - 1) / request_alignment_ * request_alignment_;
        *pnum = std::min(n, bytes);
        ret = kStatusData;
    } else {
        *pnum = std::min(data - offset, bytes);
        ret = kStatusZero;
    }
    return ret | kStatusOffsetValid;
}

// ---------------------------------------------------------------- locking

// Read-locks (lock) or unlocks one byte on the lock descriptor. 0 or -errno.
int FileNode::lock_byte(int off, bool lock)
{
    struct flock fl = {};
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    fl.l_type = lock ? F_RDLCK : F_UNLCK;
    fl.l_pid = 0;
    return fcntl(lock_fd_, setlk_cmd_, &fl) == -1 ? -errno : 0;
}

// 0 if nobody else holds a lock on byte off, -EAGAIN if someone does, or -errno.
int FileNode::test_byte(int off)
{
    struct flock fl = {};
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    fl.l_type = F_WRLCK;   // conflicts with any read lock of another description
    fl.l_pid = 0;
    if (fcntl(lock_fd_, getlk_cmd_, &fl) == -1) return -errno;
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

// Locks bytes 100+i for the bits of perm_bits and 200+i for those of
// unshared_bits that are not locked yet; with unlock, also releases the
// locked bytes outside these sets (QEMU's raw_apply_lock_bytes).
int FileNode::apply_lock_bytes(BlockPerm perm_bits, BlockPerm unshared_bits, bool unlock, Error *err)
{
    for (int base : {kLockPermBase, kLockSharedBase}) {
        BlockPerm want = base == kLockPermBase ? perm_bits : unshared_bits;
        BlockPerm &locked = base == kLockPermBase ? locked_perm_ : locked_shared_perm_;
        for (int i = 0; i < kPermCount; i++) {
            BlockPerm bit = BlockPerm{1} << i;
            if ((want & bit) && !(locked & bit)) {
                int r = lock_byte(base + i, true);
                if (r < 0) {
                    if (err) {
                        *err = (r == -EAGAIN || r == -EACCES)
                                   ? make_error(-r, "Failed to lock byte %d", base + i)
                                   : make_error(-r, "Failed to lock byte %d: %s", base + i, strerror(-r));
                    }
                    return r;
                }
                locked |= bit;
            } else if (unlock && (locked & bit) && !(want & bit)) {
                int r = lock_byte(base + i, false);
                if (r < 0) {
                    if (err) *err = make_error(-r, "Failed to unlock byte %d: %s", base + i, strerror(-r));
                    return r;
                }
                locked &= ~bit;
            }
        }
    }
    return 0;
}

// QEMU's raw_check_lock_bytes: to get permission i nobody may refuse to share
// it (byte 200+i); to refuse sharing i nobody may hold it (byte 100+i).
Status FileNode::check_lock_bytes(BlockPerm perm, BlockPerm shared)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < kPermCount; i++) {
            BlockPerm bit = BlockPerm{1} << i;
            bool need = pass == 0 ? (perm & bit) != 0 : (shared & bit) == 0;
            if (!need) continue;
            int r = test_byte((pass == 0 ? kLockSharedBase : kLockPermBase) + i);
            if (r == 0) continue;
            std::string msg = std::string(pass == 0 ? "Failed to get \"" : "Failed to get shared \"") +
                              perm_name(i) + "\" lock";
            if (r != -EAGAIN && r != -EACCES) msg += std::string(": ") + strerror(-r);
            return Error{-r, msg};
        }
    }
    return {};
}

Status FileNode::check_perm(BlockPerm perm, BlockPerm shared)
{
    if (!use_lock_) return {};
    if ((perm_ | perm) == perm_ && (shared_perm_ & shared) == shared_perm_) {
        // Only releasing locks: cannot conflict; set_perm does it.
        return {};
    }
    Error err;
    int r = apply_lock_bytes(perm_ | perm, ~shared_perm_ | ~shared, false, &err);
    Status st;
    if (r < 0) {
        st = err;
    } else {
        st = check_lock_bytes(perm, shared);
    }
    if (st) return st;
    // Back to the old set of locks.
    apply_lock_bytes(perm_, ~shared_perm_, true, nullptr);
    return Error{st.err(), st.msg() + ": Is another process using the image [" + filename_ + "]?"};
}

void FileNode::set_perm(BlockPerm perm, BlockPerm shared)
{
    if (use_lock_) {
        Error err;
        if (apply_lock_bytes(perm, ~shared, true, &err) < 0)
            log_warn("file '%s': %s", filename_.c_str(), err.msg.c_str());
    }
    perm_ = perm;
    shared_perm_ = shared;
}

void FileNode::abort_perm()
{
    if (!use_lock_) return;
    Error err;
    if (apply_lock_bytes(perm_, ~shared_perm_, true, &err) < 0)
        log_warn("file '%s': %s", filename_.c_str(), err.msg.c_str());
}

Status FileNode::reopen_prepare(const BlockdevOptions &opts)
{
    if (auto k = changed_driver_option(opts)) return node_error(EINVAL, "Cannot change the option '" + *k + "'");
    reopen_abort();
    const int flags = (open_flags_ & ~(O_ACCMODE | O_DIRECT)) | (opts.read_only ? O_RDONLY : O_RDWR) |
                      (opts.cache_direct ? O_DIRECT : 0);
    if (flags == open_flags_) return {};
    int fd = ::open(filename_.c_str(), flags);
    if (fd < 0) {
        int e = errno;
        return node_error(e == EROFS ? EACCES : e, "Could not reopen '" + filename_ + "': " + strerror(e));
    }
    // The same file, not one renamed into its place since the open.
    struct stat now, old;
    if (fstat(fd, &now) < 0 || fstat(fd_, &old) < 0 || now.st_dev != old.st_dev || now.st_ino != old.st_ino) {
        ::close(fd);
        return node_error(ESTALE, "Could not reopen '" + filename_ + "': the file was replaced");
    }
    reopen_req_align_ = reopen_buf_align_ = 1;
    if (flags & O_DIRECT) {
        // probe_alignment() works on fd_ and sets the alignments: let it
        // probe the new descriptor, then put the node's own values back.
        const int cur_fd = fd_;
        const uint32_t cur_req = request_alignment_, cur_buf = buf_align_;
        fd_ = fd;
        Status s = probe_alignment();
        reopen_req_align_ = request_alignment_;
        reopen_buf_align_ = buf_align_;
        fd_ = cur_fd;
        request_alignment_ = cur_req;
        buf_align_ = cur_buf;
        if (!s.ok()) {
            ::close(fd);
            return s;
        }
    }
    reopen_fd_ = fd;
    reopen_flags_ = flags;
    return {};
}

void FileNode::reopen_commit()
{
    if (reopen_fd_ < 0) return;
    ::close(fd_);
    fd_ = reopen_fd_;
    open_flags_ = reopen_flags_;
    reopen_fd_ = -1;
    direct_ = (open_flags_ & O_DIRECT) != 0;
    request_alignment_ = reopen_req_align_;
    buf_align_ = reopen_buf_align_;
    inline_reads_ = inline_writes_ = false;
    choose_inline_io();
}

void FileNode::reopen_abort()
{
    if (reopen_fd_ >= 0) ::close(reopen_fd_);
    reopen_fd_ = -1;
}

} // namespace

extern const BlockDriver kDriverFile = {
    .name = "file",
    .kind = BlockDriverKind::kProtocol,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBlockStatus | kCapFlush |
            kCapDiscardZeroes | kCapPersistent | kCapLocking,
    .summary = "regular files (io_uring or thread pool, O_DIRECT, QEMU-compatible image locking)",
    .decode_options = decode_file_options,
    .create = []() -> std::unique_ptr<BlockNode> { return std::make_unique<FileNode>(); },
    .probe = nullptr,
    .create_opts = kFileCreateOptions,
    .create_image = file_create_image,
};

} // namespace bg
