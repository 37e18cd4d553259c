// AioContext: the event loop every layer runs on.
//
// An AioContext is a GSource attached to a GMainContext, so it runs inside a
// GMainLoop (or any g_main_context_iteration caller) next to other sources. It
// owns fd handlers, bottom halves, timers and the I/O backends (an io_uring
// ring and, lazily, a thread pool) used by coroutines running in it.
//
// Threading model: one AioContext per thread; each thread that runs a loop has
// its own (AioContext::current() is thread_local). Only the owning thread may
// touch fd handlers and timers or run the loop. bh_schedule(),
// schedule_oneshot(), co_schedule() and aio_co_wake() may be called from any
// thread; they wake the owning loop.
#pragma once

#include <glib.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <type_traits>
#include <utility>
#include <vector>

#include "util/coroutine.h"
#include "util/error.h"

namespace bg {

class AioContext;
class IoBackend;

using AioCallback = void (*)(void *opaque);
// Says, without a system call, whether a handler has work (an io_uring's
// completion queue in memory).
using AioPollFn = bool (*)(void *opaque);

// Monotonic clock in nanoseconds.
int64_t clock_ns();

// A bottom half: a callback scheduled to run once, soon, in its context's
// loop. Scheduled bottom halves run in the order they were scheduled.
// Scheduling an already scheduled one is a no-op.
class BottomHalf {
  public:
    void schedule();   // any thread
    void cancel();     // owning thread
    ~BottomHalf();

  private:
    friend class AioContext;
    BottomHalf(AioContext *ctx, AioCallback cb, void *opaque, bool oneshot)
        : ctx_(ctx), cb_(cb), opaque_(opaque), oneshot_(oneshot) {}
    AioContext *ctx_;
    AioCallback cb_;
    void *opaque_;
    bool oneshot_;              // deleted after it runs
    bool scheduled_ = false;    // guarded by ctx_->bh_lock_
    uint64_t round_ = 0;        // ctx_->bh_round_ when queued; guarded by bh_lock_
    BottomHalf *next_ = nullptr;
};

// A one-shot timer on a context's clock (clock_ns()). Owning thread only.
class Timer {
  public:
    Timer(AioContext *ctx, AioCallback cb, void *opaque) : ctx_(ctx), cb_(cb), opaque_(opaque) {}
    ~Timer() { del(); }
    Timer(const Timer &) = delete;
    Timer &operator=(const Timer &) = delete;
    // Fire at deadline_ns (absolute, clock_ns() time); replaces an earlier setting.
    void mod(int64_t deadline_ns);
    void mod_in(int64_t delay_ns) { mod(clock_ns() + delay_ns); }
    void del();
    bool pending() const { return pending_; }
    int64_t deadline() const { return deadline_; }

  private:
    friend class AioContext;
    AioContext *ctx_;
    AioCallback cb_;
    void *opaque_;
    bool pending_ = false;
    int64_t deadline_ = 0;
    uint64_t seq_ = 0;
};

enum class AioBackendKind { kDefault, kIoUring, kThreads };

class AioContext {
  public:
    // Creates a context attached to gctx (nullptr: the thread-default main
    // context, g_main_context_get_thread_default() or the global default) and
    // makes it current for the calling thread if the thread has none.
    static std::unique_ptr<AioContext> create(GMainContext *gctx = nullptr);
    ~AioContext();
    AioContext(const AioContext &) = delete;
    AioContext &operator=(const AioContext &) = delete;

    // The context of the calling thread (nullptr if none).
    static AioContext *current();
    static void set_current(AioContext *ctx);

    GMainContext *main_context() const { return gctx_; }

    // Runs one loop iteration of the GMainContext. Returns true if anything
    // was dispatched. Owning thread only; never from a coroutine.
    bool iterate(bool blocking);

    // ---- fd handlers ----
    // Calls read_cb / write_cb when fd is readable / writable. Passing both
    // null removes the handler. One handler per fd. io_poll (optional, with
    // read_cb) tells from memory that read_cb has work: it is asked before
    // the loop would poll the descriptors and at each turn of the polling
    // window, and read_cb runs whenever it says so, without the descriptor
    // having been polled (QEMU's io_poll).
    void set_fd_handler(int fd, AioCallback read_cb, AioCallback write_cb, void *opaque,
                        AioPollFn io_poll = nullptr);

