// Stream sockets for coroutines (util/co-socket.h).
//
// A CoSocket keeps one fd handler in its AioContext, registered only for
// the directions some coroutine waits for. A transfer is tried first; only
// on EAGAIN does the coroutine register interest and yield, and the
// handler wakes exactly the coroutine(s) whose event arrived.
#include "util/co-socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "util/aio.h"
#include "util/tls.h"

namespace bg {

std::string SocketAddress::to_string() const
{
    if (type == Type::kUnix) return "unix:" + path;
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + port;
    return host + ":" + port;
}

namespace {

void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

Result<sockaddr_un> unix_address(const std::string &path)
{
    sockaddr_un sa = {};
    sa.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
        return make_error(ENAMETOOLONG, "UNIX socket path '%s' is too long", path.c_str());
    }
    memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    return sa;
}

struct AddrInfo {
    addrinfo *res = nullptr;
    ~AddrInfo()
    {
        if (res) freeaddrinfo(res);
    }
};

Status resolve(const SocketAddress &addr, bool passive, AddrInfo *out)
{
    addrinfo hints = {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    const char *host = addr.host.empty() ? nullptr : addr.host.c_str();
    int gai = getaddrinfo(host, addr.port.c_str(), &hints, &out->res);
    if (gai != 0) {
        return make_error(EINVAL, "address resolution failed for %s:%s: %s", addr.host.c_str(), addr.port.c_str(),
                          gai_strerror(gai));
    }
    return {};
}

} // namespace

Result<int> socket_listen(const SocketAddress &addr, int backlog)
{
    if (addr.type == SocketAddress::Type::kUnix) {
        BG_TRY_ASSIGN(sockaddr_un sa, unix_address(addr.path));
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return errno_error(errno, "socket");
        if (bind(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0 || listen(fd, backlog) != 0) {
            int e = errno;
            close(fd);
            return make_error(e, "Failed to bind socket to %s: %s", addr.path.c_str(), strerror(e));
        }
        return fd;
    }
    AddrInfo ai;
    BG_TRY(resolve(addr, true, &ai));
    int err = 0;
    for (addrinfo *a = ai.res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0) return fd;
        err = errno;
        close(fd);
    }
    if (!err) err = EADDRNOTAVAIL;
    return make_error(err, "Failed to listen on %s: %s", addr.to_string().c_str(), strerror(err));
}

int socket_accept(int listen_fd)
{
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));   // fails harmlessly on unix sockets
    return fd;
}

namespace {

// Waits for a non-blocking connect() in progress on fd; 0 or -errno.
int coroutine_fn co_wait_connected(int fd, int64_t timeout_ns)
{
    struct Wait {
        Coroutine *co;
        bool fired = false;
        bool timed_out = false;
    } w{coroutine_self()};
    AioContext *ctx = AioContext::current();
    auto wake = [](void *p) {
        auto *w = static_cast<Wait *>(p);
        if (w->fired) return;
        w->fired = true;
        coroutine_wake(w->co);
    };
    ctx->set_fd_handler(fd, nullptr, wake, &w);
    Timer timer(ctx, [](void *p) {
        auto *w = static_cast<Wait *>(p);
        if (w->fired) return;
        w->fired = w->timed_out = true;
        coroutine_wake(w->co);
    }, &w);
    if (timeout_ns > 0) timer.mod_in(timeout_ns);
    coroutine_yield();
    ctx->set_fd_handler(fd, nullptr, nullptr, nullptr);
    timer.del();
    if (w.timed_out) return -ETIMEDOUT;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
    return -err;
}

// Connects fd to sa; in a coroutine without blocking the thread.
int connect_one(int fd, const sockaddr *sa, socklen_t len, int64_t timeout_ns)
{
    bool co = in_coroutine() && AioContext::current();
    if (co) set_nonblock(fd);
    if (connect(fd, sa, len) == 0) return 0;
    if (!co || (errno != EINPROGRESS && errno != EAGAIN)) return -errno;
    return co_wait_connected(fd, timeout_ns);
}

} // namespace

