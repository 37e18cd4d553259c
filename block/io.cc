// The request path every driver shares: bounds checks, alignment padding
// (bounce buffers for reads, read-modify-write under a serialising request
// for writes), splitting at max_transfer, request tracking and
// serialisation, in-flight accounting and drain, flush generations,
// write-zeroes fallback, discard, truncate and block status.
//
// Request tracking. A serialising request (an unaligned write or
// write-zeroes, which read-modify-writes whole blocks; a truncate; any
// request with kReqSerialising) must not run beside an overlapping request,
// and must wait for every overlapping request already in flight. Keeping
// every request on a list under a lock for the rare serialising one costs
// two lock round trips per request, so a node tracks requests only while a
// serialising request may be in flight:
//
//   - serialising_ counts the serialising requests of the node from before
//     they look at anything until after they are off the list;
//   - untracked_ counts the requests running untracked (on no list);
//   - a non-serialising request adds itself to untracked_, then reads
//     serialising_: 0 means it runs untracked (the fast path: no lock, no
//     list); otherwise it takes itself out of untracked_ again and is
//     tracked like before (on the list, waiting for earlier overlapping
//     serialising requests);
//   - a serialising request adds itself to serialising_, then waits until
//     untracked_ is 0, and only then goes on the list and waits for the
//     earlier overlapping requests there.
//
// All four accesses are sequentially consistent, so of a request adding
// itself to untracked_ and a serialising request adding itself to
// serialising_, at least one sees the other's increment: either the request
// goes on the list (where the serialising request, or the request itself,
// finds the overlap), or the serialising request waits for it to end. While
// serialising_ > 0 no request starts untracked, so the wait ends when the
// untracked requests that started before it end. The untracked request that
// brings untracked_ to 0 while serialising_ > 0 wakes the waiters; both the
// waiter's check and that wake-up happen under reqs_lock_, so no wake-up is
// lost. The node is back on the fast path when its last serialising request
// ends.
//
// The price: the first serialising request after a quiet spell waits for
// every untracked request on the node, overlapping or not. That wait cannot
// deadlock: an untracked request is inside this node's generic path and
// driver hook, which wait only for the node's own state and its children,
// never for anything the issuer of the serialising request (a parent or a
// consumer) holds; and the serialising request holds nothing of the node
// while it waits.
#include <algorithm>
#include <cstring>

#include "block/block-driver.h"
#include "util/log.h"

namespace bg {

// A request in flight on a node, for overlap checks. Lives on the stack of
// the coroutine that made it; on the node's list only if tracked.
struct TrackedRequest {
    enum Type { kRead, kWrite, kDiscard, kTruncate };
    Type type;
    int64_t offset;           // the range it touches, widened to alignment
    int64_t bytes;
    bool serialising;         // overlapping requests wait for it (and it for them)
    bool tracked = false;     // on the list (else counted in untracked_)
    CoQueue waiters;          // requests waiting for this one to end
    TrackedRequest *prev = nullptr, *next = nullptr;

    TrackedRequest(Type t, int64_t off, int64_t len, bool ser) : type(t), offset(off), bytes(len), serialising(ser) {}
    bool overlaps(const TrackedRequest &o) const
    {
        return offset < o.offset + o.bytes && o.offset < offset + bytes;
    }
};

namespace {

constexpr int64_t kZeroChunk = 16 << 20;   // write-zeroes fallback buffer size

inline int64_t align_down(int64_t v, int64_t a) { return v & ~(a - 1); }
inline int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) & ~(a - 1); }

int check_request(int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes < 0) return -EIO;
    if (bytes > kMaxRequestBytes) return -EIO;
    if (offset > kMaxLength - bytes) return -EIO;
    return 0;
}

// Whether the edge c may write with these flags.
inline bool may_write(const BdrvChild *c, ReqFlags flags)
{
    return (c->perm() & kPermWrite) || ((flags & kReqWriteUnchanged) && (c->perm() & kPermWriteUnchanged));
}

// The longest read or write a driver hook may be given in one call.
inline int64_t max_rw_bytes(const BlockLimits &bl)
{
    int64_t max = bl.max_transfer ? static_cast<int64_t>(std::min<uint64_t>(bl.max_transfer, kMaxRequestBytes))
                                  : kMaxRequestBytes;
    return align_down(max, bl.request_alignment);
}

} // namespace

// RAII: a request of the node, in flight and (if needed) tracked, for the
// guard's scope. The constructor may yield (see request_begin).
struct TrackedRequestGuard {
    BlockNode *bs;
    TrackedRequest req;
    TrackedRequestGuard(BlockNode *n, TrackedRequest::Type t, int64_t off, int64_t len, bool ser)
        : bs(n), req(t, off, len, ser)
    {
        bs->request_begin(&req);
    }
    ~TrackedRequestGuard() { bs->request_end(&req); }
};

