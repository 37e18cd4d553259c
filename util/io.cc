#include "util/io.h"

#include "util/io-internal.h"

namespace bg {

int64_t IoBackend::co_preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset) noexcept
{
    IoRequest req(IoRequest::kRead);
    req.fd = fd;
    req.iov = iov;
    req.iovcnt = iovcnt;
    req.offset = offset;
    req.total = static_cast<int64_t>(iov_size(iov, iovcnt));
    return co_run(&req);
}

int64_t IoBackend::co_pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset) noexcept
{
    IoRequest req(IoRequest::kWrite);
    req.fd = fd;
    req.iov = iov;
    req.iovcnt = iovcnt;
    req.offset = offset;
    req.total = static_cast<int64_t>(iov_size(iov, iovcnt));
    return co_run(&req);
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
