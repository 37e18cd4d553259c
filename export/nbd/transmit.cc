// One NBD connection, its transmission phase: the receive loop reads a
// request header (and a WRITE's payload, straight into the request's
// buffer), checks it as QEMU does and hands it to a coroutine of its own;
// replies go out whole (header and data in one writev) under the send
// mutex, in whatever order the requests finish.
#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <sys/socket.h>

#include "export/nbd/internal.h"
#include "util/log.h"

namespace bg {

using namespace nbd;

namespace {

// Requests kept for reuse per connection, and the largest buffer a pooled
// request keeps (bigger ones are freed after use).
constexpr int kPoolMax = kNbdMaxInFlight;
constexpr size_t kPooledBufMax = 1 << 20;
// The largest piece of one trim/zero/cache/block-status call.
constexpr uint64_t kMaxIoPiece = 1ULL << 30;

} // namespace

// ---------------------------------------------------------------- pool

NbdRequest *NbdConn::alloc_request()
{
    NbdRequest *r = free_list_;
    if (r) {
        free_list_ = r->next_free;
        pooled_--;
    } else {
        r = new NbdRequest();
        r->conn = this;
    }
    r->error = 0;
    r->errmsg.clear();
    return r;
}

void NbdConn::free_request(NbdRequest *r)
{
    if (pooled_ >= kPoolMax || r->buf_cap > kPooledBufMax) {
        free(r->buf);
        r->buf = nullptr;
        r->buf_cap = 0;
    }
    if (pooled_ >= kPoolMax) {
        delete r;
        return;
    }
    r->next_free = free_list_;
    free_list_ = r;
    pooled_++;
}

bool NbdConn::ensure_buf(NbdRequest *r, size_t len)
{
    if (r->buf_cap >= len) return true;
    free(r->buf);
    r->buf = nullptr;
    r->buf_cap = 0;
    size_t cap = len < 4096 ? 4096 : (len + 4095) & ~size_t(4095);
    void *p = nullptr;
    if (posix_memalign(&p, 4096, cap) != 0) return false;
    r->buf = p;
    r->buf_cap = cap;
    return true;
}

// ---------------------------------------------------------------- receive

// Headers come through a buffer filled by non-blocking reads of whatever
// has arrived (a client with many requests in flight sends them back to
// back: one read takes many); what the buffer lacks is read straight into
// the destination (a WRITE payload lands in the request's buffer).
int NbdConn::co_recv(void *dst, size_t len, bool *eof)
{
    auto *out = static_cast<uint8_t *>(dst);
    size_t have = rlen_ - rpos_;
    while (have == 0 && len < kRecvBufSize / 4 && !sock_->tls_active() && !sock_->is_shutdown()) {
        rpos_ = rlen_ = 0;
        ssize_t n = recv(sock_->fd(), rbuf_.get(), kRecvBufSize, MSG_DONTWAIT);
        if (n > 0) rlen_ = size_t(n);
        have = rlen_;
        if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
        // Nothing yet: wait here rather than retry through co_read_full.
        if (errno != EINTR) {
            int r = sock_->co_wait_readable();
            if (r < 0) return r;
        }
    }
    size_t take = have < len ? have : len;
    if (take) {
        memcpy(out, rbuf_.get() + rpos_, take);
        rpos_ += take;
    }
    if (take == len) return 0;
    int r = sock_->co_read_full(out + take, len - take, eof);
    if (eof && take) *eof = false;   // the peer closed in the middle of a message
    return r;
}

void NbdConn::transmit()
{
    for (;;) {
        while ((in_flight_ >= kNbdMaxInFlight || in_flight_bytes_ >= kNbdMaxInFlightBytes) && !closing_) {
            recv_waiting_ = coroutine_self();
            coroutine_yield();
            recv_waiting_ = nullptr;
        }
        if (closing_) break;
        NbdRequest *r = alloc_request();
        int ret = receive_request(r);
        if (ret <= 0) {
            free_request(r);
            break;
        }
        in_flight_++;
        in_flight_bytes_ += r->hdr.type == kCmdRead || r->hdr.type == kCmdWrite ? r->hdr.length : 0;
        coroutine_enter(coroutine_create(&NbdConn::request_entry, r));
    }
    // DISC, an error or close(): the requests in flight finish first.
    while (in_flight_ > 0) {
        recv_waiting_ = coroutine_self();
        coroutine_yield();
        recv_waiting_ = nullptr;
    }
}

// Reads one request: 1 to process it (r->error set if it is to be
// refused), 0 at DISC or a clean end, < 0 to drop the connection.
int NbdConn::receive_request(NbdRequest *r)
{
    uint8_t h[kExtRequestSize];
    const size_t hsize = extended_ ? kExtRequestSize : kRequestSize;
    bool eof = false;
    if (co_recv(h, hsize, &eof) < 0) return eof ? 0 : -1;
    if (!decode_request(h, &r->hdr, extended_)) {
        log_debug("NBD: invalid request magic");
        return -1;
    }
    const Request &q = r->hdr;
    if (q.type == kCmdDisc) return 0;
    auto refuse = [&](const std::string &msg) {
        r->error = EINVAL;
        r->errmsg = msg;
    };
    uint64_t payload = 0;
    if (q.type == kCmdWrite) {
        if (extended_ && !(q.flags & kCmdFlagPayloadLen)) {
            refuse("extended write without payload length flag");
            return -1;   // the payload's length is unknown: the stream is lost
        }
        payload = q.length;
        if (payload > kMaxPayload) {
            log_debug("NBD: len (%llu) is larger than max len (%u)", (unsigned long long)payload, kMaxPayload);
            return -1;
        }
        if (!ensure_buf(r, payload)) return -1;
        if (payload && co_recv(r->buf, payload, nullptr) < 0) return -1;
    } else if (extended_ && (q.flags & kCmdFlagPayloadLen)) {
        // Only WRITE carries a payload here: anything else is unreadable.
        return -1;
    }
    if ((q.type == kCmdRead || q.type == kCmdCache) && q.length > kMaxPayload) {
        char m[96];
        snprintf(m, sizeof(m), "len (%llu) is larger than max len (%u)", (unsigned long long)q.length, kMaxPayload);
        refuse(m);
        return 1;
    }
    // Flags valid for the command.
    uint16_t valid = kCmdFlagFua;
    if (q.type == kCmdRead && structured_) valid |= kCmdFlagDf;
    if (q.type == kCmdWriteZeroes) valid |= kCmdFlagNoHole | kCmdFlagFastZero;
    if (q.type == kCmdBlockStatus) valid |= kCmdFlagReqOne;
    if (q.type == kCmdWrite && extended_) valid |= kCmdFlagPayloadLen;
    const bool known = q.type <= kCmdBlockStatus;
    if (!known) {
        refuse("invalid request type (" + std::to_string(q.type) + ") received");
    } else if (q.flags & ~valid) {
        char m[96];
        snprintf(m, sizeof(m), "unsupported flags for command %s (got 0x%x)", cmd_name(q.type), q.flags & ~valid);
        refuse(m);
    } else if (!exp_ || !exp_->blk()) {
        r->error = ESHUTDOWN;
        r->errmsg = "export is shutting down";
    } else if (!exp_->writable() && (q.type == kCmdWrite || q.type == kCmdTrim || q.type == kCmdWriteZeroes)) {
        refuse("Export is read-only");
    } else if (q.type != kCmdFlush &&
               (q.offset > uint64_t(exp_->size()) || q.length > uint64_t(exp_->size()) - q.offset)) {
        char m[128];
        snprintf(m, sizeof(m), "operation past EOF; From: %llu, Len: %llu, Size: %llu", (unsigned long long)q.offset,
                 (unsigned long long)q.length, (unsigned long long)exp_->size());
        refuse(m);
    } else if (q.type == kCmdBlockStatus && !meta_base_ && !meta_depth_ &&
               std::find(meta_bitmaps_.begin(), meta_bitmaps_.end(), true) == meta_bitmaps_.end()) {
        refuse("CMD_BLOCK_STATUS not negotiated");
    } else if (q.type == kCmdBlockStatus && q.length == 0) {
        refuse("need non-zero length");
    }
    return 1;
}

// ---------------------------------------------------------------- replies

size_t NbdConn::simple_header(uint8_t *b, uint64_t cookie, uint32_t err) const
{
    put32(b, kSimpleReplyMagic);
    put32(b + 4, err);
    put64(b + 8, cookie);
    return kSimpleReplySize;
}

size_t NbdConn::chunk_header(uint8_t *b, const NbdRequest *r, uint16_t flags, uint16_t type, uint64_t len) const
{
    if (extended_) {
        put32(b, kExtReplyMagic);
        put16(b + 4, flags);
        put16(b + 6, type);
        put64(b + 8, r->hdr.cookie);
        put64(b + 16, r->hdr.offset);
        put64(b + 24, len);
        return kExtChunkHeaderSize;
    }
    put32(b, kStructuredReplyMagic);
    put16(b + 4, flags);
    put16(b + 6, type);
    put64(b + 8, r->hdr.cookie);
    put32(b + 16, static_cast<uint32_t>(len));
    return kChunkHeaderSize;
}

int NbdConn::send_locked(const struct iovec *iov, int n)
{
    send_lock_.lock();
    int ret = 0;
    // writev takes at most IOV_MAX entries at once.
    for (int i = 0; i < n && ret == 0; i += 512) ret = sock_->co_write_full(iov + i, n - i < 512 ? n - i : 512);
    send_lock_.unlock();
    if (ret < 0) close();
    return ret;
}

int NbdConn::send_reply_error(NbdRequest *r, int err, const std::string &msg)
{
    exp_->counters().errors++;
    const uint32_t wire = errno_to_wire(err);
    uint8_t h[kExtChunkHeaderSize + 6];
    if (!structured_) {
        size_t n = simple_header(h, r->hdr.cookie, wire);
        struct iovec iov = {h, n};
        return send_locked(&iov, 1);
    }
    std::string m = msg.size() > kMaxStringSize ? msg.substr(0, kMaxStringSize) : msg;
    size_t n = chunk_header(h, r, kReplyFlagDone, kChunkError, 6 + m.size());
    put32(h + n, wire);
    put16(h + n + 4, static_cast<uint16_t>(m.size()));
    struct iovec iov[2] = {{h, n + 6}, {m.data(), m.size()}};
    return send_locked(iov, m.empty() ? 1 : 2);
}

int NbdConn::send_reply_done(NbdRequest *r)
{
    uint8_t h[kExtChunkHeaderSize];
    size_t n = extended_ ? chunk_header(h, r, kReplyFlagDone, kChunkNone, 0) : simple_header(h, r->hdr.cookie, 0);
    struct iovec iov = {h, n};
    return send_locked(&iov, 1);
}

// ---------------------------------------------------------------- requests

void NbdConn::request_entry(void *opaque)
{
    auto *r = static_cast<NbdRequest *>(opaque);
    NbdConn *c = r->conn;
    c->process(r);
    const uint64_t bytes = r->hdr.type == kCmdRead || r->hdr.type == kCmdWrite ? r->hdr.length : 0;
    c->free_request(r);
    c->in_flight_--;
    c->in_flight_bytes_ -= bytes;
    // Wake the receive loop once; it re-checks what it waits for.
    if (Coroutine *w = c->recv_waiting_) {
        c->recv_waiting_ = nullptr;
        coroutine_wake(w);
    }
}

void NbdConn::process(NbdRequest *r)
{
    if (r->error) {
        log_debug("NBD: request refused: %s", r->errmsg.c_str());
        send_reply_error(r, r->error, r->errmsg);
        return;
    }
    ExportStats &st = exp_->counters();
    switch (r->hdr.type) {
    case kCmdRead:
        st.requests[ExportStats::kRead]++;
        do_read(r);
        return;
    case kCmdBlockStatus:
        st.requests[ExportStats::kLseek]++;
        do_block_status(r);
        return;
    default:
        do_simple_cmd(r);
        return;
    }
}

int NbdConn::do_simple_cmd(NbdRequest *r)
{
    const Request &q = r->hdr;
    BlockBackend *blk = exp_->blk();
    ExportStats &st = exp_->counters();
    int ret = 0;
    const ReqFlags fua = (q.flags & kCmdFlagFua) ? kReqFua : 0;
    // An empty range has nothing to do.
    if (q.length == 0 && q.type != kCmdFlush) return send_reply_done(r);
    switch (q.type) {
    case kCmdWrite:
        st.requests[ExportStats::kWrite]++;
        ret = blk->co_pwrite(int64_t(q.offset), int64_t(q.length), r->buf, fua);
        if (ret >= 0) st.bytes_written += q.length;
        break;
    case kCmdFlush:
        st.requests[ExportStats::kFlush]++;
        ret = blk->co_flush();
        break;
    case kCmdCache:
        // A prefetch hint: the range was checked; nothing to do.
        st.requests[ExportStats::kOther]++;
        break;
    case kCmdTrim:
    case kCmdWriteZeroes: {
        st.requests[ExportStats::kFallocate]++;
        ReqFlags zf = fua;
        if (!(q.flags & kCmdFlagNoHole)) zf |= kReqMayUnmap;
        if (q.flags & kCmdFlagFastZero) zf |= kReqNoFallback;
        for (uint64_t done = 0; done < q.length && ret >= 0;) {
            const uint64_t n = q.length - done < kMaxIoPiece ? q.length - done : kMaxIoPiece;
            const int64_t off = int64_t(q.offset + done);
            if (q.type == kCmdTrim) ret = blk->co_pdiscard(off, int64_t(n));
            else ret = blk->co_pwrite_zeroes(off, int64_t(n), zf);
            done += n;
        }
        // A trim with FUA is made stable, as QEMU does.
        if (ret >= 0 && q.type == kCmdTrim && fua) ret = blk->co_flush();
        break;
    }
    default:
        ret = -EINVAL;
        break;
    }
    if (ret < 0) {
        const char *what = cmd_name(q.type);
        return send_reply_error(r, -ret, std::string(what) + " failed: " + strerror(-ret));
    }
    return send_reply_done(r);
}

} // namespace bg
