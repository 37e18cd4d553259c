// The client side of the NBD protocol on a CoSocket (util/co-socket.h):
// the fixed newstyle handshake (STARTTLS, extended headers or structured
// replies, SET_META_CONTEXT, GO with the BLOCK_SIZE request and the
// EXPORT_NAME / oldstyle fallbacks), export listing for `nbd --list`, and
// the transmission phase (NbdClientConnection: many requests in flight on
// one socket, replies matched by cookie, strict checks of every reply).
// Nothing here knows of block nodes; block/nbd.cc and tools/ build on it.
//
// Threading: everything runs in coroutines of the AioContext that owns the
// socket (the one current when the CoSocket was created). Errors are
// returned, never thrown; a server that breaks the protocol gets the
// connection declared broken, never an out-of-bounds write.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine-lock.h"
#include "util/coroutine.h"
#include "util/error.h"
#include "util/iov.h"

namespace bg {

class TlsCreds;

namespace nbd {

// What the client asks for during the handshake.
struct ClientConfig {
    std::string export_name;               // "" is the default export
    std::shared_ptr<TlsCreds> tls_creds;   // non-null: STARTTLS first (endpoint=client creds)
    std::string tls_hostname;              // name the server certificate must carry ("" = no check)
    // SET_META_CONTEXT queries (usually "base:allocation", or the
    // x-dirty-bitmap context); empty: none. Sent only once structured
    // replies or extended headers are on.
    std::vector<std::string> meta_contexts;
    // A requested context the server does not offer is an error (the
    // x-dirty-bitmap case) instead of leaving block status off.
    bool require_meta_contexts = false;
    bool try_extended_headers = true;
    bool try_structured_replies = true;
    // Handshake time limit (absolute clock_ns() deadline; 0 = none).
    int64_t deadline_ns = 0;
};

// The export the handshake ended on, and what was negotiated.
struct ExportInfo {
    std::string name;                      // the name asked for (or the server's canonical one)
    std::string description;
    uint64_t size = 0;                     // bytes
    uint16_t flags = 0;                    // transmission flags (kTx*)
    // BLOCK_SIZE constraints (defaults when the server sent none).
    uint32_t min_block = 1;
    uint32_t opt_block = 4096;
    uint32_t max_block = 32U << 20;
    bool block_size_sent = false;
    bool structured = false;               // structured replies on
    bool extended = false;                 // extended headers on (implies chunked replies)
    bool oldstyle = false;
    bool go_done = false;                  // GO succeeded (else EXPORT_NAME or oldstyle)
    // Selected contexts (SET_META_CONTEXT answers): name and id.
    struct Context {
        std::string name;
        uint32_t id = 0;
    };
    std::vector<Context> contexts;
};

// Runs the handshake on a freshly connected socket and leaves it in the
// transmission phase. Yields. Errors carry the reason, with the server's
// message when it sent one, e.g. "Requested export not available: export
// 'x' not present", "Server does not support STARTTLS", "TLS negotiation
// required before option 'go'" (the server demands TLS),
// "Invalid magic received", "server sent an invalid BLOCK_SIZE ...". The
// socket is unusable after an error (the caller closes it).
Result<ExportInfo> coroutine_fn co_client_handshake(CoSocket &sock, const ClientConfig &cfg);

// One export as `nbd --list` prints it.
struct ListedExport {
    std::string name;
    std::string description;
    uint64_t size = 0;
    uint16_t flags = 0;
    uint32_t min_block = 0, opt_block = 0, max_block = 0;   // 0: not sent
    std::vector<std::string> contexts;    // LIST_META_CONTEXT with no query: every context
    bool extended = false;                // extended headers were negotiated
    bool structured = false;
};

// `--list`: handshake (STARTTLS when cfg.tls_creds, extended headers or
// structured replies), LIST, then INFO (NAME, DESCRIPTION, BLOCK_SIZE)
// and LIST_META_CONTEXT for each export, then ABORT. cfg.export_name and
// meta_contexts are ignored. Yields. Errors as co_client_handshake's; an
// export whose INFO fails is skipped.
Result<std::vector<ListedExport>> coroutine_fn co_client_list(CoSocket &sock, const ClientConfig &cfg);

// How a transmission-phase request ended, beyond its errno.
enum class ReqOutcome {
    kOk,          // the server answered (ret may still be a server error)
    kConnLost,    // the socket failed or closed: the request may be re-sent on a new connection
    kProtocol,    // the server broke the protocol (fatal; the connection is dead)
    kClosed,      // shutdown() was called (requests fail with -ESHUTDOWN)
};

// One extent of a block-status answer.
struct Extent {
    uint64_t length = 0;
    uint32_t flags = 0;
};

// The transmission phase on one connection. Any number of coroutines may
// issue requests at once (up to max_in_flight on the wire; more wait for a
// slot); a reader coroutine, started by start(), reads the replies and
// completes the requests they name, reading READ payloads straight into
// the caller's buffers. Created and used in the socket's AioContext only.
//
// Once broken (socket error, protocol error, shutdown()) every waiting and
// later request fails with -EIO (-ESHUTDOWN after shutdown()) and the
// outcome says why; the object must then be kept alive until reader_done().
class NbdClientConnection : public std::enable_shared_from_this<NbdClientConnection> {
  public:
    static constexpr int kDefaultMaxInFlight = 64;

