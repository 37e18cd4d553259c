// Stream sockets for coroutines: addresses (QEMU's SocketAddress: inet and
// unix), listening and connecting, and CoSocket, a connected socket whose
// reads and writes yield the calling coroutine instead of blocking, with an
// optional TLS session on top (util/tls.h; STARTTLS upgrades a plain socket
// in place).
//
// Threading model: a CoSocket belongs to the AioContext current when it was
// created and is used only by coroutines of that thread. At most one
// coroutine reads and at most one writes at a time (callers serialise
// writers with a CoMutex); one reader and one writer may wait at once.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "util/coroutine.h"
#include "util/error.h"

namespace bg {

class AioContext;
class TlsCreds;

// QEMU's SocketAddress (flat form): type inet (host, port) or unix (path).
struct SocketAddress {
    enum class Type { kInet, kUnix };
    Type type = Type::kInet;
    std::string host;     // inet; "" = any address when listening
    std::string port;     // inet; a number or a service name
    std::string path;     // unix
    // "host:port" ([host]:port for IPv6) or "unix:PATH", for messages.
    std::string to_string() const;
};

// Opens a listening socket (SO_REUSEADDR; a stale unix socket file is not
// removed: the caller decides). Non-blocking, close-on-exec. Errors name the
// address: "Failed to bind socket to PATH: <strerror>", "Failed to listen
// on HOST:PORT: ...".
Result<int> socket_listen(const SocketAddress &addr, int backlog = 16);
// Connects to addr. In a coroutine the connect yields (non-blocking connect
// waited for in the current AioContext), and gives up after timeout_ns
// (0: no limit beyond the kernel's) with ETIMEDOUT; outside one it blocks.
// Errors: "Failed to connect to ADDR: <strerror>".
Result<int> co_socket_connect(const SocketAddress &addr, int64_t timeout_ns = 0);
// Accepts one pending connection of a non-blocking listening socket:
// the new fd (close-on-exec), or -errno (-EAGAIN when none is pending).
int socket_accept(int listen_fd);

class CoSocket {
  public:
    // Takes ownership of fd (a connected stream socket) and makes it
    // non-blocking; fd handlers go to AioContext::current().
    explicit CoSocket(int fd);
    ~CoSocket();   // closes; ends any TLS session without a goodbye
    CoSocket(const CoSocket &) = delete;
    CoSocket &operator=(const CoSocket &) = delete;

    int fd() const { return fd_; }

    // Reads exactly len bytes. 0 on success; -ECONNRESET if the peer closed
    // first (*eof, if given, says whether that happened before any byte
    // was read: a clean end between messages); -ESHUTDOWN after shutdown();
    // -ETIMEDOUT when a deadline set by set_read_deadline() passed; other
    // -errno from the socket or TLS (-EPROTO). Yields.
    int coroutine_fn co_read_full(void *buf, size_t len, bool *eof = nullptr);
    // Writes all of the iovecs (the array is not modified). 0 or -errno
    // (-EPIPE when the peer has gone, -ESHUTDOWN after shutdown()). Yields.
    int coroutine_fn co_write_full(const struct iovec *iov, int iovcnt);
    int coroutine_fn co_write_full(const void *buf, size_t len);

    // Reads after this absolute clock_ns() time fail with -ETIMEDOUT (0:
    // no deadline). For handshake time limits and slow peers.
    void set_read_deadline(int64_t deadline_ns);

    // Waits until the socket is readable (a caller doing its own
    // non-blocking reads of fd() got EAGAIN): 0, or -ESHUTDOWN /
    // -ETIMEDOUT. Not with TLS active (the session may need to write).
    // Yields.
    int coroutine_fn co_wait_readable() { return co_wait(false, true); }

    // Stops both directions: waiting and later reads and writes fail with
    // -ESHUTDOWN and the peer sees the connection close. Idempotent; any
    // coroutine of the owning thread, or outside one.
    void shutdown();
    bool is_shutdown() const { return shutdown_; }

    // ---- TLS (util/tls.cc) ----
    // Runs the TLS handshake on the connection as its server or client
    // with creds (which must match: endpoint=server for server) and makes
    // every later read and write go through the session. hostname: the
    // name the server's certificate must carry (client, x509; "" skips the
    // check; a PSK client's username is creds' "username"). authz_id: an
    // authz-simple object the peer's identity must match (server side:
    // tls-authz; "" none; looked up in the object table, so only in the
    // main thread). The handshake waits with the socket's read
    // deadline. Errors (the connection is then unusable): "TLS handshake
    // failed: <gnutls>", x509 checks ("The certificate hasn't got a known
    // issuer", "Verify failed: No certificate was found.", "Certificate
    // does not match the hostname H"), "Credentials endpoint doesn't match
    // session", tls_authz_check()'s. Yields.
    Status coroutine_fn co_start_tls(const TlsCreds &creds, bool server, const std::string &hostname = "",
                                     const std::string &authz_id = "");
    bool tls_active() const { return tls_ != nullptr; }
    // The peer's certificate distinguished name (x509 with a client
    // certificate) or PSK username; "" if none.
    std::string tls_peer_identity() const;

  private:
    friend struct TlsIo;
    // One transfer attempt: bytes moved (> 0), 0 at EOF (reads), or -errno;
    // -EAGAIN with *want_write saying which readiness to wait for.
    ssize_t transfer_read(void *buf, size_t len, bool *want_write);
    ssize_t transfer_write(const struct iovec *iov, int iovcnt, bool *want_write);
    // Waits until the fd is readable (want_write false) or writable; 0, or
    // -ESHUTDOWN / -ETIMEDOUT. Yields.
    int coroutine_fn co_wait(bool want_write, bool reader);
    // Makes the fd handler match the waiters. update_handler() arms what a
    // waiter needs and leaves armed what no one waits for (the next wait
    // usually wants it again, and every change of a GLib poll set costs
    // the loop a wakeup); disarm_idle() drops what no one waits for.
    void update_handler();
    void disarm_idle();
    void match_waiters(bool keep_armed);   // both: arm what waiters need; keep_armed: drop nothing
    void set_handler(bool want_read, bool want_write);
    static void on_readable(void *opaque);
    static void on_writable(void *opaque);
    static void on_deadline(void *opaque);

    int fd_;
    AioContext *ctx_;
    bool shutdown_ = false;
    // The coroutines waiting for readiness (one reader, one writer): which
    // event each waits for, as transfer_* reported it (TLS may need the
    // other direction).
    Coroutine *read_waiter_ = nullptr;
    Coroutine *write_waiter_ = nullptr;
    bool read_waiter_wants_write_ = false;
    bool write_waiter_wants_write_ = true;
    bool handler_read_ = false, handler_write_ = false;
    int64_t read_deadline_ = 0;
    bool deadline_passed_ = false;
    struct DeadlineTimer;
    DeadlineTimer *deadline_timer_ = nullptr;
    void *tls_ = nullptr;   // gnutls_session_t, owned (util/tls.cc)
    void *tls_state_ = nullptr;   // util/tls.cc's per-session data
};

} // namespace bg
