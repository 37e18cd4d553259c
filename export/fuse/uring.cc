// The FUSE-over-io_uring transport (Linux >= 6.14, docs/fuse-export.md).
//
// After INIT the queue registers kFuseRingDepth entries for each kernel
// ring queue it serves on an io_uring of its own (128-byte SQEs,
// IORING_OP_URING_CMD on the queue's /dev/fuse descriptor). Each entry is
// a request with its own header area and payload buffer: the kernel writes
// a request into it and posts a completion; the request's coroutine runs;
// the reply is written into the same entry and sent with COMMIT_AND_FETCH,
// which also re-arms the entry. The commits of one loop round go to the
// kernel with one io_uring_enter (the loop's prepare hook), through the
// ring helpers of util/io-internal.h.
//
// Threading: the queue's thread only, except close() (main thread, once no
// request is in flight).
#include <liburing.h>

#include "export/fuse/internal.h"
#include "util/io-internal.h"
#include "util/log.h"

namespace bg {

namespace {

// A ring entry: a request whose header and first argument the kernel writes
// into uh and whose payload goes to payload; the reply goes back the same
// way.
struct RingEntry : FuseRequest {
    fuse_uapi::UringReqHeader uh{};
    uint16_t qid = 0;                 // the kernel ring queue it belongs to
    struct iovec reg_iov[2] = {};     // uh and payload, as registered
};

class RingTransport final : public FuseTransport {
  public:
    explicit RingTransport(FuseQueue *q) : q_(q), what_("export '" + q->exp->id() + "': FUSE ring") {}
    ~RingTransport() override { close(); }
    void start() override;
    void stop() override;
    void send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len) override;
    void release(FuseRequest *req) override;
    void close() override;

  private:
    static void on_readable(void *opaque) { static_cast<RingTransport *>(opaque)->reap(); }
    static void on_prepare(void *opaque) { static_cast<RingTransport *>(opaque)->flush(); }
    static bool on_poll(void *opaque) { return io_uring_cq_ready(&static_cast<RingTransport *>(opaque)->ring_) != 0; }
    void prep(RingEntry *e, uint32_t cmd);
    void flush();
    void reap();
    void entry_failed(int res);