Result<int> co_socket_connect(const SocketAddress &addr, int64_t timeout_ns)
{
    const std::string where = addr.type == SocketAddress::Type::kUnix ? addr.path : addr.to_string();
    int err = 0;
    if (addr.type == SocketAddress::Type::kUnix) {
        BG_TRY_ASSIGN(sockaddr_un sa, unix_address(addr.path));
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return errno_error(errno, "socket");
        err = -connect_one(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa), timeout_ns);
        if (!err) return fd;
        close(fd);
    } else {
        AddrInfo ai;
        BG_TRY(resolve(addr, false, &ai));
        for (addrinfo *a = ai.res; a; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            err = -connect_one(fd, a->ai_addr, a->ai_addrlen, timeout_ns);
            if (!err) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                return fd;
            }
            close(fd);
        }
        if (!err) err = EADDRNOTAVAIL;
    }
    return make_error(err, "Failed to connect to %s: %s", where.c_str(), strerror(err));
}

// ---------------------------------------------------------------- CoSocket

struct CoSocket::DeadlineTimer {
    explicit DeadlineTimer(CoSocket *s) : timer(s->ctx_, &CoSocket::on_deadline, s) {}
    Timer timer;
};

CoSocket::CoSocket(int fd) : fd_(fd), ctx_(AioContext::current())
{
    set_nonblock(fd_);
}

CoSocket::~CoSocket()
{
    if (handler_read_ || handler_write_) ctx_->set_fd_handler(fd_, nullptr, nullptr, nullptr);
    delete deadline_timer_;
    if (tls_) tls_session_free(tls_, tls_state_);
    if (fd_ >= 0) close(fd_);
}

void CoSocket::update_handler() { match_waiters(true); }

void CoSocket::disarm_idle() { match_waiters(false); }

void CoSocket::match_waiters(bool keep_armed)
{
    bool want_read = (read_waiter_ && !read_waiter_wants_write_) || (write_waiter_ && !write_waiter_wants_write_);
    bool want_write = (read_waiter_ && read_waiter_wants_write_) || (write_waiter_ && write_waiter_wants_write_);
    if (keep_armed) {
        want_read = want_read || handler_read_;
        want_write = want_write || handler_write_;
    }
    set_handler(want_read, want_write);
}

void CoSocket::set_handler(bool want_read, bool want_write)
{
    if (want_read == handler_read_ && want_write == handler_write_) return;
    handler_read_ = want_read;
    handler_write_ = want_write;
    ctx_->set_fd_handler(fd_, want_read ? &CoSocket::on_readable : nullptr,
                         want_write ? &CoSocket::on_writable : nullptr, this);
}

// Readiness wakes the waiters for it and leaves the handler armed for the
// next wait; readiness no one waits for disarms it (level-triggered: it
// would fire again at once).
void CoSocket::on_readable(void *opaque)
{
    auto *s = static_cast<CoSocket *>(opaque);
    Coroutine *r = s->read_waiter_ && !s->read_waiter_wants_write_ ? s->read_waiter_ : nullptr;
    Coroutine *w = s->write_waiter_ && !s->write_waiter_wants_write_ ? s->write_waiter_ : nullptr;
    if (r) s->read_waiter_ = nullptr;
    if (w) s->write_waiter_ = nullptr;
    if (!r && !w) s->disarm_idle();
    if (r) coroutine_wake(r);
    if (w) coroutine_wake(w);
}

void CoSocket::on_writable(void *opaque)
{
    auto *s = static_cast<CoSocket *>(opaque);
    Coroutine *r = s->read_waiter_ && s->read_waiter_wants_write_ ? s->read_waiter_ : nullptr;
    Coroutine *w = s->write_waiter_ && s->write_waiter_wants_write_ ? s->write_waiter_ : nullptr;
    if (r) s->read_waiter_ = nullptr;
    if (w) s->write_waiter_ = nullptr;
    if (!r && !w) s->disarm_idle();
    if (r) coroutine_wake(r);
    if (w) coroutine_wake(w);
}

void CoSocket::on_deadline(void *opaque)
{
    auto *s = static_cast<CoSocket *>(opaque);
    s->deadline_passed_ = true;
    if (Coroutine *r = s->read_waiter_) {
        s->read_waiter_ = nullptr;
        s->disarm_idle();
        coroutine_wake(r);
    }
}

void CoSocket::set_read_deadline(int64_t deadline_ns)
{
    read_deadline_ = deadline_ns;
    deadline_passed_ = deadline_ns > 0 && clock_ns() >= deadline_ns;
    if (!deadline_timer_) deadline_timer_ = new DeadlineTimer(this);
    if (deadline_ns > 0) {
        deadline_timer_->timer.mod(deadline_ns);
    } else {
        deadline_timer_->timer.del();
    }
}

