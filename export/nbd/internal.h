// The NBD server's parts (export/nbd/): the process-wide server (listeners,
// connections, the table of exports by name), one connection (negotiation
// and transmission), and the export (a BlockBackend on a node, its clients).
// Users' documentation: docs/nbd.md; the public entry points: export/nbd.h.
//
// Threading model: everything runs in the main thread's AioContext. A
// connection is one receive coroutine (negotiation, then one request header
// and payload after another) plus one coroutine per request in flight;
// replies go out whole, in any order, serialised by the connection's send
// mutex. Nothing here blocks: socket I/O yields (util/co-socket.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "export/export.h"
#include "export/nbd.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine-lock.h"
#include "util/nbd-proto.h"

namespace bg {

class NbdExport;
class NbdConn;

// The metadata contexts of an export: ids as QEMU numbers them
// (base:allocation 0, qemu:allocation-depth 1, bitmap i 2+i).
constexpr uint32_t kNbdCtxBase = 0;
constexpr uint32_t kNbdCtxDepth = 1;
constexpr uint32_t kNbdCtxBitmap0 = 2;

// Requests a connection keeps in flight before it stops reading headers,
// and READ/WRITE bytes (buffers) in flight past which it stops too: a
// client that never reads its replies holds at most this much (plus one
// request of up to 32 MiB).
constexpr int kNbdMaxInFlight = 128;
constexpr uint64_t kNbdMaxInFlightBytes = 64ULL << 20;
// SO_SNDBUF asked for on accepted unix sockets (server.cc).
constexpr int kNbdUnixSndBuf = 4 << 20;
// A client must finish negotiation within this time.
constexpr int64_t kNbdHandshakeLimitNs = 10LL * 1000 * 1000 * 1000;

class NbdServer {
  public:
    static NbdServer *instance();   // nullptr when not running
    static Status start(const NbdServerOptions &opts);
    // Closes the listeners and drops every connection, waiting for them to
    // end (in a coroutine it yields, else it runs the loop).
    static Status stop();

    const NbdServerOptions &options() const { return opts_; }
    // The exports by name: process-wide, kept across a stop and a start.
    static NbdExport *find_export(const std::string &name);
    static const std::vector<std::pair<std::string, NbdExport *>> &exports();
    static Status register_export(const std::string &name, NbdExport *exp);
    static void unregister_export(const std::string &name, NbdExport *exp);
    // Whether clients must start TLS. The credentials are the ones found at
    // start() and held until the server stops, as QEMU holds them: deleting
    // the object (object-del) does not change what connections get. The
    // tls-authz object is looked up by id at each connection, as in QEMU.
    bool tls_required() const { return tls_creds_ != nullptr; }
    const std::shared_ptr<TlsCreds> &tls_creds() const { return tls_creds_; }

    // Connections: called by NbdConn as it starts and ends.
    void conn_ended(NbdConn *c);
    size_t conn_count() const { return conns_.size(); }
    void set_client_hook(NbdClientHook fn) { client_hook_ = std::move(fn); }
    // Starts serving an already connected socket (the fuzz target, tests).
    NbdConn *serve_fd(int fd);

  private:
    NbdServer() = default;
    ~NbdServer();
    static void on_accept(void *opaque);
    void update_accepting();

    NbdServerOptions opts_;

    std::shared_ptr<TlsCreds> tls_creds_;   // null without tls-creds
    AioContext *ctx_ = nullptr;
    int listen_fd_ = -1;
    bool accepting_ = false;
    std::string unix_path_;   // removed at stop
    std::vector<NbdConn *> conns_;
    NbdClientHook client_hook_;
};

// One exported node.
class NbdExport : public BlockExport {
  public:
    ~NbdExport() override;
    static Result<std::unique_ptr<BlockExport>> create(BlockGraph &graph, const BlockExportOptions &opts);

    void shutdown() override;
    Status check_safe_delete() const override;
    void drop_clients() override;
    ExportStats stats() const override { return stats_; }
    BlockNode *node() const override { return blk_ ? blk_->node() : nullptr; }
    std::string stats_text() const override;

    const std::string &name() const { return name_; }
    const std::string &description() const { return description_; }
    BlockBackend *blk() const { return blk_.get(); }
    bool writable() const { return writable_; }
    bool allocation_depth() const { return allocation_depth_; }
    const std::vector<std::string> &bitmaps() const { return bitmaps_; }
    BlockNode *bitmap_node(size_t i) const { return bitmap_nodes_[i]; }
    int64_t size() const { return blk_ ? blk_->getlength() : 0; }
    // The transmission flags (QEMU's: 0xded writable, 0x58f read-only,
    // before structured replies add DF).
    uint16_t tx_flags(bool structured) const;
    uint32_t request_alignment() const;
    uint32_t max_block() const;

    void attach(NbdConn *c) { clients_.push_back(c); }
    void detach(NbdConn *c);
    size_t client_count() const { return clients_.size(); }
    ExportStats &counters() { return stats_; }

  private:
    NbdExport() = default;
    Status start(BlockGraph &graph, const BlockExportOptions &opts);