// ---------------------------------------------------------------- accounting

void BlockNode::inc_in_flight() { in_flight_.fetch_add(1, std::memory_order_relaxed); }

void BlockNode::dec_in_flight()
{
    uint64_t left = in_flight_.fetch_sub(1, std::memory_order_acq_rel) - 1;
    if (left == 0 && quiesce_counter_.load() > 0) {
        AioContext *w = drain_waiter_ctx_;
        if (w && w != AioContext::current()) w->schedule_oneshot([](void *) {}, nullptr);
    }
}

// Counts req in flight; then either runs it untracked (the fast path) or
// puts it on the list and waits for the requests it must wait for. See the
// file comment for why the switch between the two is race-free.
void BlockNode::request_begin(TrackedRequest *req)
{
    inc_in_flight();
    if (!req->serialising) {
        untracked_.fetch_add(1);
        if (serialising_.load() == 0) return;
        untracked_end();
    } else {
        serialising_.fetch_add(1);
        wait_untracked_drained();
    }
    req->tracked = true;
    tracked_begin(req);
    wait_serialising(req);
}

void BlockNode::request_end(TrackedRequest *req)
{
    if (!req->tracked) {
        untracked_end();
    } else {
        tracked_end(req);
        if (req->serialising) serialising_.fetch_sub(1);
    }
    dec_in_flight();
}

// An untracked request is over; the last one wakes the serialising
// requests waiting in wait_untracked_drained().
void BlockNode::untracked_end()
{
    if (untracked_.fetch_sub(1) != 1 || serialising_.load() == 0) return;
    reqs_lock_.lock();
    untracked_drained_.restart_all();
    reqs_lock_.unlock();
}

// For a serialising request, already counted in serialising_: waits until
// no request runs untracked.
void BlockNode::wait_untracked_drained()
{
    if (untracked_.load() == 0) return;
    reqs_lock_.lock();
    while (untracked_.load() != 0) untracked_drained_.wait(&reqs_lock_);
    reqs_lock_.unlock();
}

void BlockNode::tracked_begin(TrackedRequest *req)
{
    reqs_lock_.lock();
    req->prev = reqs_tail_;
    req->next = nullptr;
    if (reqs_tail_) reqs_tail_->next = req;
    else reqs_head_ = req;
    reqs_tail_ = req;
    reqs_lock_.unlock();
}

void BlockNode::tracked_end(TrackedRequest *req)
{
    reqs_lock_.lock();
    if (req->prev) req->prev->next = req->next;
    else reqs_head_ = req->next;
    if (req->next) req->next->prev = req->prev;
    else reqs_tail_ = req->prev;
    req->waiters.restart_all();
    reqs_lock_.unlock();
}

// Waits for every earlier overlapping request on the list when either side
// is serialising. Only earlier requests are waited for, so there can be no
// cycle of waiters. A non-serialising request has nothing to wait for once
// serialising_ is 0: no serialising request is then on the list (each
// leaves it before it leaves serialising_), and one that comes later finds
// this request on the list and waits for it.
void BlockNode::wait_serialising(TrackedRequest *req)
{
    if (!req->serialising && serialising_.load() == 0) return;
    reqs_lock_.lock();
retry:
    for (TrackedRequest *o = reqs_head_; o && o != req; o = o->next) {
        if (!req->serialising && !o->serialising) continue;
        if (!req->overlaps(*o)) continue;
        o->waiters.wait(&reqs_lock_);
        goto retry;
    }
    reqs_lock_.unlock();
}

// ---------------------------------------------------------------- drain

bool BlockNode::drain_busy() const
{
    if (in_flight_.load() > 0) return true;
    for (BdrvChild *p : parents_) {
        if (p->parent_backend() && p->parent_backend()->in_flight() > 0) return true;
        if (p->parent_node() && p->parent_node()->drain_busy()) return true;
    }
    return false;
}