    NbdClientConnection(std::unique_ptr<CoSocket> sock, const ExportInfo &info,
                        int max_in_flight = kDefaultMaxInFlight);
    ~NbdClientConnection();
    NbdClientConnection(const NbdClientConnection &) = delete;
    NbdClientConnection &operator=(const NbdClientConnection &) = delete;

    const ExportInfo &info() const { return info_; }

    // Starts the reply reader (a coroutine holding a reference to this
    // object until it ends). Call once, from the socket's thread.
    void start();

    // READ of [offset, offset+qiov.size()) into qiov. Holes read as zeros.
    // Returns 0 or -errno (the server's error, or -EIO when the connection
    // broke: see *outcome). Yields.
    int coroutine_fn co_read(uint64_t offset, IOVector &qiov, uint16_t flags, ReqOutcome *outcome);
    // WRITE of qiov at offset (flags: kCmdFlagFua). Yields.
    int coroutine_fn co_write(uint64_t offset, const IOVector &qiov, uint16_t flags, ReqOutcome *outcome);
    // A payload-free command: FLUSH, TRIM, WRITE_ZEROES, CACHE. Yields.
    int coroutine_fn co_command(uint16_t cmd, uint64_t offset, uint64_t length, uint16_t flags,
                                ReqOutcome *outcome);
    // BLOCK_STATUS with REQ_ONE for context ctx_id: the first extent of
    // [offset, offset+length), clamped to the request (at least one byte).
    // Yields.
    int coroutine_fn co_block_status(uint64_t offset, uint64_t length, uint32_t ctx_id, Extent *out,
                                     ReqOutcome *outcome);

    // Sends DISC (best effort, after waiting for nothing) and shuts the
    // socket down. Yields.
    void coroutine_fn co_disconnect();
    // Declares the connection broken (requests fail with -ESHUTDOWN) and
    // stops the socket; the reader then ends. Any context of the thread.
    void shutdown();
    bool broken() const { return broken_; }
    // Whether the reader has ended (after a break or shutdown).
    bool reader_done() const { return reader_done_; }
    // Waits until the reader has ended: yields in a coroutine, else runs
    // the current AioContext's loop. Call after shutdown().
    void wait_reader_done();
    // The error that broke the connection (for messages); "" while working.
    const std::string &break_reason() const { return break_reason_; }

  private:
    struct Request;
    struct ReadState;

    int coroutine_fn submit(Request *req, const IOVector *payload);
    static void flush_bh(void *opaque);
    void coroutine_fn flusher();
    int coroutine_fn acquire_slot(Request *req);
    void release_slot(Request *req);
    static void reader_entry(void *opaque);
    void coroutine_fn reader_loop();
    int coroutine_fn handle_simple(Request *req, uint32_t error);
    int coroutine_fn handle_chunk(Request *req, uint16_t flags, uint16_t type, uint64_t length, bool *done);
    int coroutine_fn read_data_chunk(Request *req, uint64_t length);
    int coroutine_fn read_hole_chunk(Request *req, uint64_t length);
    int coroutine_fn read_status_chunk(Request *req, uint16_t type, uint64_t length);
    int coroutine_fn read_error_chunk(Request *req, uint16_t type, uint64_t length);
    int coroutine_fn read_into_qiov(IOVector &qiov, size_t off, size_t len);
    int coroutine_fn discard_bytes(uint64_t len);
    // Reads exactly len bytes of the reply stream: from rbuf_ first, then
    // (plain sockets, len < kDirectRead) by refilling rbuf_ with whatever
    // the socket holds, else straight into dst. As CoSocket::co_read_full.
    int coroutine_fn co_recv(void *dst, size_t len, bool *eof = nullptr);
    Request *find_request(uint64_t cookie);
    void complete(Request *req);
    void break_connection(ReqOutcome why, const std::string &reason);

    static constexpr size_t kReadBuffer = 32 << 10;
    static constexpr size_t kDirectRead = 4096;

    std::unique_ptr<CoSocket> sock_;
    std::unique_ptr<uint8_t[]> rbuf_;   // reply bytes read ahead (plain sockets)
    size_t rpos_ = 0, rend_ = 0;        // unread part of rbuf_
    ExportInfo info_;
    const int max_in_flight_;
    std::vector<Request *> slots_;      // indexed by cookie & 0xffff; nullptr = free
    std::vector<int> free_slots_;
    uint64_t next_gen_ = 1;
    CoQueue slot_waiters_;
    CoMutex send_lock_;                 // held by whoever writes to the socket
    static constexpr size_t kMaxSendIov = 512;
    std::vector<struct iovec> sendq_;   // queued request bytes, in order
    std::unique_ptr<BottomHalf> flush_bh_;
    bool flushing_ = false;             // the flusher coroutine is running
    bool broken_ = false;
    ReqOutcome broken_why_ = ReqOutcome::kOk;
    std::string break_reason_;
    bool started_ = false;
    bool reader_done_ = false;
    Coroutine *done_waiter_ = nullptr;
    std::shared_ptr<NbdClientConnection> self_ref_;   // held by the reader while it runs
};

// The export size check every client does: a size that does not fit a
// signed 64-bit length is refused ("export size too large").
Status check_export_info(const ExportInfo &info);

} // namespace nbd
} // namespace bg
