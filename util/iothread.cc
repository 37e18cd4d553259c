// IoThread: a std::thread running its own GMainContext and AioContext.
//
// Life cycle (all of the context's state is created and destroyed in the
// thread itself, so that thread_local state such as AioContext::current()
// and the coroutine pool belongs to it):
//   create()  starts the thread and waits until the thread has made its
//             GMainContext (thread default) and AioContext;
//   thread    loops "while (!stopping_) ctx->iterate(true)", then runs the
//             bottom halves still pending, deletes the AioContext and drops
//             its reference to the GMainContext;
//   stop()    sets stopping_ and wakes the context;
//   ~IoThread stop() + join, then drops the reference create() kept so that
//             stop() may wake the context even after the thread is gone.
#include "util/iothread.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cassert>
#include <condition_variable>
#include <mutex>
#include <system_error>

#include "util/log.h"

namespace bg {

namespace {

// Hand-shake between create() and the new thread.
struct StartState {
    std::mutex lock;
    std::condition_variable cond;
    bool ready = false;
};

// One run_sync() call.
struct SyncCall {
    void (*fn)(void *);
    void *opaque;
    std::mutex lock;
    std::condition_variable cond;
    bool done = false;

    static void run(void *p)
    {
        auto *c = static_cast<SyncCall *>(p);
        c->fn(c->opaque);
        std::lock_guard<std::mutex> g(c->lock);
        c->done = true;
        c->cond.notify_one();   // under the lock: the waiter owns *c
    }
};

} // namespace

Result<std::unique_ptr<IoThread>> IoThread::create(const std::string &id)
{
    std::unique_ptr<IoThread> t(new IoThread());
    t->id_ = id;
    StartState st;
    IoThread *self = t.get();

    // Process-directed signals (SIGTERM, SIGUSR1...) go to the main thread,
    // which runs the handlers; the new thread inherits this mask.
    sigset_t block, old;
    sigemptyset(&block);
    for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD, SIGPIPE}) sigaddset(&block, s);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    try {
        t->thread_ = std::thread([self, &st] {
            GMainContext *gctx = g_main_context_new();
            g_main_context_push_thread_default(gctx);
            std::unique_ptr<AioContext> ctx = AioContext::create(gctx);
            AioContext::set_current(ctx.get());
            {
                std::lock_guard<std::mutex> g(st.lock);
                self->gctx_ = gctx;
                g_main_context_ref(gctx);        // create()'s reference, see the file comment
                self->ctx_ = ctx.get();
                st.ready = true;
                st.cond.notify_one();
            }
            self->run();
            // Run what was scheduled before stop() (e.g. a last run_sync);
            // bounded, in case something keeps rescheduling itself.
            for (int i = 0; i < 1000 && ctx->iterate(false); i++) {
            }
            AioContext::set_current(nullptr);
            ctx.reset();
            g_main_context_pop_thread_default(gctx);
            g_main_context_unref(gctx);
        });
    } catch (const std::system_error &e) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return make_error(e.code().value() ? e.code().value() : EAGAIN,
                          "iothread '%s': cannot start a thread: %s", id.c_str(), e.what());
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);

    std::string name = ("iothread-" + id).substr(0, 15);   // the kernel's limit
    pthread_setname_np(t->thread_.native_handle(), name.c_str());

    std::unique_lock<std::mutex> g(st.lock);
    st.cond.wait(g, [&] { return st.ready; });
    log_debug("iothread '%s' started", id.c_str());
    return t;
}

void IoThread::run()
{
    while (!stopping_.load(std::memory_order_acquire)) {
        ctx_->iterate(true);
    }
}

void IoThread::stop()
{
    stopping_.store(true, std::memory_order_release);
    if (gctx_) g_main_context_wakeup(gctx_);
}

// REQUIRES: stop() not called yet (a stopped thread would never run fn).
void IoThread::run_sync(void (*fn)(void *), void *opaque)
{
    assert(!stopping_.load(std::memory_order_acquire));
    if (AioContext::current() == ctx_) {   // called from the thread itself
        fn(opaque);
        return;
    }
    SyncCall call{fn, opaque, {}, {}, false};
    ctx_->schedule_oneshot(&SyncCall::run, &call);
    std::unique_lock<std::mutex> g(call.lock);
    call.cond.wait(g, [&] { return call.done; });
}

IoThread::~IoThread()
{
    stop();
    if (thread_.joinable()) thread_.join();
    if (gctx_) g_main_context_unref(gctx_);
    log_debug("iothread '%s' stopped", id_.c_str());
}

} // namespace bg