void BlockNode::drained_begin()
{
    quiesce_counter_.fetch_add(1);
    for (BdrvChild *p : parents_) {
        if (BlockBackend *b = p->parent_backend()) b->quiesce_counter_.fetch_add(1);
        if (BlockNode *n = p->parent_node()) n->drained_begin_no_poll();
    }
    AioContext *ctx = AioContext::current();
    drain_waiter_ctx_ = ctx;
    if (in_coroutine()) {
        while (drain_busy()) co_sleep_ns(50 * 1000);
        return;
    }
    // A timer makes sure a completion in another thread cannot leave us
    // asleep: we re-check at least every millisecond.
    while (drain_busy()) {
        Timer t(ctx, [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        ctx->iterate(true);
    }
}

void BlockNode::drained_begin_no_poll()
{
    quiesce_counter_.fetch_add(1);
    for (BdrvChild *p : parents_) {
        if (BlockBackend *b = p->parent_backend()) b->quiesce_counter_.fetch_add(1);
        if (BlockNode *n = p->parent_node()) n->drained_begin_no_poll();
    }
}

void BlockNode::drained_end()
{
    quiesce_counter_.fetch_sub(1);
    for (BdrvChild *p : parents_) {
        if (BlockBackend *b = p->parent_backend()) b->drained_end();
        if (BlockNode *n = p->parent_node()) n->drained_end();
    }
}

// A write ending at end made it past the node's end (protocol nodes grow):
// the node is that long now, and so are its dirty bitmaps.
void BlockNode::grow_to(int64_t end)
{
    int64_t cur = total_bytes_.load(std::memory_order_relaxed);
    while (end > cur) {
        if (total_bytes_.compare_exchange_weak(cur, end)) {
            dirty_bitmaps_resize(end, true);
            return;
        }
    }
}

// ---------------------------------------------------------------- reads

// Reads an aligned range inside a request that is already counted (and
// tracked if needed): split at max_transfer, and linearised where the
// caller's vector has more pieces than the driver takes.
int BlockNode::co_aligned_preadv(TrackedRequest *, int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    const int64_t max = max_rw_bytes(bl_);
    requests_served_.fetch_add(1, std::memory_order_relaxed);
    if (bytes <= max && qiov.niov() <= bl_.max_iov) return do_co_preadv(offset, bytes, qiov, flags);
    for (int64_t done = 0; done < bytes;) {
        int64_t n = std::min(bytes - done, max);
        IOVector part;
        part.add_slice(qiov, done, n);
        int r;
        if (part.niov() > bl_.max_iov) {
            AlignedBuf buf = aligned_alloc_buf(bl_.opt_mem_alignment, n);
            IOVector lin(buf.get(), n);
            r = do_co_preadv(offset + done, n, lin, flags);
            if (r >= 0) part.from_buf(0, buf.get(), n);
        } else {
            r = do_co_preadv(offset + done, n, part, flags);
        }
        if (r < 0) return r;
        done += n;
    }
    return 0;
}

// The generic read of the child node (also what a BlockBackend's reads
// come to): bounds, alignment padding, tracking, splitting; an aligned read
// the driver takes in one piece goes straight to its hook.
int BdrvChild::co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    BlockNode *bs = bs_;
    int r = check_request(offset, bytes);
    if (r < 0) return r;
    if (static_cast<int64_t>(qiov.size()) < bytes) return -EINVAL;
    if (bytes == 0) return 0;
    if ((flags & kReqCopyOnRead) && !bs->read_only_ && (perm_ & (kPermWrite | kPermWriteUnchanged))) {
        return bs->co_copy_on_readv(offset, bytes, qiov, flags & ~kReqCopyOnRead);
    }
    flags &= ~kReqCopyOnRead;
    const BlockLimits &bl = bs->bl_;
    const int64_t align = bl.request_alignment;
    const int64_t a_off = align_down(offset, align);
    const int64_t a_end = align_up(offset + bytes, align);
    TrackedRequestGuard g(bs, TrackedRequest::kRead, a_off, a_end - a_off, flags & kReqSerialising);
    if (a_off == offset && a_end == offset + bytes) {
        if (bytes > max_rw_bytes(bl) || qiov.niov() > bl.max_iov) {
            return bs->co_aligned_preadv(&g.req, offset, bytes, qiov, flags);
        }
        bs->requests_served_.fetch_add(1, std::memory_order_relaxed);
        return bs->do_co_preadv(offset, bytes, qiov, flags);
    }

    // Unaligned: read whole blocks, with bounce buffers for the head and
    // tail pieces the caller did not ask for.
    const int64_t head = offset - a_off;
    const int64_t tail = a_end - (offset + bytes);
    const size_t memalign = std::max<size_t>(bl.min_mem_alignment, 64);
    AlignedBuf hbuf = head ? aligned_alloc_buf(memalign, head) : AlignedBuf();
    AlignedBuf tbuf = tail ? aligned_alloc_buf(memalign, tail) : AlignedBuf();
    IOVector padded;
    if (head) padded.add(hbuf.get(), head);
    padded.add_slice(qiov, 0, bytes);
    if (tail) padded.add(tbuf.get(), tail);
    return bs->co_aligned_preadv(&g.req, a_off, a_end - a_off, padded, flags);
}

// ---------------------------------------------------------------- copy-on-read

namespace {
constexpr int64_t kCopyBounceMax = 16 << 20;   // bytes copied per step (bounce buffer)
} // namespace

// Copies [pos, pos+n) (aligned) into this node unless allocated, and hands
// the part of it inside the caller's [offset, offset+bytes) to qiov.
int BlockNode::co_copy_range(TrackedRequest *req, int64_t pos, int64_t n, bool allocated, int64_t offset,
                             int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    const int64_t lo = std::max(pos, offset), hi = std::min(pos + n, offset + bytes);
    const int64_t align = bl_.request_alignment;
    if (allocated && hi <= lo) return 0;
    if (allocated && lo == align_down(lo, align) && hi == align_up(hi, align)) {
        IOVector part;
        part.add_slice(qiov, lo - offset, hi - lo);
        return co_aligned_preadv(req, lo, hi - lo, part, flags);
    }
    if (allocated) {
        pos = align_down(lo, align);
        n = align_up(hi, align) - pos;
    }
    AlignedBuf buf = aligned_alloc_buf(std::max<size_t>(bl_.min_mem_alignment, 64), n);
    IOVector v(buf.get(), n);
    int r = co_aligned_preadv(req, pos, n, v, allocated ? flags : 0);
    if (r < 0) return r;
    if (!allocated) {
        // The data read from below, written back unchanged; zeros as
        // write-zeroes (a format stores a zero cluster).
        if (v.is_zero(0, n)) {
            r = co_do_zero_pwritev(req, pos, n, kReqWriteUnchanged);
        } else {
            r = co_aligned_pwritev(req, pos, n, v, kReqWriteUnchanged);
        }
        if (r < 0) return r;
    }
    if (hi > lo) qiov.from_buf(lo - offset, buf.get() + (lo - pos), hi - lo);
    return 0;
}

// A read with kReqCopyOnRead (see BdrvChild::co_preadv): one serialising
// request over the range widened to the copy granularity, so that two
// copies of the same cluster, or a copy and a write, never interleave
// (the second sees the first's result). An error of the allocation query
// fails the read (the metadata it needs could not be read).
int BlockNode::co_copy_on_readv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    const int64_t align = bl_.request_alignment;
    const int64_t gran = std::max<int64_t>(copy_granularity_, align);
    const int64_t len_end = align_up(std::max<int64_t>(getlength(), 0), align);
    const int64_t c_off = align_down(offset, gran);
    const int64_t c_end = std::max(std::min(align_up(offset + bytes, gran), len_end), align_up(offset + bytes, align));
    TrackedRequestGuard g(this, TrackedRequest::kRead, c_off, c_end - c_off, true);
    const int64_t max = std::min<int64_t>(kCopyBounceMax, max_rw_bytes(bl_));
    int64_t pos = c_off;
    while (pos < c_end) {
        int64_t pnum = 0;
        int st = pos < len_end ? co_block_status(false, pos, c_end - pos, &pnum, nullptr, nullptr) : 0;
        if (st < 0) return st;
        bool allocated = (st & kStatusAllocated) != 0;
        if (pnum <= 0) {
            // Past the end: what is left is read as it is.
            pnum = c_end - pos;
            allocated = true;
        }
        pnum = std::min(align_up(pnum, align), c_end - pos);
        if (!allocated) pnum = std::min(pnum, std::max(align_down(max, gran), gran));
        int r = co_copy_range(&g.req, pos, pnum, allocated, offset, bytes, qiov, flags);
        if (r < 0) return r;
        pos += pnum;
    }
    return 0;
}

