// One FUSE request: dispatch by opcode, the handlers, and the reply.
//
// Each request runs in its own coroutine in the thread of the queue that
// received it, yielding only while block I/O is in flight. Handlers return
// 0 or a negative errno and describe a successful reply's data in a Reply;
// process() sends exactly one reply per request (none for the opcodes the
// kernel expects none for) through the transport that carried it, and
// reply() is the one place its header is filled.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export/fuse/internal.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr uint32_t kOurMinor = 31;   // protocol features we rely on
constexpr int kNoReply = 1;          // dispatch(): the kernel expects no reply

} // namespace

// Requests we care about whose values exist in every kernel we support.
const char *fuse_opcode_name(uint32_t op)
{
    switch (op) {
    case FUSE_INIT: return "INIT";
    case FUSE_GETATTR: return "GETATTR";
    case FUSE_SETATTR: return "SETATTR";
    case FUSE_OPEN: return "OPEN";
    case FUSE_READ: return "READ";
    case FUSE_WRITE: return "WRITE";
    case FUSE_FLUSH: return "FLUSH";
    case FUSE_FSYNC: return "FSYNC";
    case FUSE_RELEASE: return "RELEASE";
    default: return "other";
    }
}

// What a successful reply carries after its header: a fixed-size argument
// built in args (out<T>()), or bytes the request owns (READ data).
struct FuseExport::Reply {
    alignas(8) uint8_t args[128];
    const void *data = nullptr;
    size_t len = 0;
    bool start_rings = false;   // INIT: register the ring entries once replied

    template <typename T>
    T *out()
    {
        static_assert(sizeof(T) <= sizeof(args));
        memset(args, 0, sizeof(T));
        data = args;
        len = sizeof(T);
        return reinterpret_cast<T *>(args);
    }
};

// ---------------------------------------------------------------- the request

void FuseExport::process_entry(void *opaque)
{
    auto *req = static_cast<FuseRequest *>(opaque);
    req->q->exp->process(req);
}

void FuseExport::process(FuseRequest *req)
{
    Reply rep;
    int ret = dispatch(req, &rep);
    if (ret != kNoReply) reply(req, ret, rep.data, rep.len);
    if (rep.start_rings) start_rings();
    req->transport->release(req);
    requests_in_flight_.fetch_sub(1);   // the last touch of the export
}

// ret is 0 or a negative errno, which the kernel takes as it is
// (fuse_out_header.error); an error reply carries no data.
void FuseExport::reply(FuseRequest *req, int ret, const void *data, size_t len)
{
    if (ret < 0) {
        req->q->errors.fetch_add(1, std::memory_order_relaxed);
        data = nullptr;
        len = 0;
    }
    fuse_out_header oh;
    oh.unique = req->in().unique;
    oh.error = ret < 0 ? ret : 0;
    oh.len = static_cast<uint32_t>(sizeof(oh) + len);
    req->replied = true;
    req->transport->send(req, oh, data, len);
}

int FuseExport::dispatch(FuseRequest *req, Reply *rep)
{
    FuseQueue *q = req->q;
    auto count = [q](int kind) { q->requests[kind].fetch_add(1, std::memory_order_relaxed); };
    switch (req->in().opcode) {
    case FUSE_INIT:
        return handle_init(req, rep);
    case FUSE_GETATTR:
        count(ExportStats::kGetattr);
        return handle_getattr(req, rep);
    case FUSE_SETATTR:
        count(ExportStats::kSetattr);
        return handle_setattr(req, rep);
    case FUSE_OPEN:
        return handle_open(req, rep);
    case FUSE_RELEASE:
    case FUSE_DESTROY:
        return 0;
    case FUSE_READ:
        count(ExportStats::kRead);
        return handle_read(req, rep);
    case FUSE_WRITE:
        count(ExportStats::kWrite);
        return handle_write(req, rep);
    case FUSE_FLUSH:
    case FUSE_FSYNC: {
        count(ExportStats::kFlush);
        int r = writable_ ? blk_->co_flush() : 0;
        return r < 0 ? r : 0;
    }
    case FUSE_FALLOCATE:
        count(ExportStats::kFallocate);
        return handle_fallocate(req);
    case FUSE_LSEEK:
        count(ExportStats::kLseek);
        return handle_lseek(req, rep);
    case FUSE_STATFS:
        count(ExportStats::kOther);
        return handle_statfs(rep);
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
        return kNoReply;
    case FUSE_LOOKUP:
        count(ExportStats::kOther);
        return -ENOENT;   // the file is the root
    default:
        count(ExportStats::kOther);
        return -ENOSYS;
    }
}

// ---------------------------------------------------------------- INIT and OPEN