    // ---- bottom halves ----
    BottomHalf *bh_new(AioCallback cb, void *opaque);  // freed with delete
    // Runs cb(opaque) once, soon, in this context. Any thread.
    void schedule_oneshot(AioCallback cb, void *opaque);

    // ---- coroutines ----
    // Enters co from this context's loop, soon. Any thread. co must be
    // yielded (or fresh) and not otherwise about to be woken.
    void co_schedule(Coroutine *co);
    // Enters co now, making this context its home (owning thread).
    void co_enter(Coroutine *co);
    // Enters co, making this context its home, at the end of the current
    // fd-handler round together with every other coroutine queued this way,
    // as one chain (coroutine_enter_batch: one switch per hand-over instead
    // of two). Outside an fd-handler round it enters co at once. Owning
    // thread, outside coroutines; co must not be entered otherwise before.
    void co_enter_batched(Coroutine *co);

    // ---- I/O ----
    // The backend of the given kind: io_uring by default, falling back (with
    // a warning, once) to the thread pool where a ring cannot be set up, or
    // when BLOCKGRAPH_AIO=threads is set.
    IoBackend *io(AioBackendKind kind = AioBackendKind::kDefault);
    bool io_uring_available();

    // Hooks run just before the loop sleeps (used to flush batched I/O).
    void add_prepare_hook(AioCallback cb, void *opaque);
    void remove_prepare_hook(AioCallback cb, void *opaque);

    // Adaptive polling (QEMU's poll-max-ns, poll-grow, poll-shrink): before
    // the loop sleeps it checks its descriptors without sleeping for up to
    // the current window, yielding the CPU between checks to anything
    // runnable. The window starts empty, grows (x grow, 0 = x2, from 4 us)
    // while sleeps end within max_ns and shrinks (/ shrink, 0 = to empty;
    // default kDefaultPollShrink) after a longer one. max_ns 0 turns it off. Owning thread. Default:
    // kDefaultPollMaxNs, or BLOCKGRAPH_POLL_MAX_NS from the environment.
    // 128 us, not QEMU's 32 us: on this project's 2-vCPU machine a depth-1
    // request cycle without polling is 40-100 us (the wake-up included), so a
    // 32 us window emptied itself and stayed empty (docs/performance.md).
    static constexpr int64_t kDefaultPollMaxNs = 131072;
    // The default shrink: a long sleep halves the window instead of
    // emptying it (QEMU's 0). At depth 1 a few device waits past max_ns
    // (an O_DIRECT write) emptied it every few requests, and the requests
    // after each slept through their wake-up: NBD 4k random read/write at
    // depth 1 went from 1.38x to 1.50-1.69x qemu-nbd's (docs/performance.md).
    // BLOCKGRAPH_POLL_SHRINK and BLOCKGRAPH_POLL_GROW override shrink and
    // grow for every context.
    static constexpr int64_t kDefaultPollShrink = 2;
    void set_poll_params(int64_t max_ns, int64_t grow, int64_t shrink);
    // Waits for work another thread completes (a client library's callback
    // scheduling the waiting coroutine, as librbd's): while one is in
    // flight the loop sleeps instead of polling, since spinning would only
    // take the CPU those threads need (on two vCPUs, 15-30% of rbd's
    // throughput at depth 64: docs/performance.md). Begin and end pair up,
    // in the owning thread.
    void foreign_wait_begin() { foreign_waits_++; }
    void foreign_wait_end() { foreign_waits_--; }
    int64_t poll_max_ns() const { return poll_max_ns_; }

    // Statistics.
    uint64_t iterations() const { return iterations_; }
    uint64_t poll_hits() const { return poll_hits_; }     // waits ended while polling
    uint64_t poll_sleeps() const { return poll_sleeps_; } // waits that slept

  private:
    friend class BottomHalf;
    friend class Timer;
    struct FdHandler {
        int fd;
        AioCallback read_cb, write_cb;
        void *opaque;
        AioPollFn io_poll;
        gpointer tag;
        bool deleted;
    };
    struct Source;