// ---------------------------------------------------------------- writes

int BlockNode::co_aligned_pwritev(TrackedRequest *, int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    const int64_t max = max_rw_bytes(bl_);
    ReqFlags dflags = flags & ~(kReqSerialising | kReqNoFallback);
    bool emulate_fua = (flags & kReqFua) && !supports_fua_;
    if (emulate_fua) dflags &= ~kReqFua;
    debug_event("pwritev");
    requests_served_.fetch_add(1, std::memory_order_relaxed);
    int r = 0;
    if (bytes <= max && qiov.niov() <= bl_.max_iov) {
        r = do_co_pwritev(offset, bytes, qiov, dflags);
    } else {
        for (int64_t done = 0; done < bytes && r >= 0;) {
            int64_t n = std::min(bytes - done, max);
            IOVector part;
            part.add_slice(qiov, done, n);
            if (part.niov() > bl_.max_iov) {
                AlignedBuf buf = aligned_alloc_buf(bl_.opt_mem_alignment, n);
                part.to_buf(0, buf.get(), n);
                IOVector lin(buf.get(), n);
                r = do_co_pwritev(offset + done, n, lin, dflags);
            } else {
                r = do_co_pwritev(offset + done, n, part, dflags);
            }
            done += n;
        }
    }
    // Like QEMU's bdrv_co_write_req_finish(): count the write once it has
    // reached the driver (even a failed one may have changed data), never
    // before, or a flush overlapping it would record it as flushed; set the
    // dirty bitmaps for the same reason.
    mark_dirty();
    if (r >= 0) grow_to(offset + bytes);
    dirty_bitmaps_mark(offset, bytes);
    if (r < 0) return r;
    if (emulate_fua) r = co_flush_generic();
    return r < 0 ? r : 0;
}