int FuseExport::handle_init(FuseRequest *req, Reply *rep)
{
    fuse_init_in in;
    memset(&in, 0, sizeof(in));
    // Old kernels send the short (pre-7.36) structure, without flags2.
    if (!req->arg(0, &in, sizeof(in)) && !req->arg(0, &in, 16)) return -EINVAL;
    auto *out = rep->out<fuse_init_out>();
    out->major = FUSE_KERNEL_VERSION;
    out->minor = std::min<uint32_t>(in.minor, FUSE_KERNEL_MINOR_VERSION);
    if (in.major != FUSE_KERNEL_VERSION) {
        // Tell a newer kernel which major version we speak; it retries.
        rep->len = 8;
        return in.major > FUSE_KERNEL_VERSION ? 0 : -EPROTO;
    }
    if (in.minor < kOurMinor) {
        log_error("export '%s': kernel FUSE protocol 7.%u is too old (need 7.%u)", id_.c_str(), in.minor, kOurMinor);
        return -EPROTO;
    }
    proto_minor_ = out->minor;
    // ATOMIC_O_TRUNC: O_TRUNC comes with OPEN (which ignores it, as
    // qemu-storage-daemon through libfuse does) instead of a SETATTR to size
    // 0, so `cp IMAGE MOUNTPOINT` overwrites the disk rather than shrinking it.
    uint32_t want = FUSE_ASYNC_READ | FUSE_ASYNC_DIO | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ATOMIC_O_TRUNC;
    out->flags = in.flags & want;
    out->max_readahead = in.max_readahead;
    out->max_background = UINT16_MAX;
    out->congestion_threshold = UINT16_MAX / 4 * 3;
    out->max_write = kFuseMaxWrite;
    out->time_gran = 1;
    out->max_pages = static_cast<uint16_t>(kFuseMaxWrite / sysconf(_SC_PAGESIZE));
    negotiate_extensions(in, out);
    rep->start_rings = uring_on_;
    if (!uring_on_ && !uring_why_.empty()) {
        log_info("export '%s': FUSE-over-io_uring not used (%s); requests are read from /dev/fuse", id_.c_str(),
                 uring_why_.c_str());
    }
    return 0;
}

// Passthrough and FUSE-over-io_uring, where wanted and offered (flags2).
void FuseExport::negotiate_extensions(const fuse_init_in &in, fuse_init_out *out)
{
    uint64_t kflags2 = (in.flags & fuse_uapi::kInitExt) ? static_cast<uint64_t>(in.flags2) << 32 : 0;
    if (backing_fd_ >= 0) {
        if (kflags2 & fuse_uapi::kInitPassthrough) {
            out->flags |= fuse_uapi::kInitExt;
            out->flags2 = static_cast<uint32_t>(fuse_uapi::kInitPassthrough >> 32);
            // Our mount stacks one level on the backing file's filesystem.
            fuse_uapi::InitOutTail tail{1};
            memcpy(&out->unused[0], &tail, sizeof(tail));
            out->minor = std::min<uint32_t>(in.minor, fuse_uapi::kPassthroughMinor);
            proto_minor_ = out->minor;
            passthrough_on_ = true;
        } else {
            log_info("export '%s': the kernel does not offer FUSE passthrough; requests go through the daemon",
                     id_.c_str());
        }
    }
    if (uring_why_.empty()) {
        if (kflags2 & fuse_uapi::kInitOverIoUring) {
            out->flags |= fuse_uapi::kInitExt;
            out->flags2 |= static_cast<uint32_t>(fuse_uapi::kInitOverIoUring >> 32);
            uring_on_ = true;
        } else {
            uring_why_ = "not offered by the kernel";
        }
    }
}

int FuseExport::handle_open(FuseRequest *req, Reply *rep)
{
    fuse_open_in in;
    if (!req->arg(&in)) return -EINVAL;
    if (!writable_ && (in.flags & O_ACCMODE) != O_RDONLY) return -EROFS;
    auto *out = rep->out<fuse_uapi::OpenOut>();
    // O_DIRECT opens are served by us: the kernel's passthrough path cannot
    // submit without blocking (io_uring hands each request to a worker
    // thread), which made 4k O_DIRECT at depth 64 several times slower than
    // our own path in measurements (docs/performance.md).
    int id = passthrough_on_ && !(in.flags & O_DIRECT) ? passthrough_backing_id(req->q) : -1;
    if (id >= 0) {
        // READ and WRITE go straight to the backing file (no FOPEN_DIRECT_IO:
        // it would override passthrough); the kernel keeps no page cache of
        // its own for a passthrough file, so the image is still shown as it is.
        out->open_flags = fuse_uapi::kOpenPassthrough;
        out->backing_id = id;
        passthrough_opens_.fetch_add(1, std::memory_order_relaxed);
    } else {
        // Show the image as it is: no page cache in front of it, and let
        // writes to one file run in parallel.
        out->open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    }
    return 0;
}

