// Asynchronous file I/O for coroutines: io_uring, or a thread pool where a
// ring cannot be set up. Both give the same interface.
//
// Threading model: a backend belongs to one AioContext and is used only by
// coroutines running in that context's thread.
//
// The per-request control block lives on the calling coroutine's stack. The
// coroutine submits and yields; the completion, noticed by the loop, stores
// the result and enters exactly that coroutine (no bottom half in between).
// io_uring submissions are batched: SQEs queued during one loop iteration go
// to the kernel in one io_uring_enter, just before the loop sleeps.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>

#include "util/coroutine.h"
#include "util/error.h"

namespace bg {

class AioContext;
struct IoRequest;

struct IoBackendStats {
    uint64_t requests = 0;        // requests completed (after any resubmission)
    uint64_t submissions = 0;     // SQEs (or pool jobs) handed to the kernel/workers
    uint64_t enters = 0;          // io_uring_enter system calls (0 for the pool)
    uint64_t resubmissions = 0;   // short transfers and -EAGAIN/-EINTR retries
    uint64_t queue_full_waits = 0;// requests that had to wait for ring room
    uint64_t inline_requests = 0; // done synchronously in the calling thread (inline_if_idle)
};

class IoBackend {
  public:
    virtual ~IoBackend() = default;

    // The four operations are implemented by each backend directly (no
    // layer in between: the caller's coroutine builds the control block and
    // submits it in the backend's own function). Overrides declare no
    // default arguments; calls go through IoBackend.
    //
    // Reads iov's total length at offset. Short reads are continued; a read
    // that reaches end-of-file fills the rest of iov with zeros. Returns the
    // total length or a negative errno. Yields. iov is not modified.
    // inline_if_idle: if nothing of this backend is in flight and the
    // transfer is at most kInlineMaxBytes, do it synchronously in the calling
    // thread instead (for page-cache I/O the kernel would hand to a worker
    // thread anyway: at low depth the hand-off and the wake-up back cost more
    // than a small copy, while a large copy is better left to run beside the
    // loop; see docs/performance.md).
    static constexpr int64_t kInlineMaxBytes = 64 * 1024;
    virtual int64_t coroutine_fn co_preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                                           bool inline_if_idle = false) noexcept = 0;
    // Writes all of iov at offset (short writes are continued). Returns the
    // total length or a negative errno (-ENOSPC if the file takes no more).
    virtual int64_t coroutine_fn co_pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                                            bool inline_if_idle = false) noexcept = 0;
    // fsync (datasync=false) or fdatasync. 0 or negative errno.
    virtual int coroutine_fn co_fsync(int fd, bool datasync) noexcept = 0;
    // fallocate(2). 0 or negative errno.
    virtual int coroutine_fn co_fallocate(int fd, int mode, int64_t offset, int64_t len) noexcept = 0;

    virtual const char *name() const = 0;
    virtual IoBackendStats stats() const = 0;
    // Nothing submitted and not yet completed.
    virtual bool idle() const = 0;

    // io_uring with the given number of entries (0: default 256). Fails if
    // the kernel or a seccomp policy refuses a ring, or
    // BLOCKGRAPH_DISABLE_IO_URING=1 is set.
    static Result<std::unique_ptr<IoBackend>> new_uring(AioContext *ctx, unsigned entries = 0);
    // Thread pool with up to max_threads workers (0: default 16).
    static std::unique_ptr<IoBackend> new_threads(AioContext *ctx, unsigned max_threads = 0);

  protected:
    // Does the read or write req synchronously in the calling thread if
    // inline_if_idle allows it (see co_preadv) and returns true; else
    // returns false and the backend submits req.
    bool run_inline(IoRequest *req, bool inline_if_idle) noexcept;
    uint64_t inline_requests_ = 0;
};

} // namespace bg