// Writes qiov at an arbitrary offset inside a tracked request that already
// covers (and, when unaligned, serialises) the aligned range.
int BlockNode::co_rmw_pwritev(TrackedRequest *req, int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    const int64_t align = bl_.request_alignment;
    const int64_t a_off = align_down(offset, align);
    const int64_t a_end = align_up(offset + bytes, align);
    if (a_off == offset && a_end == offset + bytes) return co_aligned_pwritev(req, offset, bytes, qiov, flags);

    const size_t memalign = std::max<size_t>(bl_.min_mem_alignment, 64);
    const int64_t head = offset - a_off;
    const int64_t tail = a_end - (offset + bytes);
    const bool one_block = a_end - a_off == align;
    AlignedBuf hbuf, tbuf;
    if (head || one_block) {
        hbuf = aligned_alloc_buf(memalign, align);
        IOVector v(hbuf.get(), align);
        int r = co_aligned_preadv(req, a_off, align, v, 0);
        if (r < 0) return r;
    }
    if (tail && !one_block) {
        tbuf = aligned_alloc_buf(memalign, align);
        IOVector v(tbuf.get(), align);
        int r = co_aligned_preadv(req, a_end - align, align, v, 0);
        if (r < 0) return r;
    }
    IOVector padded;
    if (head) padded.add(hbuf.get(), head);
    padded.add_slice(qiov, 0, bytes);
    if (tail) {
        uint8_t *tb = one_block ? hbuf.get() : tbuf.get();
        padded.add(tb + (align - tail), tail);
    }
    return co_aligned_pwritev(req, a_off, a_end - a_off, padded, flags & ~kReqZeroWrite);
}

// The generic write of the child node, after the edge's permission check.
int BdrvChild::co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    if (!may_write(this, flags)) return -EPERM;
    BlockNode *bs = bs_;
    int r = check_request(offset, bytes);
    if (r < 0) return r;
    if (bs->read_only_) return -EPERM;
    if (static_cast<int64_t>(qiov.size()) < bytes) return -EINVAL;
    // Like QEMU: a compressed write to a driver that cannot store one fails.
    if ((flags & kReqWriteCompressed) && !(bs->drv_ && (bs->drv_->caps & kCapWriteCompressed))) return -ENOTSUP;
    if (bytes == 0) return 0;
    if (bs->detect_zeroes_ != BlockdevDetectZeroes::kOff && !(flags & kReqWriteCompressed) && qiov.is_zero(0, bytes)) {
        flags |= kReqZeroWrite;
        if (bs->detect_zeroes_ == BlockdevDetectZeroes::kUnmap) flags |= kReqMayUnmap;
    }
    if (flags & kReqZeroWrite) return bs->co_pwrite_zeroes_generic(offset, bytes, flags);
    const int64_t align = bs->bl_.request_alignment;
    const int64_t a_off = align_down(offset, align);
    const int64_t a_end = align_up(offset + bytes, align);
    bool unaligned = a_off != offset || a_end != offset + bytes;
    TrackedRequestGuard g(bs, TrackedRequest::kWrite, a_off, a_end - a_off, unaligned || (flags & kReqSerialising));
    return bs->co_rmw_pwritev(&g.req, offset, bytes, qiov, flags);
}

