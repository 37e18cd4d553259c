#include "util/aio.h"

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "util/io.h"
#include "util/log.h"

namespace bg {

namespace {
thread_local AioContext *t_current = nullptr;
}

int64_t clock_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

struct AioContext::Source {
    GSource base;
    AioContext *ctx;
};

static GSourceFuncs g_aio_source_funcs = {
    AioContext::src_prepare, AioContext::src_check, AioContext::src_dispatch, nullptr, nullptr, nullptr,
};

// ---------------------------------------------------------------- lifecycle

AioContext::AioContext(GMainContext *gctx) : gctx_(gctx)
{
    g_main_context_ref(gctx_);
    const char *env = getenv("BLOCKGRAPH_POLL_MAX_NS");
    const char *grow = getenv("BLOCKGRAPH_POLL_GROW");
    const char *shrink = getenv("BLOCKGRAPH_POLL_SHRINK");
    set_poll_params(env ? atoll(env) : kDefaultPollMaxNs, grow ? atoll(grow) : 0,
                    shrink ? atoll(shrink) : kDefaultPollShrink);
    g_main_context_set_poll_func(gctx_, &AioContext::poll_fds);
    source_ = reinterpret_cast<Source *>(g_source_new(&g_aio_source_funcs, sizeof(Source)));
    source_->ctx = this;
    g_source_set_name(&source_->base, "blockgraph-aio");
    g_source_set_can_recurse(&source_->base, TRUE);   // see dispatch_depth_
    g_source_attach(&source_->base, gctx_);
}

std::unique_ptr<AioContext> AioContext::create(GMainContext *gctx)
{
    if (!gctx) gctx = g_main_context_get_thread_default();
    if (!gctx) gctx = g_main_context_default();
    std::unique_ptr<AioContext> ctx(new AioContext(gctx));
    if (!t_current) t_current = ctx.get();
    return ctx;
}

AioContext::~AioContext()
{
    // Backends first: they may own fd handlers and bottom halves.
    uring_.reset();
    threads_.reset();
    for (auto &h : fd_handlers_) {
        if (!h.deleted) g_source_remove_unix_fd(&source_->base, h.tag);
    }
    fd_handlers_.clear();
    {
        std::lock_guard<std::mutex> g(bh_lock_);
        while (BottomHalf *bh = bh_head_) {
            bh_head_ = bh->next_;
            bh->scheduled_ = false;
            if (bh->oneshot_) delete bh;
        }
        bh_tail_ = nullptr;
    }
    for (auto &k : timers_) k.t->pending_ = false;
    timers_.clear();
    g_source_destroy(&source_->base);
    g_source_unref(&source_->base);
    g_main_context_unref(gctx_);
    if (t_current == this) t_current = nullptr;
}

AioContext *AioContext::current() { return t_current; }
void AioContext::set_current(AioContext *ctx) { t_current = ctx; }

bool AioContext::iterate(bool blocking)
{
    if (in_coroutine()) {
        fprintf(stderr, "blockgraph: fatal: event loop run from inside a coroutine\n");
        abort();
    }
    return g_main_context_iteration(gctx_, blocking ? TRUE : FALSE);
}

void AioContext::set_poll_params(int64_t max_ns, int64_t grow, int64_t shrink)
{
    poll_max_ns_ = std::max<int64_t>(max_ns, 0);
    poll_grow_ = grow;
    poll_shrink_ = shrink;
    poll_ns_ = std::min(poll_ns_, poll_max_ns_);
}

// The GMainContext's poll function (called without GLib's context lock).
// The context is the calling thread's: GLib calls this from the thread
// iterating the loop, which is the context's owner.
gint AioContext::poll_fds(GPollFD *fds, guint nfds, gint timeout)
{
    AioContext *c = t_current;
    GMainContext *mine = g_main_context_get_thread_default();
    if (!mine) mine = g_main_context_default();
    if (!c || timeout == 0 || c->poll_max_ns_ == 0 || c->foreign_waits_ > 0 || c->gctx_ != mine) {
        return g_poll(fds, nfds, timeout);
    }
    const int64_t start = clock_ns();
    if (c->poll_ns_ > 0) {
        const int64_t end = start + c->poll_ns_;
        do {
            // Work found in memory: src_check() sees it too.
            if (c->io_poll_ready()) {
                c->poll_hits_++;
                return 0;
            }
            gint r = g_poll(fds, nfds, 0);
            if (r != 0) {
                if (r > 0) c->poll_hits_++;
                return r;
            }
            sched_yield();
        } while (clock_ns() < end);
    }
    gint r = g_poll(fds, nfds, timeout);
    c->poll_sleeps_++;
    const int64_t waited = clock_ns() - start;
    if (waited > c->poll_max_ns_) {
        c->poll_ns_ = c->poll_shrink_ > 0 ? c->poll_ns_ / c->poll_shrink_ : 0;
    } else if (c->poll_ns_ < c->poll_max_ns_) {
        int64_t grown = 4000;
        if (c->poll_ns_ && __builtin_mul_overflow(c->poll_ns_, c->poll_grow_ > 0 ? c->poll_grow_ : 2, &grown))
            grown = c->poll_max_ns_;
        c->poll_ns_ = std::min(grown, c->poll_max_ns_);
    }
    return r;
}

void AioContext::kick()
{
    if (t_current != this) g_main_context_wakeup(gctx_);
}

// ---------------------------------------------------------------- GSource

gboolean AioContext::src_prepare(GSource *src, gint *timeout)
{
    AioContext *ctx = reinterpret_cast<Source *>(src)->ctx;
    if (ctx->dispatch_depth_ > 0) {
        *timeout = -1;
        return FALSE;
    }
    ctx->run_prepare_hooks();
    if (ctx->bh_pending() || ctx->io_poll_ready()) {
        *timeout = 0;
        return TRUE;
    }
    int64_t dl = ctx->next_timer_deadline();
    if (dl < 0) {
        *timeout = -1;
        return FALSE;
    }
    int64_t now = clock_ns();
    if (dl <= now) {
        *timeout = 0;
        return TRUE;
    }
    int64_t ms = (dl - now + 999999) / 1000000;
    *timeout = ms > G_MAXINT ? G_MAXINT : static_cast<gint>(ms);
    return FALSE;
}

gboolean AioContext::src_check(GSource *src)
{
    AioContext *ctx = reinterpret_cast<Source *>(src)->ctx;
    if (ctx->dispatch_depth_ > 0) return FALSE;
    if (ctx->bh_pending() || ctx->io_poll_ready()) return TRUE;
    int64_t dl = ctx->next_timer_deadline();
    if (dl >= 0 && dl <= clock_ns()) return TRUE;
    for (auto &h : ctx->fd_handlers_) {
        if (!h.deleted && g_source_query_unix_fd(src, h.tag) != 0) return TRUE;
    }
    return FALSE;
}

gboolean AioContext::src_dispatch(GSource *src, GSourceFunc, gpointer)
{
    AioContext *ctx = reinterpret_cast<Source *>(src)->ctx;
    if (ctx->dispatch_depth_ > 0) return G_SOURCE_CONTINUE;
    ctx->dispatch_depth_++;
    AioContext *saved = t_current;
    t_current = ctx;
    ctx->iterations_++;
    ctx->run_fd_handlers();
    ctx->run_timers();
    ctx->run_bhs();
    // Submit what the callbacks queued now rather than one wake-up later.
    ctx->run_prepare_hooks();
    t_current = saved;
    ctx->dispatch_depth_--;
    return G_SOURCE_CONTINUE;
}

void AioContext::add_prepare_hook(AioCallback cb, void *opaque) { prepare_hooks_.emplace_back(cb, opaque); }

void AioContext::remove_prepare_hook(AioCallback cb, void *opaque)
{
    prepare_hooks_.remove(std::make_pair(cb, opaque));
}

void AioContext::run_prepare_hooks()
{
    for (auto &h : prepare_hooks_) h.first(h.second);
}

// ---------------------------------------------------------------- fd handlers

void AioContext::set_fd_handler(int fd, AioCallback read_cb, AioCallback write_cb, void *opaque,
                                AioPollFn io_poll)
{
    for (auto it = fd_handlers_.begin(); it != fd_handlers_.end(); ++it) {
        if (it->deleted || it->fd != fd) continue;
        g_source_remove_unix_fd(&source_->base, it->tag);
        if (it->io_poll) io_poll_handlers_--;
        if (dispatching_fds_) it->deleted = true;   // erased after the dispatch loop
        else fd_handlers_.erase(it);
        break;
    }
    if (!read_cb && !write_cb) return;
    GIOCondition cond = static_cast<GIOCondition>((read_cb ? (G_IO_IN | G_IO_HUP | G_IO_ERR) : 0) |
                                                  (write_cb ? (G_IO_OUT | G_IO_ERR) : 0));
    gpointer tag = g_source_add_unix_fd(&source_->base, fd, cond);
    if (!read_cb) io_poll = nullptr;
    if (io_poll) io_poll_handlers_++;
    fd_handlers_.push_back(FdHandler{fd, read_cb, write_cb, opaque, io_poll, tag, false});
}

bool AioContext::io_poll_ready()
{
    if (!io_poll_handlers_) return false;
    for (auto &h : fd_handlers_) {
        if (!h.deleted && h.io_poll && h.io_poll(h.opaque)) return true;
    }
    return false;
}

void AioContext::run_fd_handlers()
{
    dispatching_fds_ = true;
    for (auto &h : fd_handlers_) {
        if (h.deleted) continue;
        GIOCondition rev = g_source_query_unix_fd(&source_->base, h.tag);
        bool polled = h.io_poll && h.io_poll(h.opaque);
        if (!rev && !polled) continue;
        if (h.read_cb && (polled || (rev & (G_IO_IN | G_IO_HUP | G_IO_ERR)))) h.read_cb(h.opaque);
        if (!h.deleted && h.write_cb && (rev & (G_IO_OUT | G_IO_ERR))) h.write_cb(h.opaque);
    }
    dispatching_fds_ = false;
    fd_handlers_.remove_if([](const FdHandler &h) { return h.deleted; });
    run_ready();
}

void AioContext::run_ready()
{
    while (!ready_.empty()) {
        ready_run_.swap(ready_);
        AioContext *saved = t_current;
        t_current = this;
        coroutine_enter_batch(ready_run_.data(), ready_run_.size());
        t_current = saved;
        ready_run_.clear();
    }
}

void AioContext::co_enter_batched(Coroutine *co)
{
    if (!dispatching_fds_) {
        co_enter(co);
        return;
    }
    coroutine_set_context(co, this);
    ready_.push_back(co);
}

// ---------------------------------------------------------------- bottom halves

BottomHalf *AioContext::bh_new(AioCallback cb, void *opaque) { return new BottomHalf(this, cb, opaque, false); }

void AioContext::schedule_oneshot(AioCallback cb, void *opaque)
{
    auto *bh = new BottomHalf(this, cb, opaque, true);
    bh->schedule();
}

void AioContext::bh_enqueue(BottomHalf *bh)
{
    bh->next_ = nullptr;
    bh->round_ = bh_round_;
    if (bh_tail_) bh_tail_->next_ = bh;
    else bh_head_ = bh;
    bh_tail_ = bh;
    bh_any_.store(true, std::memory_order_release);
}

bool AioContext::bh_pending() { return bh_any_.load(std::memory_order_acquire); }

void BottomHalf::schedule()
{
    // Once the lock is released the loop may run (and, for a one-shot,
    // delete) this bottom half: do not touch members after that.
    AioContext *ctx = ctx_;
    {
        std::lock_guard<std::mutex> g(ctx->bh_lock_);
        if (scheduled_) return;
        scheduled_ = true;
        ctx->bh_enqueue(this);
    }
    ctx->kick();
}

void BottomHalf::cancel()
{
    std::lock_guard<std::mutex> g(ctx_->bh_lock_);
    if (!scheduled_) return;
    scheduled_ = false;
    BottomHalf **pp = &ctx_->bh_head_;
    BottomHalf *prev = nullptr;
    while (*pp && *pp != this) {
        prev = *pp;
        pp = &(*pp)->next_;
    }
    if (*pp) {
        *pp = next_;
        if (ctx_->bh_tail_ == this) ctx_->bh_tail_ = prev;
    }
    if (!ctx_->bh_head_) ctx_->bh_any_.store(false, std::memory_order_release);
}

BottomHalf::~BottomHalf()
{
    if (!oneshot_) cancel();
}

void AioContext::run_bhs()
{
    // Run what was queued before this round, popping one at a time under the
    // lock: bottom halves scheduled while these run (even one that already
    // ran) are stamped with a later round and wait for the next one, so a
    // self-rescheduling one cannot starve the loop; cancel() and delete of a
    // bottom half still due in this round take effect at once.
    uint64_t round;
    {
        std::lock_guard<std::mutex> g(bh_lock_);
        round = bh_round_++;
    }
    for (;;) {
        BottomHalf *bh;
        {
            std::lock_guard<std::mutex> g(bh_lock_);
            bh = bh_head_;
            if (!bh || bh->round_ > round) break;
            bh_head_ = bh->next_;
            if (!bh_head_) {
                bh_tail_ = nullptr;
                bh_any_.store(false, std::memory_order_release);
            }
            bh->next_ = nullptr;
            bh->scheduled_ = false;
        }
        bh->cb_(bh->opaque_);
        if (bh->oneshot_) delete bh;
    }
}

// ---------------------------------------------------------------- timers

void Timer::mod(int64_t deadline_ns)
{
    del();
    deadline_ = deadline_ns;
    seq_ = ++ctx_->timer_seq_;
    pending_ = true;
    ctx_->timers_.insert(AioContext::TimerKey{deadline_, seq_, this});
}

void Timer::del()
{
    if (!pending_) return;
    ctx_->timers_.erase(AioContext::TimerKey{deadline_, seq_, this});
    pending_ = false;
}

int64_t AioContext::next_timer_deadline() { return timers_.empty() ? -1 : timers_.begin()->deadline; }

void AioContext::run_timers()
{
    int64_t now = clock_ns();
    // Only timers already due when we start; ones re-armed for "now" wait a round.
    uint64_t seq_limit = timer_seq_;
    while (!timers_.empty()) {
        auto it = timers_.begin();
        if (it->deadline > now || it->seq > seq_limit) break;
        Timer *t = it->t;
        timers_.erase(it);
        t->pending_ = false;
        t->cb_(t->opaque_);
    }
}

// ---------------------------------------------------------------- coroutines

namespace {
struct CoScheduleBh {
    static void run(void *opaque)
    {
        auto *co = static_cast<Coroutine *>(opaque);
        AioContext::current()->co_enter(co);
    }
};
} // namespace

void AioContext::co_schedule(Coroutine *co)
{
    coroutine_set_context(co, this);
    schedule_oneshot(&CoScheduleBh::run, co);
}

void AioContext::co_enter(Coroutine *co)
{
    coroutine_set_context(co, this);
    AioContext *saved = t_current;
    t_current = this;
    coroutine_enter(co);
    t_current = saved;
}

void aio_co_wake(Coroutine *co)
{
    AioContext *ctx = coroutine_context(co);
    if (!ctx || ctx == AioContext::current()) coroutine_wake(co);
    else ctx->co_schedule(co);
}

namespace {
void sleep_timer_cb(void *opaque) { coroutine_wake(static_cast<Coroutine *>(opaque)); }
} // namespace

void co_sleep_ns(int64_t ns)
{
    Coroutine *self = coroutine_self();
    if (!self) {
        fprintf(stderr, "blockgraph: fatal: co_sleep_ns called outside a coroutine\n");
        abort();
    }
    AioContext *ctx = AioContext::current();
    Timer t(ctx, sleep_timer_cb, self);
    t.mod_in(ns);
    coroutine_yield();
}

// ---------------------------------------------------------------- I/O backends

bool AioContext::io_uring_available()
{
    if (!uring_tried_) {
        uring_tried_ = true;
        auto r = IoBackend::new_uring(this);
        if (r.ok()) {
            uring_ = std::move(r.value());
        } else if (!uring_warned_) {
            uring_warned_ = true;
            log_warn("io_uring unavailable (%s); using the thread pool", r.msg().c_str());
        }
    }
    return uring_ != nullptr;
}

IoBackend *AioContext::io(AioBackendKind kind)
{
    if (kind == AioBackendKind::kDefault) {
        const char *env = getenv("BLOCKGRAPH_AIO");
        kind = (env && strcmp(env, "threads") == 0) ? AioBackendKind::kThreads : AioBackendKind::kIoUring;
    }
    if (kind == AioBackendKind::kIoUring && io_uring_available()) return uring_.get();
    if (!threads_) threads_ = IoBackend::new_threads(this);
    return threads_.get();
}

} // namespace bg