    FuseQueue *q_;
    std::string what_;                // prefix of messages
    struct io_uring ring_;
    bool ring_ok_ = false;
    bool stopped_ = false;            // stop() ran: nothing flushes in the loop any more
    std::vector<std::unique_ptr<RingEntry>> entries_;
};

void RingTransport::start()
{
    unsigned n = static_cast<unsigned>(q_->ring_qids.size()) * kFuseRingDepth;
    int r = uring_init(&ring_, n, IORING_SETUP_SQE128);   // COOP_TASKRUN too (util/io-internal.h)
    if (r < 0) {
        log_warn("export '%s': FUSE-over-io_uring: cannot set up a ring: %s; requests are read from /dev/fuse",
                 q_->exp->id().c_str(), strerror(-r));
        return;
    }
    ring_ok_ = true;
    for (uint16_t qid : q_->ring_qids) {
        for (unsigned i = 0; i < kFuseRingDepth; i++) {
            auto e = std::make_unique<RingEntry>();
            e->q = q_;
            e->transport = this;
            e->payload = aligned_alloc_buf(4096, kFusePayloadSize);
            e->qid = qid;
            e->reg_iov[0] = {&e->uh, sizeof(e->uh)};
            e->reg_iov[1] = {e->payload.get(), kFusePayloadSize};
            prep(e.get(), fuse_uapi::kUringCmdRegister);
            entries_.push_back(std::move(e));
        }
    }
    q_->ctx->set_fd_handler(ring_.ring_fd, &RingTransport::on_readable, nullptr, this, &RingTransport::on_poll);
    q_->ctx->add_prepare_hook(&RingTransport::on_prepare, this);
    flush();
    log_info("export '%s': FUSE-over-io_uring: %zu kernel queue(s) x %u entries registered in this thread",
             q_->exp->id().c_str(), q_->ring_qids.size(), kFuseRingDepth);
}

// Commits prepared so far go out now; later ones at once from send().
void RingTransport::stop()
{
    stopped_ = true;
    if (!ring_ok_) return;
    flush();
    q_->ctx->set_fd_handler(ring_.ring_fd, nullptr, nullptr, nullptr);
    q_->ctx->remove_prepare_hook(&RingTransport::on_prepare, this);
}

// The kernel cancels the entries; their buffers stay until we are freed.
void RingTransport::close()
{
    if (ring_ok_) io_uring_queue_exit(&ring_);
    ring_ok_ = false;
}

void RingTransport::prep(RingEntry *e, uint32_t cmd)
{
    unsigned enters = 0;
    struct io_uring_sqe *sqe = uring_get_sqe(&ring_, &enters, what_.c_str());
    q_->ring_enters.fetch_add(enters, std::memory_order_relaxed);
    if (!sqe) {
        // Cannot happen: the ring has one SQE per entry and an entry has at
        // most one command outstanding.
        log_error("%s full", what_.c_str());
        abort();
    }
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = q_->fd;
    sqe->cmd_op = cmd;
    sqe->addr = reinterpret_cast<uint64_t>(e->reg_iov);
    sqe->len = 2;
    fuse_uapi::UringCmdReq cr;
    memset(&cr, 0, sizeof(cr));
    cr.qid = e->qid;
    cr.commit_id = cmd == fuse_uapi::kUringCmdCommitAndFetch ? e->uh.ent.commit_id : 0;
    memcpy(sqe->cmd, &cr, sizeof(cr));
    io_uring_sqe_set_data(sqe, e);
}

void RingTransport::flush()
{
    if (!ring_ok_) return;
    q_->ring_enters.fetch_add(uring_flush(&ring_, what_.c_str()), std::memory_order_relaxed);
}

// The header goes into in_out, the data into the payload buffer (READ data
// is there already), and the commit also fetches the entry's next request.
void RingTransport::send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len)
{
    auto *e = static_cast<RingEntry *>(req);
    memcpy(e->uh.in_out, &oh, sizeof(oh));
    uint8_t *pl = e->payload.get();
    if (len && data != pl) memmove(pl, data, len);
    e->uh.ent.payload_sz = static_cast<uint32_t>(len);
    if (!ring_ok_) return;   // closed: the kernel has cancelled the entry
    prep(e, fuse_uapi::kUringCmdCommitAndFetch);
    if (stopped_) flush();   // no loop round flushes it any more
}

// An entry goes back to the kernel even for a request that wants no reply
// (FORGET, INTERRUPT): an empty commit re-arms it.
void RingTransport::release(FuseRequest *req)
{
    if (req->replied) return;
    fuse_out_header oh;
    oh.unique = req->in().unique;
    oh.error = 0;
    oh.len = sizeof(oh);
    send(req, oh, nullptr, 0);
}

void RingTransport::entry_failed(int res)
{
    // Cancelled at teardown (ENOTCONN, ECANCELED), or the kernel refused the
    // entry: requests keep coming through /dev/fuse while any kernel queue
    // has no entry.
    uint64_t dead = q_->ring_dead.fetch_add(1, std::memory_order_relaxed);
    if (res == -ENOTCONN || res == -ECANCELED) return;
    int none = 0;
    q_->ring_error.compare_exchange_strong(none, -res);
    if (dead == 0 && !q_->exp->halted()) {
        log_warn("export '%s': FUSE-over-io_uring: the kernel refused a ring entry: %s; requests are read "
                 "from /dev/fuse",
                 q_->exp->id().c_str(), strerror(-res));
    }
}

void RingTransport::reap()
{
    q_->woken();
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&ring_, head, cqe)
    {
        n++;
        auto *e = static_cast<RingEntry *>(io_uring_cqe_get_data(cqe));
        if (cqe->res < 0) {
            entry_failed(cqe->res);
            continue;
        }
        memcpy(e->hdr, e->uh.in_out, sizeof(fuse_in_header));
        e->args[0] = e->uh.op_in;
        e->args_len[0] = sizeof(e->uh.op_in);
        e->payload_len = e->uh.ent.payload_sz;
        q_->ring_fetches.fetch_add(1, std::memory_order_relaxed);
        q_->deliver(e);
    }
    io_uring_cq_advance(&ring_, n);
    q_->publish_counters();
}

} // namespace

std::unique_ptr<FuseTransport> fuse_ring_transport(FuseQueue *q)
{
    return std::make_unique<RingTransport>(q);
}

} // namespace bg