    explicit AioContext(GMainContext *gctx);

  public:  // GSource callbacks (for the GSourceFuncs table only)
    static gboolean src_prepare(GSource *src, gint *timeout);
    static gboolean src_check(GSource *src);
    static gboolean src_dispatch(GSource *src, GSourceFunc, gpointer);

  private:

    void bh_enqueue(BottomHalf *bh);   // bh_lock_ held by caller
    bool bh_pending();
    void run_bhs();
    void run_timers();
    void run_fd_handlers();
    void run_ready();
    void run_prepare_hooks();
    bool io_poll_ready();
    int64_t next_timer_deadline();
    void kick();
    static gint poll_fds(GPollFD *fds, guint nfds, gint timeout);

    GMainContext *gctx_;
    Source *source_;
    int64_t poll_max_ns_ = 0, poll_grow_ = 0, poll_shrink_ = 0;
    int64_t poll_ns_ = 0;                // current window
    uint64_t poll_hits_ = 0, poll_sleeps_ = 0;
    int foreign_waits_ = 0;        // foreign_wait_begin() minus end()
    std::list<FdHandler> fd_handlers_;
    unsigned io_poll_handlers_ = 0;      // handlers with an io_poll
    bool dispatching_fds_ = false;
    // Depth of src_dispatch on this thread's stack. The source may recurse
    // (GLib then leaves its fds in the poll set while it dispatches: a
    // blocked source's fds are removed and re-added around every dispatch,
    // two wakeup-fd writes and a spurious wakeup each time), but a nested
    // iteration run from one of our callbacks dispatches nothing of ours.
    int dispatch_depth_ = 0;
    std::vector<Coroutine *> ready_;     // co_enter_batched() queue
    std::vector<Coroutine *> ready_run_; // the chain being entered

    std::mutex bh_lock_;
    BottomHalf *bh_head_ = nullptr, *bh_tail_ = nullptr;
    std::atomic<bool> bh_any_{false};
    uint64_t bh_round_ = 0;   // run_bhs() rounds started; guarded by bh_lock_

    struct TimerKey {
        int64_t deadline;
        uint64_t seq;
        Timer *t;
        bool operator<(const TimerKey &o) const
        {
            return deadline != o.deadline ? deadline < o.deadline : seq < o.seq;
        }
    };
    std::set<TimerKey> timers_;
    uint64_t timer_seq_ = 0;

    std::list<std::pair<AioCallback, void *>> prepare_hooks_;

    std::unique_ptr<IoBackend> uring_;
    std::unique_ptr<IoBackend> threads_;
    bool uring_tried_ = false;
    bool uring_warned_ = false;
    uint64_t iterations_ = 0;
};

// Wakes co, a coroutine waiting in any thread's context: directly (see
// coroutine_wake) if it belongs to the calling thread's context, otherwise by
// scheduling it in its own context.
void aio_co_wake(Coroutine *co);

// Sleeps for ns nanoseconds in the current context. REQUIRES in_coroutine().
void coroutine_fn co_sleep_ns(int64_t ns);

// ---- The bridge for synchronous callers ----
// Runs fn() in a coroutine and returns its result. In a coroutine, calls fn()
// directly. Otherwise creates one, enters it and runs the current thread's
// AioContext loop until it finishes. REQUIRES AioContext::current().
template <typename F>
auto run_in_coroutine(F &&fn) -> std::invoke_result_t<F &>
{
    using R = std::invoke_result_t<F &>;
    if (in_coroutine()) return fn();
    AioContext *ctx = AioContext::current();
    struct State {
        std::remove_reference_t<F> *fn;
        bool done = false;
        std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> result{};
    } st{&fn};
    Coroutine *co = coroutine_create(
        [](void *p) {
            auto *s = static_cast<State *>(p);
            if constexpr (std::is_void_v<R>) (*s->fn)();
            else s->result.emplace((*s->fn)());
            s->done = true;
        },
        &st);
    ctx->co_enter(co);
    while (!st.done) ctx->iterate(true);
    if constexpr (!std::is_void_v<R>) return std::move(*st.result);
}

} // namespace bg