// Zeroes [offset, offset+bytes), which is aligned to request_alignment.
int BlockNode::co_do_zero_pwritev(TrackedRequest *req, int64_t offset, int64_t bytes, ReqFlags flags)
{
    const int64_t align = bl_.request_alignment;
    const int64_t zalign = std::max<int64_t>(bl_.pwrite_zeroes_alignment ? bl_.pwrite_zeroes_alignment : align, align);
    int64_t max_zero = bl_.max_pwrite_zeroes ? static_cast<int64_t>(std::min<uint64_t>(bl_.max_pwrite_zeroes, kMaxRequestBytes))
                                             : kMaxRequestBytes;
    max_zero = std::max(align_down(max_zero, zalign), zalign);
    int64_t max_write = bl_.max_transfer ? static_cast<int64_t>(bl_.max_transfer) : kZeroChunk;
    max_write = std::max<int64_t>(align_down(std::min(max_write, kZeroChunk), align), align);
    AlignedBuf zbuf;
    int64_t zbuf_len = 0;
    while (bytes > 0) {
        int64_t num = bytes;
        bool driver_ok = true;
        if (offset % zalign) {
            // Head up to the zero alignment: written as data.
            num = std::min(bytes, zalign - offset % zalign);
            driver_ok = false;
        } else if (num >= zalign) {
            num = std::min(align_down(num, zalign), max_zero);
        } else {
            driver_ok = false;   // tail smaller than the zero alignment
        }
        int r = -ENOTSUP;
        if (driver_ok) {
            ReqFlags zf = flags & supported_zero_flags_;
            requests_served_.fetch_add(1, std::memory_order_relaxed);
            debug_event("pwritev_zero");
            r = do_co_pwrite_zeroes(offset, num, zf);
            mark_dirty();
            dirty_bitmaps_mark(offset, num);
            if (r == 0 && (flags & kReqFua) && !(supported_zero_flags_ & kReqFua)) r = co_flush_generic();
            if (r == -ENOTSUP && (flags & kReqNoFallback)) return r;
        }
        if (r == -ENOTSUP) {
            // Fallback: write zero buffers.
            for (int64_t done = 0; done < num;) {
                int64_t n = std::min(num - done, max_write);
                if (zbuf_len < n) {
                    zbuf = aligned_alloc_buf(std::max<size_t>(bl_.min_mem_alignment, 64), n);
                    memset(zbuf.get(), 0, n);
                    zbuf_len = n;
                }
                IOVector v(zbuf.get(), n);
                r = co_aligned_pwritev(req, offset + done, n, v, flags & ~(kReqZeroWrite | kReqMayUnmap));
                if (r < 0) return r;
                done += n;
            }
        } else if (r < 0) {
            return r;
        } else {
            grow_to(offset + num);
        }
        offset += num;
        bytes -= num;
    }
    return 0;
}

int BlockNode::co_pwrite_zeroes_generic(int64_t offset, int64_t bytes, ReqFlags flags)
{
    int r = check_request(offset, bytes);
    if (r < 0) return r;
    if (read_only_) return -EPERM;
    if (bytes == 0) return 0;
    const int64_t align = bl_.request_alignment;
    const int64_t a_off = align_down(offset, align);
    const int64_t a_end = align_up(offset + bytes, align);
    bool unaligned = a_off != offset || a_end != offset + bytes;
    TrackedRequestGuard g(this, TrackedRequest::kWrite, a_off, a_end - a_off, unaligned || (flags & kReqSerialising));
    // Partial blocks at either end are written as zero data (read-modify-write).
    int64_t mid_start = align_up(offset, align);
    int64_t mid_end = align_down(offset + bytes, align);
    if (mid_start >= mid_end) {
        std::vector<uint8_t> z(bytes, 0);
        IOVector v(z.data(), bytes);
        return co_rmw_pwritev(&g.req, offset, bytes, v, flags & ~(kReqZeroWrite | kReqMayUnmap));
    }
    if (mid_start > offset) {
        std::vector<uint8_t> z(mid_start - offset, 0);
        IOVector v(z.data(), z.size());
        r = co_rmw_pwritev(&g.req, offset, z.size(), v, flags & ~(kReqZeroWrite | kReqMayUnmap));
        if (r < 0) return r;
    }
    r = co_do_zero_pwritev(&g.req, mid_start, mid_end - mid_start, flags);
    if (r < 0) return r;
    if (offset + bytes > mid_end) {
        std::vector<uint8_t> z(offset + bytes - mid_end, 0);
        IOVector v(z.data(), z.size());
        r = co_rmw_pwritev(&g.req, mid_end, z.size(), v, flags & ~(kReqZeroWrite | kReqMayUnmap));
    }
    return r;
}

// ---------------------------------------------------------------- discard

int BlockNode::co_pdiscard_generic(int64_t offset, int64_t bytes)
{
    int r = check_request(offset, bytes);
    if (r < 0) return r;
    if (read_only_) return -EPERM;
    if (!unmap_) return 0;   // discard=ignore: advisory requests are dropped
    const int64_t align = std::max<int64_t>(bl_.pdiscard_alignment ? bl_.pdiscard_alignment : 1,
                                            bl_.request_alignment);
    int64_t start = align_up(offset, align);
    int64_t end = align_down(offset + bytes, align);
    // A request reaching an unaligned end of the node passes its partial
    // last block on (as QEMU does): a driver may discard it (qcow2's
    // partial last cluster) or refuse it with -ENOTSUP (ignored below).
    if (end < offset + bytes && end >= offset && offset + bytes == getlength()) end = offset + bytes;
    if (start >= end) {
        // Like QEMU: the dirty bitmaps record the range asked for, also
        // where nothing of it could be discarded.
        dirty_bitmaps_mark(offset, bytes);
        return 0;
    }
    int64_t max = bl_.max_pdiscard ? static_cast<int64_t>(std::min<uint64_t>(bl_.max_pdiscard, kMaxRequestBytes))
                                   : kMaxRequestBytes;
    max = std::max(align_down(max, align), align);
    TrackedRequestGuard g(this, TrackedRequest::kDiscard, start, end - start, false);
    for (int64_t off = start; off < end;) {
        int64_t n = std::min(end - off, max);
        requests_served_.fetch_add(1, std::memory_order_relaxed);
        r = do_co_pdiscard(off, n);
        mark_dirty();
        if (r == -ENOTSUP) {
            r = 0;
            break;
        }
        if (r < 0) break;
        off += n;
    }
    dirty_bitmaps_mark(offset, bytes);
    return r;
}

