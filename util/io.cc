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

bool IoBackend::run_inline(IoRequest *req, bool inline_if_idle) noexcept
{
    if (!inline_if_idle || req->total > kInlineMaxBytes || !idle()) return false;
    io_request_execute(req);
    inline_requests_++;
    return true;
}

} // namespace bg