    std::string name_, description_;
    bool writable_ = false;
    bool allocation_depth_ = false;
    bool registered_ = false;
    bool shut_down_ = false;
    std::unique_ptr<BlockBackend> blk_;
    std::vector<std::string> bitmaps_;         // names, in the order given
    std::vector<BlockNode *> bitmap_nodes_;    // the node holding each
    std::vector<NbdConn *> clients_;
    ExportStats stats_;
};

// One request in flight (pooled by the connection).
struct NbdRequest {
    NbdConn *conn = nullptr;
    nbd::Request hdr;
    void *buf = nullptr;         // payload (WRITE) or read data
    size_t buf_cap = 0;
    int error = 0;               // validation error to report (positive errno), 0 if none
    std::string errmsg;
    NbdRequest *next_free = nullptr;
};

class NbdConn {
  public:
    NbdConn(NbdServer *server, int fd);
    ~NbdConn();
    void start();
    // Stops the connection: its socket is shut down, the receive loop ends
    // and the connection frees itself once its requests are done.
    void close();
    NbdExport *exp() const { return exp_; }

  private:
    static void run_entry(void *opaque);
    void coroutine_fn run();

    // ---- negotiation (negotiate.cc). Each returns 1 to enter
    // transmission, 0 to go on, < 0 to drop the connection.
    int coroutine_fn negotiate();
    int coroutine_fn handle_option(uint32_t opt, uint32_t len);
    int coroutine_fn opt_export_name(uint32_t len);
    int coroutine_fn opt_list(uint32_t len);
    int coroutine_fn opt_starttls(uint32_t len);
    int coroutine_fn opt_info_go(uint32_t opt, uint32_t len);
    int coroutine_fn opt_meta_context(uint32_t opt, uint32_t len);
    int coroutine_fn send_info_go_replies(uint32_t opt, NbdExport *e, bool want_name, bool want_bs);
    int coroutine_fn send_rep(uint32_t opt, uint32_t type, const void *data, size_t len);
    int coroutine_fn send_err(uint32_t opt, uint32_t type, const std::string &msg);
    int coroutine_fn drop_option_data(uint32_t len);
    int coroutine_fn read_opt(void *buf, size_t len);
    void select_export(NbdExport *e);

    // ---- transmission (transmit.cc)
    void coroutine_fn transmit();
    int coroutine_fn receive_request(NbdRequest *r);
    int coroutine_fn co_recv(void *dst, size_t len, bool *eof);
    static void request_entry(void *opaque);
    void coroutine_fn process(NbdRequest *r);
    int coroutine_fn do_read(NbdRequest *r);
    int coroutine_fn do_block_status(NbdRequest *r);
    int coroutine_fn do_simple_cmd(NbdRequest *r);
    int coroutine_fn send_reply_error(NbdRequest *r, int err, const std::string &msg);
    int coroutine_fn send_reply_done(NbdRequest *r);
    int coroutine_fn send_locked(const struct iovec *iov, int n);
    // Builds a reply/chunk header into buf; returns its size.
    size_t chunk_header(uint8_t *buf, const NbdRequest *r, uint16_t flags, uint16_t type, uint64_t len) const;
    size_t simple_header(uint8_t *buf, uint64_t cookie, uint32_t err) const;
    NbdRequest *alloc_request();
    void free_request(NbdRequest *r);
    bool ensure_buf(NbdRequest *r, size_t len);
    int coroutine_fn base_allocation_extents(uint64_t off, uint64_t len, bool one, std::vector<uint64_t> *ext);
    int coroutine_fn depth_extents(uint64_t off, uint64_t len, bool one, std::vector<uint64_t> *ext);
    int coroutine_fn bitmap_extents(size_t i, uint64_t off, uint64_t len, bool one, std::vector<uint64_t> *ext);

    friend class NbdServer;
    friend class NbdExport;
    NbdServer *server_;
    std::unique_ptr<CoSocket> sock_;
    Coroutine *co_ = nullptr;
    bool closing_ = false;
    bool attached_ = false;
    bool negotiated_ = false;   // reached transmission (for the client hook)
    bool tls_done_ = false;
    bool fixed_ = false;
    bool no_zeroes_ = false;
    bool structured_ = false;
    bool extended_ = false;
    NbdExport *exp_ = nullptr;
    // Contexts chosen by SET_META_CONTEXT and the export name they were set for.
    std::string meta_export_;
    bool meta_base_ = false, meta_depth_ = false;
    std::vector<bool> meta_bitmaps_;
    bool check_align_ = false;   // the client asked for BLOCK_SIZE

    // Transmission state.
    CoMutex send_lock_;
    int in_flight_ = 0;
    uint64_t in_flight_bytes_ = 0;
    Coroutine *recv_waiting_ = nullptr;   // the receive loop, waiting for a free slot / the end
    NbdRequest *free_list_ = nullptr;
    int pooled_ = 0;
    static constexpr size_t kRecvBufSize = 16384;
    std::unique_ptr<uint8_t[]> rbuf_{new uint8_t[kRecvBufSize]};
    size_t rpos_ = 0, rlen_ = 0;
};

} // namespace bg
