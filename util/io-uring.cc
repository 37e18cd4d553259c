// io_uring backend. See util/io.h for the contract.
#include <liburing.h>

#include <cstdlib>
#include <cstring>

#include "util/aio.h"
#include "util/io-internal.h"
#include "util/io.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr unsigned kDefaultEntries = 256;
constexpr unsigned kReapBatch = 64;

class UringBackend final : public IoBackendOf<UringBackend> {
  public:
    UringBackend(AioContext *ctx) : ctx_(ctx) {}
    ~UringBackend() override;
    Status init(unsigned entries);

    const char *name() const override { return "io_uring"; }
    IoBackendStats stats() const override
    {
        IoBackendStats s = stats_;
        s.inline_requests = inline_requests_;
        return s;
    }
    bool idle() const override { return in_flight_ == 0 && !wait_head_; }

  private:
    friend class IoBackendOf<UringBackend>;
    // Submits req, yields until it is complete, returns req->result.
    int64_t coroutine_fn co_run(IoRequest *req) noexcept;
    void submit(IoRequest *req);
    bool prep(IoRequest *req);
    void flush();
    void reap();
    void reap_cq();
    void finish(IoRequest *req);
    static void on_readable(void *opaque) { static_cast<UringBackend *>(opaque)->reap(); }
    static void on_prepare(void *opaque) { static_cast<UringBackend *>(opaque)->flush(); }
    static bool on_poll(void *opaque) { return io_uring_cq_ready(&static_cast<UringBackend *>(opaque)->ring_) != 0; }

    AioContext *ctx_;
    struct io_uring ring_;
    bool ring_ok_ = false;
    unsigned entries_ = 0;
    unsigned in_flight_ = 0;               // SQEs queued or in the kernel
    IoRequest *wait_head_ = nullptr;       // requests waiting for ring room
    IoRequest *wait_tail_ = nullptr;
    IoBackendStats stats_;
};

Status UringBackend::init(unsigned entries)
{
    const char *dis = getenv("BLOCKGRAPH_DISABLE_IO_URING");
    if (dis && strcmp(dis, "1") == 0) return make_error(ENOSYS, "io_uring disabled by BLOCKGRAPH_DISABLE_IO_URING");
    entries_ = entries ? entries : kDefaultEntries;
    int r = uring_init(&ring_, entries_, 0);
    if (r < 0) return errno_error(-r, "io_uring_queue_init");
    ring_ok_ = true;
    // The kernel may round entries up; never keep more in flight than the SQ holds.
    entries_ = *ring_.sq.kring_entries;
    ctx_->set_fd_handler(ring_.ring_fd, &UringBackend::on_readable, nullptr, this, &UringBackend::on_poll);
    ctx_->add_prepare_hook(&UringBackend::on_prepare, this);
    return {};
}

UringBackend::~UringBackend()
{
    if (!ring_ok_) return;
    if (in_flight_) log_warn("io_uring: closing with %u requests in flight", in_flight_);
    ctx_->remove_prepare_hook(&UringBackend::on_prepare, this);
    ctx_->set_fd_handler(ring_.ring_fd, nullptr, nullptr, nullptr);
    io_uring_queue_exit(&ring_);
}

bool UringBackend::prep(IoRequest *req)
{
    unsigned enters = 0;
    struct io_uring_sqe *sqe = uring_get_sqe(&ring_, &enters, "io_uring_submit");
    stats_.enters += enters;
    if (!sqe) return false;
    switch (req->op) {
    case IoRequest::kRead:
        io_uring_prep_readv(sqe, req->fd, req->cur_iov(), req->cur_iovcnt(), req->cur_offset());
        break;
    case IoRequest::kWrite:
        io_uring_prep_writev(sqe, req->fd, req->cur_iov(), req->cur_iovcnt(), req->cur_offset());
        break;
    case IoRequest::kFsync:
        io_uring_prep_fsync(sqe, req->fd, req->datasync ? IORING_FSYNC_DATASYNC : 0);
        break;
    case IoRequest::kFallocate:
        io_uring_prep_fallocate(sqe, req->fd, req->mode, req->offset, req->total);
        break;
    }
    io_uring_sqe_set_data(sqe, req);
    in_flight_++;
    stats_.submissions++;
    return true;
}

