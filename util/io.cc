#include "util/io.h"

#include <fcntl.h>
#include <unistd.h>

#include "util/io-internal.h"

namespace bg {

void io_request_execute(IoRequest *req)
{
    for (;;) {
        int64_t r;
        switch (req->op) {
        case IoRequest::kRead:
            r = preadv(req->fd, req->cur_iov(), req->cur_iovcnt(), req->cur_offset());
            break;
        case IoRequest::kWrite:
            r = pwritev(req->fd, req->cur_iov(), req->cur_iovcnt(), req->cur_offset());
            break;
        case IoRequest::kFsync:
            r = req->datasync ? fdatasync(req->fd) : fsync(req->fd);
            break;
        case IoRequest::kFallocate:
            r = fallocate(req->fd, req->mode, req->offset, req->total);
            break;
        default:
            r = -EINVAL;
            errno = EINVAL;
        }
        if (r < 0) r = -errno;
        if (!io_request_advance(req, r)) return;
    }
}

int64_t IoBackend::co_transfer(IoRequest *req, bool inline_if_idle) noexcept
{
    if (inline_if_idle && req->total <= kInlineMaxBytes && idle()) {
        io_request_execute(req);
        inline_requests_++;
        return req->result;
    }
    return co_run(req);
}

int64_t IoBackend::co_preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset, bool inline_if_idle) noexcept
{
    IoRequest req(IoRequest::kRead);
    req.fd = fd;
    req.iov = iov;
    req.iovcnt = iovcnt;
    req.offset = offset;
    req.total = static_cast<int64_t>(iov_size(iov, iovcnt));
    return co_transfer(&req, inline_if_idle);
}

int64_t IoBackend::co_pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                              bool inline_if_idle) noexcept
{
    IoRequest req(IoRequest::kWrite);
    req.fd = fd;
    req.iov = iov;
    req.iovcnt = iovcnt;
    req.offset = offset;
    req.total = static_cast<int64_t>(iov_size(iov, iovcnt));
    return co_transfer(&req, inline_if_idle);
}

int IoBackend::co_fsync(int fd, bool datasync) noexcept
{
    IoRequest req(IoRequest::kFsync);
    req.fd = fd;
    req.datasync = datasync;
    return static_cast<int>(co_run(&req));
}

int IoBackend::co_fallocate(int fd, int mode, int64_t offset, int64_t len) noexcept
{
    IoRequest req(IoRequest::kFallocate);
    req.fd = fd;
    req.mode = mode;
    req.offset = offset;
    req.total = len;
    return static_cast<int>(co_run(&req));
}

} // namespace bg