// ---------------------------------------------------------------- flush

int BlockNode::co_flush_generic()
{
    inc_in_flight();
    flush_lock_.lock();
    while (flush_active_) flush_queue_.wait(&flush_lock_);
    flush_active_ = true;
    uint64_t current_gen = write_gen_.load();
    flush_lock_.unlock();

    int ret = 0;
    if (!read_only_) {
        debug_event("flush_to_os");
        ret = do_co_flush_to_os();
        if (ret == 0 && !no_flush_ && flushed_gen_ != current_gen) {
            debug_event("flush_to_disk");
            ret = do_co_flush_to_disk();
        }
    }
    if (ret == 0) {
        for (BdrvChild *c : children_) {
            if (!(c->perm() & (kPermWrite | kPermWriteUnchanged))) continue;
            int r = c->node()->co_flush_generic();
            if (ret == 0) ret = r;
        }
    }
    flush_lock_.lock();
    if (ret == 0) flushed_gen_ = current_gen;
    flush_active_ = false;
    flush_queue_.restart_next();
    flush_lock_.unlock();
    dec_in_flight();
    return ret;
}

// ---------------------------------------------------------------- truncate

int BlockNode::co_truncate_generic(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    if (offset < 0 || offset > kMaxLength) return -EINVAL;
    if (read_only_) return -EACCES;
    int64_t old = getlength();
    int64_t start = std::min(old, offset);
    TrackedRequestGuard g(this, TrackedRequest::kTruncate, start, kMaxLength - start, true);
    requests_served_.fetch_add(1, std::memory_order_relaxed);
    int r = do_co_truncate(offset, exact, prealloc, flags);
    mark_dirty();
    if (r < 0) return r;
    r = refresh_length();
    if (r < 0) total_bytes_.store(offset);
    // Like QEMU, the bitmaps cover the length asked for.
    dirty_bitmaps_resize(offset, false);
    return 0;
}

// ---------------------------------------------------------------- VM state

int BlockNode::co_vmstate(bool write, int64_t pos, int64_t bytes, IOVector &qiov)
{
    int r = check_request(pos, bytes);
    if (r < 0) return r;
    if (static_cast<int64_t>(qiov.size()) < bytes) return -EINVAL;
    if (write && read_only_) return -EPERM;
    inc_in_flight();
    r = do_co_vmstate(write, pos, bytes, qiov);
    if (write) mark_dirty();
    dec_in_flight();
    return r;
}

// ---------------------------------------------------------------- block status

int BlockNode::co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum, int64_t *map,
                               BlockNode **file)
{
    int64_t total = getlength();
    if (offset < 0 || bytes < 0) return -EINVAL;
    if (offset >= total) {
        *pnum = 0;
        return kStatusEof;
    }
    bytes = std::min(bytes, total - offset);
    if (bytes == 0) {
        *pnum = 0;
        return 0;
    }
    int64_t local_map = 0;
    BlockNode *local_file = nullptr;
    int64_t p = 0;
    const int64_t align = bl_.request_alignment;
    const int64_t a_off = align_down(offset, align);
    const int64_t a_bytes = align_up(offset + bytes, align) - a_off;
    inc_in_flight();
    int ret = do_co_block_status(want_zero, a_off, a_bytes, &p, &local_map, &local_file);
    if (ret < 0) {
        dec_in_flight();
        return ret;
    }
    // Undo the alignment widening.
    p -= offset - a_off;
    if (p <= 0) {
        // A driver must describe at least the first byte.
        dec_in_flight();
        return -EIO;
    }
    p = std::min(p, bytes);
    if (ret & kStatusOffsetValid) local_map += offset - a_off;

    if (ret & kStatusRaw) {
        BlockNode *f = local_file;
        if (!f || f == this) {
            dec_in_flight();
            return -EIO;
        }
        int64_t fp;
        ret = f->co_block_status(want_zero, local_map, p, &fp, &local_map, &local_file);
        if (ret < 0) {
            dec_in_flight();
            return ret;
        }
        if (fp > 0) p = std::min(p, fp);
        ret &= ~kStatusEof;
    }
    if (ret & (kStatusData | kStatusZero)) {
        ret |= kStatusAllocated;
    } else if (want_zero && drv_ && (drv_->caps & kCapBacking)) {
        // Unallocated in a node that reads the rest from a backing file:
        // zeros if there is nothing below to read from. Only such nodes
        // (QEMU: drv->supports_backing): a filter's unallocated answer came
        // from its child, whose backing file may well hold data.
        BdrvChild *b = backing_child();
        if (!b || offset >= b->node()->getlength()) ret |= kStatusZero;
    }
    if (want_zero && (ret & kStatusRecurse) && (ret & kStatusOffsetValid) && local_file && local_file != this &&
        !(ret & kStatusZero)) {
        int64_t fp = 0, fmap;
        BlockNode *ff;
        int r2 = local_file->co_block_status(true, local_map, p, &fp, &fmap, &ff);
        if (r2 >= 0) {
            if ((r2 & kStatusEof) && (fp == 0 || (r2 & kStatusZero))) {
                // Beyond the end of the file: reads as zeros.
                ret |= kStatusZero;
            } else if (fp > 0) {
                if (r2 & kStatusZero) ret |= kStatusZero;
                p = std::min(p, fp);
            }
        }
    }
    ret &= ~kStatusRecurse;
    if (offset + p == total) ret |= kStatusEof;
    else ret &= ~kStatusEof;
    *pnum = p;
    if (map) *map = local_map;
    if (file) *file = local_file;
    dec_in_flight();
    return ret;
}

