// The NBD client's transmission phase (util/nbd-client.h):
// NbdClientConnection.
//
// Requests: a coroutine takes a free slot (the cookie is the slot index in
// its low 16 bits and a generation above, so a late or duplicated reply
// never reaches a reused slot), queues its header and payload iovecs in
// sendq_ and sleeps until the reader completes it. A bottom half starts
// the flusher coroutine, which writes everything queued with one writev
// (per kMaxSendIov pieces): requests issued in the same loop iteration go
// out together. The queued buffers stay valid because their requests wait
// for replies; a broken connection empties the queue as it fails them.
//
// Replies: one reader coroutine reads every header (through a small
// buffer on plain sockets: one recv often brings several replies; payload
// remainders of kDirectRead bytes or more bypass it), finds the request by
// cookie and reads the payload itself: READ data straight into the
// caller's IOVector at the offset the chunk names (after checking the chunk
// lies inside the request and overlaps nothing already received), holes
// as memset, block status into the caller's Extent. Anything that breaks
// the protocol breaks the connection: every request in flight fails.
#include <sys/socket.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <map>

#include "util/aio.h"
#include "util/log.h"
#include "util/nbd-client.h"
#include "util/nbd-proto.h"

namespace bg::nbd {

namespace {
constexpr uint64_t kSlotMask = 0xffff;
// Error chunks and unknown error-type chunks: payloads we read (then drop).
constexpr uint64_t kMaxErrorChunk = kMaxStringSize + 64;
} // namespace

struct NbdClientConnection::Request {
    uint16_t type = 0;
    uint16_t flags = 0;
    uint64_t offset = 0;
    uint64_t length = 0;
    uint64_t cookie = 0;
    int slot = -1;
    uint8_t hdr[kExtRequestSize];   // the encoded header, queued in sendq_
    Coroutine *co = nullptr;
    bool waiting = false;
    bool done = false;
    int ret = 0;
    ReqOutcome outcome = ReqOutcome::kOk;
    int chunk_err = 0;           // first error chunk's errno (positive)
    // READ
    IOVector *qiov = nullptr;
    uint64_t covered = 0;        // bytes received (data or hole)
    bool whole = false;          // one chunk covered the whole request
    std::map<uint64_t, uint64_t> ranges;   // received ranges (start -> length), relative
    // BLOCK_STATUS
    uint32_t ctx_id = 0;
    Extent *extent = nullptr;
    bool got_status = false;
};

NbdClientConnection::NbdClientConnection(std::unique_ptr<CoSocket> sock, const ExportInfo &info, int max_in_flight)
    : sock_(std::move(sock)), info_(info), max_in_flight_(max_in_flight < 1 ? 1 : max_in_flight)
{
    flush_bh_.reset(AioContext::current()->bh_new(&NbdClientConnection::flush_bh, this));
    slots_.assign(static_cast<size_t>(max_in_flight_), nullptr);
    for (int i = max_in_flight_ - 1; i >= 0; i--) free_slots_.push_back(i);
}

NbdClientConnection::~NbdClientConnection() = default;

void NbdClientConnection::start()
{
    started_ = true;
    self_ref_ = shared_from_this();
    Coroutine *co = coroutine_create(&NbdClientConnection::reader_entry, this);
    AioContext::current()->co_enter(co);
}

void NbdClientConnection::reader_entry(void *opaque)
{
    auto *self = static_cast<NbdClientConnection *>(opaque);
    std::shared_ptr<NbdClientConnection> ref = std::move(self->self_ref_);
    self->reader_loop();
    self->reader_done_ = true;
    if (Coroutine *w = self->done_waiter_) {
        self->done_waiter_ = nullptr;
        coroutine_wake(w);
    }
    // ref goes here: the connection may be destroyed now.
}

void NbdClientConnection::wait_reader_done()
{
    if (!started_) return;
    if (in_coroutine()) {
        auto ref = shared_from_this();
        while (!reader_done_) {
            done_waiter_ = coroutine_self();
            coroutine_yield();
        }
        return;
    }
    AioContext *ctx = AioContext::current();
    auto ref = shared_from_this();
    while (!reader_done_) ctx->iterate(true);
}

void NbdClientConnection::shutdown()
{
    if (!broken_) break_connection(ReqOutcome::kClosed, "connection closed");
    sock_->shutdown();
}

void NbdClientConnection::break_connection(ReqOutcome why, const std::string &reason)
{
    if (broken_) return;
    broken_ = true;
    broken_why_ = why;
    break_reason_ = reason;
    if (why != ReqOutcome::kClosed) log_warn("nbd: %s", reason.c_str());
    for (size_t i = 0; i < slots_.size(); i++) {
        Request *req = slots_[i];
        if (!req) continue;
        slots_[i] = nullptr;
        req->ret = why == ReqOutcome::kClosed ? -ESHUTDOWN : -EIO;
        req->outcome = why;
        complete(req);
    }
    slot_waiters_.restart_all();
    sendq_.clear();   // their requests have failed: the buffers may go
    sock_->shutdown();
}

void NbdClientConnection::complete(Request *req)
{
    req->done = true;
    if (req->waiting) {
        req->waiting = false;
        coroutine_wake(req->co);
    }
}

int NbdClientConnection::acquire_slot(Request *req)
{
    while (free_slots_.empty() && !broken_) slot_waiters_.wait();
    if (broken_) return -1;
    req->slot = free_slots_.back();
    free_slots_.pop_back();
    req->cookie = (next_gen_++ << 16) | static_cast<uint64_t>(req->slot);
    slots_[static_cast<size_t>(req->slot)] = req;
    return 0;
}

void NbdClientConnection::release_slot(Request *req)
{
    if (req->slot < 0) return;
    if (slots_[static_cast<size_t>(req->slot)] == req) slots_[static_cast<size_t>(req->slot)] = nullptr;
    free_slots_.push_back(req->slot);
    req->slot = -1;
    slot_waiters_.restart_next();
}

int NbdClientConnection::submit(Request *req, const IOVector *payload)
{
    auto failed = [&] {
        req->outcome = broken_why_;
        return broken_why_ == ReqOutcome::kClosed ? -ESHUTDOWN : -EIO;
    };
    if (broken_) return failed();
    if (acquire_slot(req) < 0) return failed();
    nbd::Request wire;
    wire.flags = req->flags;
    wire.type = req->type;
    wire.cookie = req->cookie;
    wire.offset = req->offset;
    wire.length = req->length;
    if (info_.extended && payload) wire.flags |= kCmdFlagPayloadLen;
    size_t n = encode_request(req->hdr, wire, info_.extended);
    sendq_.push_back({req->hdr, n});
    if (payload) sendq_.insert(sendq_.end(), payload->iov(), payload->iov() + payload->niov());
    if (!flushing_) flush_bh_->schedule();
    while (!req->done) {
        req->waiting = true;
        req->co = coroutine_self();
        coroutine_yield();
    }
    release_slot(req);
    return req->ret;
}

int NbdClientConnection::co_read(uint64_t offset, IOVector &qiov, uint16_t flags, ReqOutcome *outcome)
{
    Request req;
    req.type = kCmdRead;
    req.flags = flags;
    req.offset = offset;
    req.length = qiov.size();
    req.qiov = &qiov;
    int ret = submit(&req, nullptr);
    *outcome = req.outcome;
    return ret;
}

int NbdClientConnection::co_write(uint64_t offset, const IOVector &qiov, uint16_t flags, ReqOutcome *outcome)
{
    Request req;
    req.type = kCmdWrite;
    req.flags = flags;
    req.offset = offset;
    req.length = qiov.size();
    int ret = submit(&req, &qiov);
    *outcome = req.outcome;
    return ret;
}

int NbdClientConnection::co_command(uint16_t cmd, uint64_t offset, uint64_t length, uint16_t flags,
                                    ReqOutcome *outcome)
{
    Request req;
    req.type = cmd;
    req.flags = flags;
    req.offset = offset;
    req.length = length;
    int ret = submit(&req, nullptr);
    *outcome = req.outcome;
    return ret;
}

int NbdClientConnection::co_block_status(uint64_t offset, uint64_t length, uint32_t ctx_id, Extent *out,
                                         ReqOutcome *outcome)
{
    Request req;
    req.type = kCmdBlockStatus;
    req.flags = kCmdFlagReqOne;
    req.offset = offset;
    req.length = length;
    req.ctx_id = ctx_id;
    req.extent = out;
    int ret = submit(&req, nullptr);
    *outcome = req.outcome;
    return ret;
}

void NbdClientConnection::co_disconnect()
{
    if (!broken_) {
        uint8_t hdr[kExtRequestSize];
        nbd::Request wire;
        wire.type = kCmdDisc;
        size_t n = encode_request(hdr, wire, info_.extended);
        send_lock_.lock();
        if (!broken_) (void)sock_->co_write_full(hdr, n);
        send_lock_.unlock();
    }
    shutdown();
}

void NbdClientConnection::flush_bh(void *opaque)
{
    auto *self = static_cast<NbdClientConnection *>(opaque);
    if (self->flushing_ || self->sendq_.empty() || self->broken_) return;
    self->flushing_ = true;
    Coroutine *co = coroutine_create(
        [](void *p) { static_cast<NbdClientConnection *>(p)->flusher(); }, self);
    AioContext::current()->co_enter(co);
}

void NbdClientConnection::flusher()
{
    auto ref = shared_from_this();
    std::vector<struct iovec> batch;
    while (!sendq_.empty() && !broken_) {
        batch.clear();
        batch.swap(sendq_);
        send_lock_.lock();
        int ret = 0;
        for (size_t i = 0; i < batch.size() && ret == 0 && !broken_; i += kMaxSendIov) {
            size_t n = std::min(batch.size() - i, kMaxSendIov);
            ret = sock_->co_write_full(batch.data() + i, static_cast<int>(n));
        }
        send_lock_.unlock();
        if (ret < 0 && !broken_) break_connection(ReqOutcome::kConnLost, std::string("send failed: ") + strerror(-ret));
    }
    flushing_ = false;
}

NbdClientConnection::Request *NbdClientConnection::find_request(uint64_t cookie)
{
    uint64_t idx = cookie & kSlotMask;
    if (idx >= slots_.size()) return nullptr;
    Request *req = slots_[idx];
    return req && req->cookie == cookie ? req : nullptr;
}

// ---------------------------------------------------------------- the reader

void NbdClientConnection::reader_loop()
{
    for (;;) {
        uint8_t h[kExtChunkHeaderSize];
        bool eof = false;
        size_t first = info_.extended ? kExtChunkHeaderSize : kSimpleReplySize;
        int ret = co_recv(h, first, &eof);
        if (ret < 0) {
            if (broken_) return;
            std::string why = ret == -ECONNRESET ? "server closed the connection"
                                                 : std::string("read failed: ") + strerror(-ret);
            break_connection(ReqOutcome::kConnLost, why);
            return;
        }
        uint32_t magic = get32(h);
        uint16_t flags = 0, type = 0;
        uint64_t cookie = 0, length = 0;
        bool simple = false;
        uint32_t error = 0;
        if (info_.extended && magic == kExtReplyMagic) {
            flags = get16(h + 4);
            type = get16(h + 6);
            cookie = get64(h + 8);
            length = get64(h + 24);
        } else if (!info_.extended && magic == kSimpleReplyMagic) {
            simple = true;
            error = get32(h + 4);
            cookie = get64(h + 8);
        } else if (info_.structured && magic == kStructuredReplyMagic) {
            ret = co_recv(h + kSimpleReplySize, kChunkHeaderSize - kSimpleReplySize);
            if (ret < 0) {
                break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
                return;
            }
            flags = get16(h + 4);
            type = get16(h + 6);
            cookie = get64(h + 8);
            length = get32(h + 16);
        } else {
            char m[64];
            snprintf(m, sizeof(m), "server sent a reply with invalid magic 0x%08x", magic);
            break_connection(ReqOutcome::kProtocol, m);
            return;
        }
        Request *req = find_request(cookie);
        if (!req) {
            char m[96];
            snprintf(m, sizeof(m), "server replied to unknown cookie 0x%llx", (unsigned long long)cookie);
            break_connection(ReqOutcome::kProtocol, m);
            return;
        }
        bool done = true;
        ret = simple ? handle_simple(req, error) : handle_chunk(req, flags, type, length, &done);
        if (ret < 0) return;   // the connection is broken (req was failed with it)
        if (done) {
            slots_[static_cast<size_t>(req->slot)] = nullptr;
            complete(req);
        }
    }
}

// A simple reply. Returns 0 or, after breaking the connection, -1.
int NbdClientConnection::handle_simple(Request *req, uint32_t error)
{
    if (error) {
        req->ret = -errno_from_wire(error);
        return 0;
    }
    if (req->type == kCmdRead) {
        if (info_.structured) {
            break_connection(ReqOutcome::kProtocol, "server sent a simple reply to a read with structured replies on");
            return -1;
        }
        int ret = read_into_qiov(*req->qiov, 0, req->length);
        if (ret < 0) return -1;
    } else if (req->type == kCmdBlockStatus) {
        break_connection(ReqOutcome::kProtocol, "server sent a simple reply to a block status request");
        return -1;
    }
    req->ret = 0;
    return 0;
}

// One structured or extended chunk (header read, payload not). *done: the
// chunk carried DONE. Returns 0 or, after breaking the connection, -1.
int NbdClientConnection::handle_chunk(Request *req, uint16_t flags, uint16_t type, uint64_t length, bool *done)
{
    *done = flags & kReplyFlagDone;
    int ret;
    if (type == kChunkNone) {
        if (length || !*done) {
            break_connection(ReqOutcome::kProtocol, "server sent a NONE chunk with a payload or without DONE");
            return -1;
        }
        ret = 0;
    } else if (chunk_is_error(type)) {
        ret = read_error_chunk(req, type, length);
    } else if (type == kChunkOffsetData && req->type == kCmdRead) {
        ret = read_data_chunk(req, length);
    } else if (type == kChunkOffsetHole && req->type == kCmdRead) {
        ret = read_hole_chunk(req, length);
    } else if ((type == kChunkBlockStatus || type == kChunkBlockStatusExt) && req->type == kCmdBlockStatus) {
        ret = read_status_chunk(req, type, length);
    } else {
        char m[96];
        snprintf(m, sizeof(m), "server sent an unexpected chunk type %u for a %s request", type, cmd_name(req->type));
        break_connection(ReqOutcome::kProtocol, m);
        return -1;
    }
    if (ret < 0) return -1;
    if (!*done) return 0;
    if (req->chunk_err) {
        req->ret = -req->chunk_err;
    } else if (req->type == kCmdRead && req->covered != req->length) {
        break_connection(ReqOutcome::kProtocol, "server's read reply does not cover the whole request");
        return -1;
    } else if (req->type == kCmdBlockStatus && !req->got_status) {
        break_connection(ReqOutcome::kProtocol, "server's block status reply has no extents");
        return -1;
    } else {
        req->ret = 0;
    }
    return 0;
}

// Records that [start, start+len) (relative to the request) was received;
// false if it leaves the request or overlaps an earlier chunk.
static bool note_range(uint64_t req_len, std::map<uint64_t, uint64_t> &ranges, bool *whole, uint64_t *covered,
                       uint64_t start, uint64_t len)
{
    if (len == 0 || start > req_len || len > req_len - start || *whole) return false;
    if (*covered == 0 && start == 0 && len == req_len) {
        *whole = true;
        *covered = len;
        return true;
    }
    auto it = ranges.upper_bound(start);
    if (it != ranges.end() && it->first < start + len) return false;
    if (it != ranges.begin()) {
        auto prev = std::prev(it);
        if (prev->first + prev->second > start) return false;
    }
    ranges.emplace(start, len);
    *covered += len;
    return true;
}

int NbdClientConnection::read_data_chunk(Request *req, uint64_t length)
{
    uint8_t b[8];
    if (length <= 8) {
        break_connection(ReqOutcome::kProtocol, "server sent an OFFSET_DATA chunk without data");
        return -1;
    }
    int ret = co_recv(b, 8);
    if (ret < 0) {
        break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
        return -1;
    }
    uint64_t off = get64(b), len = length - 8;
    if (off < req->offset ||
        !note_range(req->length, req->ranges, &req->whole, &req->covered, off - req->offset, len)) {
        break_connection(ReqOutcome::kProtocol, "server sent read data outside the request or twice");
        return -1;
    }
    return read_into_qiov(*req->qiov, off - req->offset, len);
}

int NbdClientConnection::read_hole_chunk(Request *req, uint64_t length)
{
    uint8_t b[12];
    if (length != 12) {
        break_connection(ReqOutcome::kProtocol, "server sent an OFFSET_HOLE chunk of the wrong length");
        return -1;
    }
    int ret = co_recv(b, 12);
    if (ret < 0) {
        break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
        return -1;
    }
    uint64_t off = get64(b), len = get32(b + 8);
    if (off < req->offset ||
        !note_range(req->length, req->ranges, &req->whole, &req->covered, off - req->offset, len)) {
        break_connection(ReqOutcome::kProtocol, "server sent a read hole outside the request or twice");
        return -1;
    }
    req->qiov->memset(off - req->offset, 0, len);
    return 0;
}

int NbdClientConnection::read_status_chunk(Request *req, uint16_t type, uint64_t length)
{
    bool ext = type == kChunkBlockStatusExt;
    if (ext != info_.extended) {
        break_connection(ReqOutcome::kProtocol, "server sent the wrong kind of block status chunk");
        return -1;
    }
    size_t head = ext ? 8 : 4, esize = ext ? 16 : 8;
    if (length < head + esize || (length - head) % esize || (length - head) / esize > kMaxExtents ||
        req->got_status) {
        break_connection(ReqOutcome::kProtocol, "server sent an invalid block status chunk");
        return -1;
    }
    uint8_t b[8 + 16];
    int ret = co_recv(b, head + esize);
    if (ret < 0) {
        break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
        return -1;
    }
    uint32_t id = get32(b);
    if (id != req->ctx_id || (ext && get32(b + 4) != (length - head) / esize)) {
        break_connection(ReqOutcome::kProtocol, "server sent block status for a context not asked for");
        return -1;
    }
    uint64_t elen = ext ? get64(b + head) : get32(b + head);
    uint64_t eflags = ext ? get64(b + head + 8) : get32(b + head + 4);
    if (elen == 0) {
        break_connection(ReqOutcome::kProtocol, "server sent a zero-length extent");
        return -1;
    }
    req->extent->length = elen < req->length ? elen : req->length;
    req->extent->flags = static_cast<uint32_t>(eflags);
    req->got_status = true;
    if (length > head + esize) return discard_bytes(length - head - esize);
    return 0;
}

int NbdClientConnection::read_error_chunk(Request *req, uint16_t type, uint64_t length)
{
    if (length < 6 || length > kMaxErrorChunk) {
        break_connection(ReqOutcome::kProtocol, "server sent an error chunk of invalid length");
        return -1;
    }
    uint8_t b[kMaxErrorChunk];
    int ret = co_recv(b, length);
    if (ret < 0) {
        break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
        return -1;
    }
    uint32_t err = get32(b);
    uint16_t mlen = get16(b + 4);
    size_t expect = 6 + mlen + (type == kChunkErrorOffset ? 8 : 0);
    if (err == 0 || (type == kChunkError || type == kChunkErrorOffset ? length != expect : length < 6u + mlen)) {
        break_connection(ReqOutcome::kProtocol, "server sent an invalid error chunk");
        return -1;
    }
    if (type == kChunkErrorOffset) {
        uint64_t off = get64(b + 6 + mlen);
        if (off < req->offset || off - req->offset >= req->length) {
            break_connection(ReqOutcome::kProtocol, "server sent an error offset outside the request");
            return -1;
        }
    }
    if (mlen) {
        log_debug("nbd: server error on %s: %.*s", cmd_name(req->type), int(mlen), reinterpret_cast<char *>(b + 6));
    }
    if (!req->chunk_err) req->chunk_err = errno_from_wire(err);
    return 0;
}

int NbdClientConnection::read_into_qiov(IOVector &qiov, size_t off, size_t len)
{
    const struct iovec *iov = qiov.iov();
    for (int i = 0; i < qiov.niov() && len > 0; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t n = iov[i].iov_len - off < len ? iov[i].iov_len - off : len;
        int ret = co_recv(static_cast<uint8_t *>(iov[i].iov_base) + off, n);
        if (ret < 0) {
            break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
            return -1;
        }
        len -= n;
        off = 0;
    }
    return 0;
}

int NbdClientConnection::co_recv(void *dst, size_t len, bool *eof)
{
    auto *d = static_cast<uint8_t *>(dst);
    bool first = true;
    if (eof) *eof = false;
    while (len > 0) {
        if (rpos_ < rend_) {
            size_t n = std::min(len, rend_ - rpos_);
            std::memcpy(d, rbuf_.get() + rpos_, n);
            rpos_ += n;
            d += n;
            len -= n;
            first = false;
            continue;
        }
        rpos_ = rend_ = 0;
        if (sock_->tls_active() || len >= kDirectRead) return sock_->co_read_full(d, len, first ? eof : nullptr);
        if (!rbuf_) rbuf_.reset(new uint8_t[kReadBuffer]);
        ssize_t r = recv(sock_->fd(), rbuf_.get(), kReadBuffer, MSG_DONTWAIT);
        if (r > 0) {
            rend_ = static_cast<size_t>(r);
            continue;
        }
        if (r == 0) {
            if (eof) *eof = first;
            return sock_->is_shutdown() ? -ESHUTDOWN : -ECONNRESET;
        }
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
        // Nothing there yet: wait for what this call needs, into the buffer.
        int ret = sock_->co_read_full(rbuf_.get(), len, first ? eof : nullptr);
        if (ret < 0) return ret;
        rend_ = len;
    }
    return 0;
}

int NbdClientConnection::discard_bytes(uint64_t len)
{
    uint8_t scratch[4096];
    while (len > 0) {
        size_t n = len < sizeof(scratch) ? len : sizeof(scratch);
        int ret = co_recv(scratch, n);
        if (ret < 0) {
            break_connection(ReqOutcome::kConnLost, std::string("read failed: ") + strerror(-ret));
            return -1;
        }
        len -= n;
    }
    return 0;
}

} // namespace bg::nbd
