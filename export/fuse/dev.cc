// The /dev/fuse transport: requests are read from the queue's /dev/fuse
// descriptor (up to kMaxBatch per wake-up) and answered with one writev.
//
// Each request is read with one readv into a buffer it owns: the in-header
// and the first argument bytes (up to fuse_write_in, kFuseHeaderArea) into
// hdr, the rest into the page-aligned payload buffer, so that WRITE data
// lands at payload[0]. Nothing a request uses is shared with the next read,
// so a yield can never see its data overwritten. Requests are pooled.
//
// Threading: the queue's thread only.
#include <sys/uio.h>
#include <unistd.h>

#include "export/fuse/internal.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr int kMaxBatch = 64;     // requests read per wake-up
constexpr int kMaxPooled = 128;   // free requests (1 MiB each) kept

class DevTransport final : public FuseTransport {
  public:
    explicit DevTransport(FuseQueue *q) : q_(q) {}
    ~DevTransport() override;
    void start() override { q_->ctx->set_fd_handler(q_->fd, &DevTransport::on_readable, nullptr, this); }
    void stop() override { q_->ctx->set_fd_handler(q_->fd, nullptr, nullptr, nullptr); }
    void send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len) override;
    void release(FuseRequest *req) override;

  private:
    static void on_readable(void *opaque) { static_cast<DevTransport *>(opaque)->read_requests(); }
    void read_requests();
    bool read_one();
    FuseRequest *get();

    FuseQueue *q_;
    FuseRequest *pool_ = nullptr;   // free requests
    int pooled_ = 0;
};

DevTransport::~DevTransport()
{
    while (FuseRequest *r = pool_) {
        pool_ = r->next;
        delete r;
    }
}

FuseRequest *DevTransport::get()
{
    FuseRequest *r = pool_;
    if (r) {
        pool_ = r->next;
        pooled_--;
        return r;
    }
    r = new FuseRequest;
    r->q = q_;
    r->transport = this;
    r->payload = aligned_alloc_buf(4096, kFusePayloadSize);
    return r;
}

// Keeps at most kMaxPooled: a burst of max_background (65535) requests must
// not pin 1 MiB buffers for each of them for ever.
void DevTransport::release(FuseRequest *req)
{
    if (pooled_ >= kMaxPooled) {
        delete req;
        return;
    }
    req->next = pool_;
    pool_ = req;
    pooled_++;
}

void DevTransport::read_requests()
{
    q_->woken();
    for (int i = 0; i < kMaxBatch && !q_->exp->halted(); i++) {
        if (!read_one()) break;
    }
    q_->publish_counters();
    q_->batch_done();
}

// Reads and delivers one request. False when there is nothing more to read
// now (or the mount is gone).
bool DevTransport::read_one()
{
    FuseRequest *req = get();
    struct iovec iov[2] = {{req->hdr, kFuseHeaderArea}, {req->payload.get(), kFusePayloadSize}};
    ssize_t n = readv(q_->fd, iov, 2);
    if (n < 0) {
        int e = errno;
        release(req);
        if (e == EINTR || e == ENOENT) return true;   // ENOENT: the request was interrupted
        if (e == EAGAIN) return false;
        if (e != ENODEV) log_error("export '%s': reading /dev/fuse: %s", q_->exp->id().c_str(), strerror(e));
        q_->exp->unmounted_externally();
        return false;
    }
    size_t len = static_cast<size_t>(n);
    if (len < sizeof(fuse_in_header) || req->in().len != static_cast<uint32_t>(n)) {
        log_error("export '%s': malformed request from the kernel (%zd bytes)", q_->exp->id().c_str(), n);
        release(req);
        return true;
    }
    req->args[0] = req->hdr + sizeof(fuse_in_header);
    req->args_len[0] = std::min(len, kFuseHeaderArea) - sizeof(fuse_in_header);
    req->args[1] = req->payload.get();
    req->args_len[1] = req->payload_len = len > kFuseHeaderArea ? len - kFuseHeaderArea : 0;
    q_->fuse_reads.fetch_add(1, std::memory_order_relaxed);
    q_->received(*req);
    q_->deliver(req);
    return true;
}

void DevTransport::send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len)
{
    struct iovec iov[2] = {{const_cast<fuse_out_header *>(&oh), sizeof(oh)}, {const_cast<void *>(data), len}};
    for (;;) {
        ssize_t w = writev(q_->fd, iov, len ? 2 : 1);
        if (w >= 0) break;
        if (errno == EINTR) continue;
        // ENOENT: the kernel gave up on the request (interrupted); fine.
        if (errno != ENOENT && errno != ENODEV) {
            log_warn("export '%s': replying to %s: %s", q_->exp->id().c_str(), fuse_opcode_name(req->in().opcode),
                     strerror(errno));
        }
        break;
    }
}

} // namespace

std::unique_ptr<FuseTransport> fuse_dev_transport(FuseQueue *q)
{
    return std::make_unique<DevTransport>(q);
}

} // namespace bg