int BlockNode::co_block_status_above(BlockNode *base, bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                     int64_t *map, BlockNode **file, int *depth)
{
    BlockNode *n = this;
    int d = 0;
    int64_t p = bytes;
    int64_t m = 0;
    BlockNode *f = nullptr;
    int ret = n->co_block_status(want_zero, offset, bytes, &p, &m, &f);
    if (ret < 0) return ret;
    while (!(ret & kStatusAllocated)) {
        // Like QEMU's bdrv_filter_or_cow_bs(): filters are walked through
        // (without counting a layer), as are COW children.
        BdrvChild *b = n->backing_child();
        bool filter = false;
        if (!b && (b = n->filtered_child())) filter = true;
        if (!b || b->node() == base) break;
        n = b->node();
        if (!filter) d++;
        if (offset >= n->getlength()) {
            // The backing file ends before this offset: zeros, allocated nowhere.
            ret = want_zero ? kStatusZero : 0;
            break;
        }
        int64_t p2;
        int r2 = n->co_block_status(want_zero, offset, p, &p2, &m, &f);
        if (r2 < 0) return r2;
        p = std::min(p, p2);
        ret = r2;
    }
    if (offset + p >= getlength()) ret |= kStatusEof;
    else ret &= ~kStatusEof;
    *pnum = p;
    if (map) *map = m;
    if (file) *file = f;
    if (depth) *depth = d;
    return ret;
}

// ---------------------------------------------------------------- edges
// (BdrvChild::co_preadv and co_pwritev, the generic read and write, are
// with the reads and writes above.)

int BdrvChild::co_pread(int64_t offset, int64_t bytes, void *buf, ReqFlags flags)
{
    IOVector v(buf, bytes);
    return co_preadv(offset, bytes, v, flags);
}

int BdrvChild::co_pwrite(int64_t offset, int64_t bytes, const void *buf, ReqFlags flags)
{
    IOVector v(const_cast<void *>(buf), bytes);
    return co_pwritev(offset, bytes, v, flags);
}

int BdrvChild::co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    if (!may_write(this, flags)) return -EPERM;
    // discard=ignore on the child drops MAY_UNMAP of a parent node's
    // request; a consumer's (an export's, a tool's) keeps it, as in QEMU,
    // where only node-to-node write-zeroes look at the child's unmap policy.
    if (parent_node_ && !bs_->unmap_) flags &= ~kReqMayUnmap;
    return bs_->co_pwrite_zeroes_generic(offset, bytes, flags | kReqZeroWrite);
}

int BdrvChild::co_pdiscard(int64_t offset, int64_t bytes)
{
    if (!(perm_ & kPermWrite)) return -EPERM;
    return bs_->co_pdiscard_generic(offset, bytes);
}

int BdrvChild::co_flush() { return bs_->co_flush_generic(); }

int BdrvChild::co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    if (!(perm_ & kPermResize)) return -EPERM;
    return bs_->co_truncate_generic(offset, exact, prealloc, flags);
}

int BdrvChild::co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum, int64_t *map,
                               BlockNode **file)
{
    return bs_->co_block_status(want_zero, offset, bytes, pnum, map, file);
}

int64_t BdrvChild::getlength() const { return bs_->getlength(); }

} // namespace bg