int coroutine_fn CoSocket::co_wait(bool want_write, bool reader)
{
    if (shutdown_) return -ESHUTDOWN;
    if (reader && deadline_passed_) return -ETIMEDOUT;
    Coroutine *self = coroutine_self();
    if (reader) {
        read_waiter_ = self;
        read_waiter_wants_write_ = want_write;
    } else {
        write_waiter_ = self;
        write_waiter_wants_write_ = want_write;
    }
    update_handler();
    coroutine_yield();
    // Woken by readiness, shutdown() or the deadline; the waker cleared us.
    if (shutdown_) return -ESHUTDOWN;
    if (reader && deadline_passed_) return -ETIMEDOUT;
    return 0;
}

ssize_t CoSocket::transfer_read(void *buf, size_t len, bool *want_write)
{
    *want_write = false;
    if (tls_) return tls_session_read(tls_, buf, len, want_write);
    ssize_t n = ::recv(fd_, buf, len, 0);
    return n < 0 ? -errno : n;
}

ssize_t CoSocket::transfer_write(const struct iovec *iov, int iovcnt, bool *want_write)
{
    *want_write = true;
    if (tls_) return tls_session_write(tls_, iov, iovcnt, want_write);
    msghdr msg = {};
    msg.msg_iov = const_cast<struct iovec *>(iov);
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    return n < 0 ? -errno : n;
}

int coroutine_fn CoSocket::co_read_full(void *buf, size_t len, bool *eof)
{
    auto *p = static_cast<uint8_t *>(buf);
    size_t done = 0;
    if (eof) *eof = false;
    while (done < len) {
        if (shutdown_) return -ESHUTDOWN;
        if (deadline_passed_) return -ETIMEDOUT;
        bool want_write = false;
        ssize_t n = transfer_read(p + done, len - done, &want_write);
        if (n > 0) {
            done += static_cast<size_t>(n);
        } else if (n == 0) {
            if (eof) *eof = done == 0;
            return -ECONNRESET;
        } else if (n == -EINTR) {
            continue;
        } else if (n == -EAGAIN || n == -EWOULDBLOCK) {
            int r = co_wait(want_write, true);
            if (r < 0) return r;
        } else {
            return static_cast<int>(n);
        }
    }
    return 0;
}

int coroutine_fn CoSocket::co_write_full(const struct iovec *iov, int iovcnt)
{
    // A local copy of the vector, advanced as bytes go out.
    struct iovec local[16];
    std::vector<struct iovec> heap;
    struct iovec *v = local;
    if (iovcnt > 16) {
        heap.assign(iov, iov + iovcnt);
        v = heap.data();
    } else {
        std::copy(iov, iov + iovcnt, local);
    }
    int cnt = iovcnt;
    while (cnt > 0 && v->iov_len == 0) {
        v++;
        cnt--;
    }
    while (cnt > 0) {
        if (shutdown_) return -ESHUTDOWN;
        bool want_write = true;
        ssize_t n = transfer_write(v, std::min(cnt, IOV_MAX), &want_write);
        if (n == -EINTR) continue;
        if (n == -EAGAIN || n == -EWOULDBLOCK) {
            int r = co_wait(want_write, false);
            if (r < 0) return r;
            continue;
        }
        if (n < 0) return static_cast<int>(n);
        auto left = static_cast<size_t>(n);
        while (cnt > 0 && left >= v->iov_len) {
            left -= v->iov_len;
            v++;
            cnt--;
        }
        if (cnt > 0) {
            v->iov_base = static_cast<uint8_t *>(v->iov_base) + left;
            v->iov_len -= left;
        }
    }
    return 0;
}

int coroutine_fn CoSocket::co_write_full(const void *buf, size_t len)
{
    struct iovec iov = {const_cast<void *>(buf), len};
    return co_write_full(&iov, 1);
}

void CoSocket::shutdown()
{
    if (shutdown_) return;
    shutdown_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    Coroutine *r = read_waiter_, *w = write_waiter_;
    read_waiter_ = write_waiter_ = nullptr;
    disarm_idle();
    if (r) coroutine_wake(r);
    if (w) coroutine_wake(w);
}

} // namespace bg