// ---------------------------------------------------------------- attributes

void FuseExport::fill_attr(fuse_attr *a)
{
    memset(a, 0, sizeof(*a));
    refresh_length_if_passthrough();
    int64_t len = blk_ ? blk_->getlength() : 0;
    a->ino = 1;
    a->size = static_cast<uint64_t>(std::max<int64_t>(len, 0));
    int64_t alloc = node_->allocated_file_size();
    a->blocks = alloc >= 0 ? static_cast<uint64_t>(alloc) / 512 : (a->size + 511) / 512;
    a->atime = a->mtime = a->ctime = static_cast<uint64_t>(start_time_.tv_sec);
    a->atimensec = a->mtimensec = a->ctimensec = static_cast<uint32_t>(start_time_.tv_nsec);
    {
        std::lock_guard<std::mutex> g(attr_lock_);
        a->mode = mode_;
        a->uid = uid_;
        a->gid = gid_;
    }
    a->nlink = 1;
    a->blksize = std::max<uint32_t>(node_->limits().request_alignment, 512);
}

int FuseExport::handle_getattr(FuseRequest *req, Reply *rep)
{
    (void)req;
    auto *out = rep->out<fuse_attr_out>();
    out->attr_valid = 1;
    fill_attr(&out->attr);
    return 0;
}

int FuseExport::handle_setattr(FuseRequest *req, Reply *rep)
{
    fuse_setattr_in in;
    if (!req->arg(&in)) return -EINVAL;
    // Changes we ignore, as QEMU does: times, handles, lock owners.
    const uint32_t supported = FATTR_SIZE | FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_FH | FATTR_LOCKOWNER |
                               FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW | FATTR_CTIME |
                               FATTR_KILL_SUIDGID;
    if (in.valid & ~supported) return -ENOTSUP;
    if (in.valid & FATTR_SIZE) {
        refresh_length_if_passthrough();
        if (!writable_) return -EACCES;
        int r = blk_->co_truncate(static_cast<int64_t>(in.size), true, PreallocMode::kOff, kReqZeroWrite);
        if (r < 0) return r;
    }
    if (in.valid & FATTR_MODE) {
        // Only permission bits may change, and a read-only export never
        // shows write permission.
        uint32_t perms = in.mode & 07777;
        if (!writable_ && (perms & 0222)) return -EROFS;
        std::lock_guard<std::mutex> g(attr_lock_);
        mode_ = S_IFREG | perms;
    }
    if (in.valid & (FATTR_UID | FATTR_GID)) {
        // Nobody else can see the file without allow_other; changing the
        // owner makes no sense then.
        if (!allow_other_) return -ENOTSUP;
        std::lock_guard<std::mutex> g(attr_lock_);
        if (in.valid & FATTR_UID) uid_ = in.uid;
        if (in.valid & FATTR_GID) gid_ = in.gid;
    }
    return handle_getattr(req, rep);
}

int FuseExport::handle_statfs(Reply *rep)
{
    auto *out = rep->out<fuse_statfs_out>();
    int64_t len = blk_->getlength();
    out->st.bsize = 512;
    out->st.frsize = 512;
    out->st.blocks = static_cast<uint64_t>(len) / 512;
    out->st.files = 1;
    out->st.namelen = 255;
    return 0;
}

// ---------------------------------------------------------------- data

// A range [offset, offset + length) of the request's unsigned 64-bit fields
// as a file can have it: 0, -EINVAL for an offset or length past INT64_MAX
// (negative as off_t), -EFBIG for an end past it, as write(2) and
// fallocate(2) say. The kernel never sends these (it stops at its maximum
// file size), but nothing after this check may compute a signed end that
// overflows.
static int check_range(uint64_t offset, uint64_t length)
{
    constexpr uint64_t kMax = static_cast<uint64_t>(INT64_MAX);
    if (offset > kMax || length > kMax) return -EINVAL;
    if (length > kMax - offset) return -EFBIG;
    return 0;
}

int FuseExport::handle_read(FuseRequest *req, Reply *rep)
{
    fuse_read_in in;
    if (!req->arg(&in) || in.size > kFuseMaxWrite) return -EINVAL;
    int64_t len = blk_->getlength();
    // Compared unsigned: an offset past INT64_MAX is past EOF too.
    if (len <= 0 || in.offset >= static_cast<uint64_t>(len) || in.size == 0) return 0;
    int64_t off = static_cast<int64_t>(in.offset);
    int64_t n = std::min<int64_t>(in.size, len - off);   // short read at EOF
    // The request's payload buffer is free for READ (its arguments are
    // elsewhere), so it holds the data: no allocation.
    uint8_t *buf = req->payload.get();
    int r = blk_->co_pread(off, n, buf);
    if (r < 0) return r;
    req->q->bytes_read.fetch_add(n, std::memory_order_relaxed);
    rep->data = buf;
    rep->len = static_cast<size_t>(n);
    return 0;
}