void UringBackend::submit(IoRequest *req)
{
    if (in_flight_ >= entries_ || wait_head_ || !prep(req)) {
        // Wait for room, in order; reap() moves us into the ring.
        stats_.queue_full_waits++;
        req->next = nullptr;
        if (wait_tail_) wait_tail_->next = req;
        else wait_head_ = req;
        wait_tail_ = req;
    }
}

void UringBackend::flush()
{
    stats_.enters += uring_flush(&ring_, "io_uring_submit");
}

void UringBackend::finish(IoRequest *req)
{
    req->completed = true;
    stats_.requests++;
    if (!req->co || req->co == coroutine_self()) return;   // our own, reaped in co_run()
    // From the loop: every coroutine completed in this round is entered in
    // one chain after the fd handlers (with the new FUSE requests, say).
    if (in_coroutine()) coroutine_wake(req->co);
    else ctx_->co_enter_batched(req->co);
}

void UringBackend::reap()
{
    reap_cq();
    flush();
}

void UringBackend::reap_cq()
{
    for (;;) {
        IoRequest *reqs[kReapBatch];
        int64_t res[kReapBatch];
        unsigned n = 0;
        unsigned head;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(&ring_, head, cqe)
        {
            reqs[n] = static_cast<IoRequest *>(io_uring_cqe_get_data(cqe));
            res[n] = cqe->res;
            if (++n == kReapBatch) break;
        }
        if (n == 0) break;
        io_uring_cq_advance(&ring_, n);
        in_flight_ -= n;
        // Requests that wait for room go first, in order, before resubmissions.
        while (wait_head_ && in_flight_ < entries_) {
            IoRequest *w = wait_head_;
            if (!prep(w)) break;
            wait_head_ = w->next;
            if (!wait_head_) wait_tail_ = nullptr;
        }
        for (unsigned i = 0; i < n; i++) {
            if (io_request_advance(reqs[i], res[i])) {
                stats_.resubmissions++;
                submit(reqs[i]);
            } else {
                finish(reqs[i]);
            }
        }
    }
}

int64_t UringBackend::co_run(IoRequest *req) noexcept
{
    req->co = coroutine_self();
    if (!req->co) {
        log_error("io_uring: I/O issued outside a coroutine");
        abort();
    }
    submit(req);
    if (coroutine_chain_last() && !wait_head_) {
        // Nothing else runs before the loop would submit this: submit now,
        // and if the kernel completed it inline (page-cache hits do) go on
        // without yielding. Other completions found here wake their
        // coroutines after this one yields or terminates.
        flush();
        reap_cq();
    }
    while (!req->completed) coroutine_yield();
    return req->result;
}

} // namespace

int uring_init(struct io_uring *ring, unsigned entries, unsigned flags)
{
    // The extras, best first; each kernel refusal (older kernels have
    // neither) drops some of them.
    const unsigned extras[] = {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE, IORING_SETUP_CQSIZE, 0};
    int r = -EINVAL;
    for (unsigned extra : extras) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = flags | extra;
        if (extra & IORING_SETUP_CQSIZE) p.cq_entries = entries * 2;
        r = io_uring_queue_init_params(entries, ring, &p);
        if (r >= 0) break;
    }
    return r;
}

unsigned uring_flush(struct io_uring *ring, const char *what)
{
    if (!io_uring_sq_ready(ring)) return 0;
    unsigned enters = 0;
    int r;
    do {
        r = io_uring_submit(ring);
        enters++;
    } while (r == -EINTR);
    if (r < 0 && r != -EAGAIN && r != -EBUSY) log_error("%s: %s", what, strerror(-r));
    return enters;
}

struct io_uring_sqe *uring_get_sqe(struct io_uring *ring, unsigned *enters, const char *what)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe) return sqe;
    // The SQ is full of prepared entries: hand them over and retry.
    *enters += uring_flush(ring, what);
    return io_uring_get_sqe(ring);
}

Result<std::unique_ptr<IoBackend>> IoBackend::new_uring(AioContext *ctx, unsigned entries)
{
    auto b = std::make_unique<UringBackend>(ctx);
    Status s = b->init(entries);
    if (!s.ok()) return s.error();
    return std::unique_ptr<IoBackend>(std::move(b));
}

} // namespace bg
