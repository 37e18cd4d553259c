// Shared by the io_uring and thread-pool backends: the request control block
// and the rules for short transfers and retries, in one place.
#pragma once

#include <sys/uio.h>

#include <cerrno>
#include <cstdint>

#include "util/coroutine.h"
#include "util/io.h"
#include "util/iov.h"

struct io_uring;
struct io_uring_sqe;

namespace bg {

struct IoRequest {
    enum Op : uint8_t { kRead, kWrite, kFsync, kFallocate };
    explicit IoRequest(Op o) : op(o) {}
    // A read or write of iov at offset.
    IoRequest(Op o, int f, const struct iovec *v, int cnt, int64_t off)
        : op(o), fd(f), iov(v), iovcnt(cnt), offset(off), total(static_cast<int64_t>(iov_size(v, cnt)))
    {
    }
    Op op;
    bool completed = false;
    bool datasync = false;
    int fd = -1;
    int mode = 0;                      // fallocate mode
    const struct iovec *iov = nullptr; // caller's vector, never modified
    int iovcnt = 0;
    int64_t offset = 0;                // file offset of iov[0]
    int64_t total = 0;                 // bytes in iov (or fallocate length)
    int64_t done = 0;                  // bytes transferred so far
    int64_t result = 0;                // final: total or negative errno
    Coroutine *co = nullptr;           // waiting coroutine
    IoRequest *next = nullptr;         // backend queue link
    IOVector rest;                     // the part still to do after a short transfer

    // The vector and offset to submit now.
    const struct iovec *cur_iov() const { return done ? rest.iov() : iov; }
    int cur_iovcnt() const { return done ? rest.niov() : iovcnt; }
    int64_t cur_offset() const { return offset + done; }
};

// The part of every backend that turns a call into a request: Backend
// (the derived class) supplies `int64_t co_run(IoRequest *req) noexcept`,
// which submits req, yields until it is complete and returns req->result.
// Reads and writes first try IoBackend::run_inline().
template <typename Backend>
class IoBackendOf : public IoBackend {
  public:
    int64_t coroutine_fn co_preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                                   bool inline_if_idle) noexcept final
    {
        IoRequest req(IoRequest::kRead, fd, iov, iovcnt, offset);
        if (run_inline(&req, inline_if_idle)) return req.result;
        return static_cast<Backend *>(this)->co_run(&req);
    }
    int64_t coroutine_fn co_pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                                    bool inline_if_idle) noexcept final
    {
        IoRequest req(IoRequest::kWrite, fd, iov, iovcnt, offset);
        if (run_inline(&req, inline_if_idle)) return req.result;
        return static_cast<Backend *>(this)->co_run(&req);
    }
    int coroutine_fn co_fsync(int fd, bool datasync) noexcept final
    {
        IoRequest req(IoRequest::kFsync);
        req.fd = fd;
        req.datasync = datasync;
        return static_cast<int>(static_cast<Backend *>(this)->co_run(&req));
    }
    int coroutine_fn co_fallocate(int fd, int mode, int64_t offset, int64_t len) noexcept final
    {
        IoRequest req(IoRequest::kFallocate);
        req.fd = fd;
        req.mode = mode;
        req.offset = offset;
        req.total = len;
        return static_cast<int>(static_cast<Backend *>(this)->co_run(&req));
    }
};

// Does req synchronously in the calling thread (retries and continuations
// included); the result is in req->result.
void io_request_execute(IoRequest *req);

// Applies one completion result res (bytes or negative errno) to req.
// Returns true if req must be submitted again (retry or continuation) and
// false when req->result is final.
inline bool io_request_advance(IoRequest *req, int64_t res)
{
    if (res == -EAGAIN || res == -EINTR) return true;
    if (req->op == IoRequest::kFsync || req->op == IoRequest::kFallocate) {
        req->result = res < 0 ? res : 0;
        return false;
    }
    if (res < 0) {
        req->result = res;
        return false;
    }
    if (res == 0 && req->done < req->total) {
        if (req->op == IoRequest::kWrite) {
            req->result = -ENOSPC;
            return false;
        }
        // End of file: what lies beyond reads as zeros.
        iov_memset(req->iov, req->iovcnt, req->done, 0, req->total - req->done);
        req->done = req->total;
    }
    req->done += res;
    if (req->done >= req->total) {
        req->result = req->total;
        return false;
    }
    req->rest.reset();
    req->rest.add_slice(req->iov, req->iovcnt, req->done, req->total - req->done);
    return true;
}

// ---- liburing ring helpers, shared by the io_uring backend and other
// owners of a ring driven by an AioContext (the FUSE export's rings).
// Every call is made in the thread that owns the ring; none blocks.

// Sets up ring with entries SQEs (flags: extra IORING_SETUP_* bits) and a
// completion queue twice as large, so that the completions of everything in
// flight never overflow; where the kernel refuses to size the CQ, with its
// default size. With IORING_SETUP_COOP_TASKRUN where the kernel has it
// (5.19): a completion the kernel finishes elsewhere (a worker thread's
// buffered write, a FUSE request) is posted at the owner thread's next
// system call instead of interrupting it with an IPI while it polls in user
// space; a sleeping owner is still woken (docs/performance.md has the
// measurements). Returns 0 or a negative errno.
int uring_init(struct io_uring *ring, unsigned entries, unsigned flags);
// Hands every prepared SQE to the kernel, retrying EINTR. Returns the number
// of io_uring_enter calls made (0: nothing was prepared). EAGAIN and EBUSY
// leave the SQEs for the next call; other errors are logged after what.
unsigned uring_flush(struct io_uring *ring, const char *what);
// A free SQE; when the SQ is full of prepared entries it flushes them first
// (adding its io_uring_enter calls to *enters). nullptr if it is still full.
struct io_uring_sqe *uring_get_sqe(struct io_uring *ring, unsigned *enters, const char *what);

} // namespace bg