int FuseExport::co_grow(int64_t new_size, PreallocMode prealloc)
{
    CoMutexGuard g(grow_lock_);
    // Only ever grow: another request may have grown the node further since
    // our caller read the length.
    if (blk_->getlength() >= new_size) return 0;
    return blk_->co_truncate(new_size, true, prealloc, kReqZeroWrite);
}

int FuseExport::handle_write(FuseRequest *req, Reply *rep)
{
    fuse_write_in in;
    if (!req->arg(&in)) return -EINVAL;
    if (!writable_) return -EACCES;
    if (req->payload_len < in.size) return -EINVAL;
    if (int r = check_range(in.offset, in.size)) return r;
    // The data arrived at the start of the payload buffer, which this
    // request owns until it replies.
    const uint8_t *data = req->payload.get();
    int64_t off = static_cast<int64_t>(in.offset);
    int64_t n = in.size;
    int64_t len = blk_->getlength();
    if (off + n > len) {
        if (growable_) {
            int r = co_grow(off + n, PreallocMode::kOff);
            if (r < 0) return r;
        } else {
            if (off >= len) return -ENOSPC;
            n = len - off;   // short write; the next one gets ENOSPC
        }
    }
    int r = blk_->co_pwrite(off, n, data);
    if (r < 0) return r;
    req->q->bytes_written.fetch_add(n, std::memory_order_relaxed);
    rep->out<fuse_write_out>()->size = static_cast<uint32_t>(n);
    return 0;
}

// Write-zeroes over [off, end) in requests the block layer accepts.
int FuseExport::co_write_zeroes(int64_t off, int64_t end, ReqFlags flags)
{
    int r = 0;
    for (int64_t o = off; o < end && r == 0;) {
        int64_t n = std::min<int64_t>(end - o, kMaxRequestBytes);
        r = blk_->co_pwrite_zeroes(o, n, flags);
        o += n;
    }
    return r;
}

int FuseExport::handle_fallocate(FuseRequest *req)
{
    fuse_fallocate_in in;
    if (!req->arg(&in)) return -EINVAL;
    if (!writable_) return -EACCES;
    if (int r = check_range(in.offset, in.length)) return r;
    refresh_length_if_passthrough();
    int64_t off = static_cast<int64_t>(in.offset);
    int64_t length = static_cast<int64_t>(in.length);
    int64_t len = blk_->getlength();
    if (in.mode == 0) {
        // Allocation inside the image is a no-op we cannot express; past the
        // end it grows the image with preallocation, as QEMU does.
        if (off + length <= len) return off < len ? -EOPNOTSUPP : 0;
        return co_grow(off + length, PreallocMode::kFalloc);
    }
    if (in.mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        int r = co_write_zeroes(off, std::min(off + length, len), kReqMayUnmap | kReqNoFallback);
        return r == -ENOTSUP ? -EOPNOTSUPP : r;
    }
    if ((in.mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
        int64_t end = off + length;
        if (end > len && !(in.mode & FALLOC_FL_KEEP_SIZE)) {
            int r = co_grow(end, PreallocMode::kOff);
            if (r < 0) return r;
            len = blk_->getlength();
        }
        return co_write_zeroes(off, std::min(end, len), 0);
    }
    return -EOPNOTSUPP;
}

int FuseExport::handle_lseek(FuseRequest *req, Reply *rep)
{
    fuse_lseek_in in;
    if (!req->arg(&in)) return -EINVAL;
    if (in.whence != SEEK_DATA && in.whence != SEEK_HOLE) return -EINVAL;
    refresh_length_if_passthrough();
    int64_t len = blk_->getlength();
    int64_t off = static_cast<int64_t>(in.offset);
    if (off < 0 || off >= len) return -ENXIO;
    // Data is what some layer of the chain stores (DATA); holes read as zeros.
    for (;;) {
        int64_t pnum = 0;
        // Through the backend: counted in flight (drain and shutdown wait
        // for it) and held while the node is drained.
        int ret = blk_->co_block_status_above(nullptr, true, off, len - off, &pnum, nullptr, nullptr, nullptr);
        if (ret < 0) return ret;
        bool data = ret & kStatusData;
        if ((in.whence == SEEK_DATA && data) || (in.whence == SEEK_HOLE && !data)) break;
        if (pnum <= 0) return -EIO;
        off += pnum;
        if (off >= len) {
            if (in.whence == SEEK_DATA) return -ENXIO;
            off = len;   // the implicit hole at EOF
            break;
        }
    }
    rep->out<fuse_lseek_out>()->offset = static_cast<uint64_t>(off);
    return 0;
}

} // namespace bg
