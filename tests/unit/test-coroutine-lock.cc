// Unit tests for util/coroutine-lock.h: CoMutex and CoQueue.
#include <glib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/aio.h"
#include "util/coroutine-lock.h"
#include "util/coroutine.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

// Runs ctx's loop until *done or the deadline; returns *done.
bool run_until(AioContext *ctx, const std::function<bool()> &done, int64_t timeout_ns = 5000000000LL)
{
    int64_t deadline = clock_ns() + timeout_ns;
    while (!done()) {
        if (clock_ns() > deadline) return false;
        if (!ctx->iterate(false)) g_usleep(100);
    }
    return true;
}

// Yields and comes back through a bottom half of the current context.
void coroutine_fn co_reschedule()
{
    AioContext::current()->co_schedule(coroutine_self());
    coroutine_yield();
}

} // namespace

// ---------------------------------------------------------------- CoMutex

// Waiters acquire in the order they queued; a late-comer queues behind them
// even while hand-offs are in progress; try_lock never jumps the queue.
START_TEST(test_mutex_fifo)
{
    auto ctx = AioContext::create();
    constexpr int kN = 20;
    CoMutex m;
    std::vector<int> order;
    bool try_while_queued = true;

    Coroutine *holder = coroutine_create_fn([&] {
        m.lock();
        coroutine_yield();
        try_while_queued = m.try_lock();   // held by us, waiters queued: must fail
        m.unlock();
    });
    ctx->co_enter(holder);
    ck_assert(m.locked());
    ck_assert_ptr_eq(m.holder(), holder);

    for (int i = 0; i < kN; i++) {
        ctx->co_enter(coroutine_create_fn([&, i] {
            m.lock();
            ck_assert_ptr_eq(m.holder(), coroutine_self());
            order.push_back(i);
            if (i == 0) {
                // Arrives while 1..kN-1 wait: must come after all of them.
                ctx->co_enter(coroutine_create_fn([&] {
                    m.lock();
                    order.push_back(1000);
                    m.unlock();
                }));
            }
            co_reschedule();   // hold it across a trip through the loop
            m.unlock();
        }));
    }
    ck_assert(order.empty());
    ctx->co_enter(holder);
    ck_assert(!try_while_queued);
    ck_assert(run_until(ctx.get(), [&] { return order.size() == kN + 1; }));
    for (int i = 0; i < kN; i++) ck_assert_int_eq(order[i], i);
    ck_assert_int_eq(order[kN], 1000);
    ck_assert(!m.locked());
    ck_assert_ptr_null(m.holder());
}
END_TEST

// Many coroutines increment a counter with yields and sleeps inside the
// critical section; the count is exact and there is never a second holder.
START_TEST(test_mutex_no_lost_wakeups)
{
    auto ctx = AioContext::create();
    constexpr int kCoroutines = 50, kIters = 20;
    CoMutex m;
    int counter = 0, inside = 0, max_inside = 0, finished = 0;
    uint64_t waits = 0;
    for (int c = 0; c < kCoroutines; c++) {
        ctx->co_enter(coroutine_create_fn([&, c] {
            for (int i = 0; i < kIters; i++) {
                if (m.locked()) waits++;
                m.lock();
                inside++;
                if (inside > max_inside) max_inside = inside;
                ck_assert_ptr_eq(m.holder(), coroutine_self());
                int v = counter;
                if ((c + i) % 7 == 0) co_sleep_ns(20000);
                else co_reschedule();
                counter = v + 1;
                inside--;
                m.unlock();
                if (i % 3 == 0) co_reschedule();
            }
            finished++;
        }));
    }
    ck_assert(run_until(ctx.get(), [&] { return finished == kCoroutines; }));
    ck_assert_int_eq(counter, kCoroutines * kIters);
    ck_assert_int_eq(max_inside, 1);
    ck_assert_uint_gt(waits, 0);   // there was contention
    ck_assert(!m.locked());
}
END_TEST

START_TEST(test_mutex_try_lock)
{
    auto ctx = AioContext::create();
    CoMutex m;
    bool done = false;
    ck_assert(!m.locked());
    Coroutine *a = coroutine_create_fn([&] {
        ck_assert(m.try_lock());
        ck_assert(m.locked());
        ck_assert_ptr_eq(m.holder(), coroutine_self());
        ck_assert(!m.try_lock());
        coroutine_yield();
        m.unlock();
        ck_assert(!m.locked());
        ck_assert(m.try_lock());   // free again
        m.unlock();
    });
    ctx->co_enter(a);
    ctx->co_enter(coroutine_create_fn([&] {
        ck_assert(!m.try_lock());   // held by a: fails, never yields
        ck_assert_ptr_eq(m.holder(), a);
        done = true;
    }));
    ck_assert(done);
    ctx->co_enter(a);
    ck_assert(!m.locked());
}
END_TEST

START_TEST(test_mutex_guard)
{
    auto ctx = AioContext::create();
    CoMutex m;
    std::vector<std::string> ev;
    for (int i = 0; i < 2; i++) {
        ctx->co_enter(coroutine_create_fn([&, i] {
            {
                CoMutexGuard g(m);
                ev.push_back("in" + std::to_string(i));
                co_reschedule();
                ev.push_back("out" + std::to_string(i));
            }
            ck_assert(m.holder() != coroutine_self());
        }));
    }
    ck_assert(run_until(ctx.get(), [&] { return ev.size() == 4; }));
    ck_assert_str_eq(ev[0].c_str(), "in0");
    ck_assert_str_eq(ev[1].c_str(), "out0");
    ck_assert_str_eq(ev[2].c_str(), "in1");
    ck_assert_str_eq(ev[3].c_str(), "out1");
    ck_assert(!m.locked());
}
END_TEST

START_TEST(test_mutex_recursive_aborts)
{
    auto ctx = AioContext::create();
    CoMutex m;
    ctx->co_enter(coroutine_create_fn([&] {
        m.lock();
        m.lock();
    }));
    ck_abort_msg("recursive lock did not abort");
}
END_TEST

START_TEST(test_mutex_unlock_unlocked_aborts)
{
    CoMutex m;
    m.unlock();
    ck_abort_msg("unlocking a free mutex did not abort");
}
END_TEST

// Two threads, each with its own GMainContext and AioContext running a loop;
// coroutines of both contend for one CoMutex.
namespace {

struct CrossShared {
    CoMutex m;
    int64_t counter = 0;          // guarded by m
    int inside = 0;               // guarded by m (checked, never > 1)
    int bad = 0;                  // violations seen
    int last_thread = -1;         // guarded by m
    int cross_handoffs = 0;       // guarded by m: holder thread changed
    std::mutex lk;
    std::condition_variable cv;
    int threads_done = 0;         // loops finished (guarded by lk)
    int threads_exited = 0;       // guarded by lk
};

constexpr int kCrossCoroutines = 16, kCrossIters = 40;

void cross_thread_main(CrossShared *sh, int id)
{
    GMainContext *gctx = g_main_context_new();
    g_main_context_push_thread_default(gctx);
    {
        auto ctx = AioContext::create(gctx);
        int finished = 0;
        for (int c = 0; c < kCrossCoroutines; c++) {
            ctx->co_enter(coroutine_create_fn([sh, id, c, &finished] {
                for (int i = 0; i < kCrossIters; i++) {
                    sh->m.lock();
                    if (++sh->inside != 1) sh->bad++;
                    if (sh->m.holder() != coroutine_self()) sh->bad++;
                    if (sh->last_thread != id) {
                        if (sh->last_thread >= 0) sh->cross_handoffs++;
                        sh->last_thread = id;
                    }
                    int64_t v = sh->counter;
                    if ((i + c) % 5 == 0) co_sleep_ns(10000);
                    else co_reschedule();
                    sh->counter = v + 1;
                    sh->inside--;
                    sh->m.unlock();
                    if (i % 2) co_reschedule();
                }
                finished++;
            }));
        }
        while (finished < kCrossCoroutines) ctx->iterate(true);
        // Keep the context alive until the other thread is done too: it may
        // still be scheduling wake-ups into this one until then.
        std::unique_lock<std::mutex> g(sh->lk);
        sh->threads_done++;
        sh->cv.notify_all();
        sh->cv.wait(g, [sh] { return sh->threads_done == 2; });
    }
    g_main_context_pop_thread_default(gctx);
    g_main_context_unref(gctx);
    std::lock_guard<std::mutex> g(sh->lk);
    sh->threads_exited++;
    sh->cv.notify_all();
}

} // namespace

START_TEST(test_mutex_cross_thread)
{
    auto *sh = new CrossShared;   // leaked on timeout: the threads may still use it
    std::thread t0(cross_thread_main, sh, 0), t1(cross_thread_main, sh, 1);
    bool ok;
    {
        std::unique_lock<std::mutex> g(sh->lk);
        ok = sh->cv.wait_for(g, std::chrono::seconds(8), [sh] { return sh->threads_exited == 2; });
    }
    if (!ok) {
        t0.detach();
        t1.detach();
        ck_abort_msg("cross-thread CoMutex test deadlocked (done=%d)", sh->threads_done);
    }
    t0.join();
    t1.join();
    ck_assert_int_eq(sh->counter, 2 * kCrossCoroutines * kCrossIters);
    ck_assert_int_eq(sh->bad, 0);
    ck_assert_int_gt(sh->cross_handoffs, 0);
    ck_assert(!sh->m.locked());
    delete sh;
}
END_TEST

// ---------------------------------------------------------------- CoQueue

START_TEST(test_queue_restart_next_order)
{
    auto ctx = AioContext::create();
    CoQueue q;
    std::vector<int> woken;
    ck_assert(q.empty());
    ck_assert(!q.restart_next());
    for (int i = 0; i < 5; i++) {
        ctx->co_enter(coroutine_create_fn([&, i] {
            q.wait();
            woken.push_back(i);
        }));
    }
    ck_assert(!q.empty());
    ck_assert(woken.empty());
    // From outside a coroutine the longest waiter runs at once.
    ck_assert(q.restart_next());
    ck_assert_int_eq(woken.size(), 1);
    ck_assert_int_eq(woken[0], 0);
    // From inside a coroutine: deferred until the waker yields.
    ctx->co_enter(coroutine_create_fn([&] {
        ck_assert(q.restart_next());
        ck_assert(q.restart_next());
        ck_assert_int_eq(woken.size(), 1);
    }));
    ck_assert_int_eq(woken.size(), 3);
    ck_assert_int_eq(woken[1], 1);
    ck_assert_int_eq(woken[2], 2);
    ck_assert(q.restart_next());
    ck_assert(q.restart_next());
    ck_assert(!q.restart_next());
    ck_assert(q.empty());
    ck_assert_int_eq(woken.size(), 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(woken[i], i);
}
END_TEST

START_TEST(test_queue_restart_all)
{
    auto ctx = AioContext::create();
    CoQueue q;
    std::vector<int> woken;
    ck_assert_int_eq(q.restart_all(), 0);
    for (int i = 0; i < 7; i++) {
        ctx->co_enter(coroutine_create_fn([&, i] {
            q.wait();
            woken.push_back(i);
            q.wait();   // a second round: must not be woken by the first restart_all
            woken.push_back(100 + i);
        }));
    }
    ck_assert_int_eq(q.restart_all(), 7);
    ck_assert_int_eq(woken.size(), 7);
    for (int i = 0; i < 7; i++) ck_assert_int_eq(woken[i], i);
    ck_assert(!q.empty());
    // From a coroutine: all woken, in order, once it terminates.
    ctx->co_enter(coroutine_create_fn([&] { ck_assert_int_eq(q.restart_all(), 7); }));
    ck_assert_int_eq(woken.size(), 14);
    for (int i = 0; i < 7; i++) ck_assert_int_eq(woken[7 + i], 100 + i);
    ck_assert(q.empty());
}
END_TEST

// wait(&m) releases m while waiting and holds it again when it returns.
START_TEST(test_queue_wait_with_mutex)
{
    auto ctx = AioContext::create();
    CoQueue q;
    CoMutex m;
    std::vector<std::string> ev;
    bool ready = false;
    Coroutine *consumer = coroutine_create_fn([&] {
        m.lock();
        while (!ready) q.wait(&m);
        ck_assert_ptr_eq(m.holder(), coroutine_self());
        ev.push_back("consumer");
        m.unlock();
    });
    ctx->co_enter(consumer);
    ck_assert(!m.locked());   // released while waiting
    ctx->co_enter(coroutine_create_fn([&] {
        m.lock();
        ready = true;
        q.restart_next();
        ev.push_back("producer-signalled");
        co_reschedule();   // still holding m: the consumer must wait for it
        ev.push_back("producer-unlock");
        m.unlock();
    }));
    ck_assert(run_until(ctx.get(), [&] { return ev.size() == 3; }));
    ck_assert_str_eq(ev[0].c_str(), "producer-signalled");
    ck_assert_str_eq(ev[1].c_str(), "producer-unlock");
    ck_assert_str_eq(ev[2].c_str(), "consumer");
    ck_assert(!m.locked());
}
END_TEST

// A CoQueue shared by two threads: restart_next from the main thread wakes a
// coroutine waiting in another thread's loop, which runs there.
START_TEST(test_queue_cross_thread)
{
    CoQueue q;
    std::atomic<int> phase{0};
    std::atomic<bool> woke_in_thread{false};
    std::thread t([&] {
        GMainContext *gctx = g_main_context_new();
        g_main_context_push_thread_default(gctx);
        {
            auto ctx = AioContext::create(gctx);
            std::thread::id me = std::this_thread::get_id();
            bool done = false;
            ctx->co_enter(coroutine_create_fn([&] {
                phase = 1;
                q.wait();
                woke_in_thread = std::this_thread::get_id() == me;
                done = true;
            }));
            int64_t deadline = clock_ns() + 5000000000LL;
            while (!done && clock_ns() < deadline) {
                if (!ctx->iterate(false)) g_usleep(200);
            }
        }
        g_main_context_pop_thread_default(gctx);
        g_main_context_unref(gctx);
        phase = 2;
    });
    int64_t deadline = clock_ns() + 5000000000LL;
    while (phase.load() == 0 && clock_ns() < deadline) g_usleep(100);
    ck_assert_int_eq(phase.load(), 1);
    while (q.empty() && clock_ns() < deadline) g_usleep(100);
    ck_assert(q.restart_next());
    t.join();
    ck_assert_int_eq(phase.load(), 2);
    ck_assert(woke_in_thread.load());
}
END_TEST

// ---------------------------------------------------------------- suite

static Suite *coroutine_lock_suite()
{
    Suite *s = suite_create("coroutine-lock");

    TCase *tc = tcase_create("comutex");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_mutex_fifo);
    tcase_add_test(tc, test_mutex_no_lost_wakeups);
    tcase_add_test(tc, test_mutex_try_lock);
    tcase_add_test(tc, test_mutex_guard);
    tcase_add_test_raise_signal(tc, test_mutex_recursive_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_mutex_unlock_unlocked_aborts, SIGABRT);
    tcase_add_test(tc, test_mutex_cross_thread);
    suite_add_tcase(s, tc);

    tc = tcase_create("coqueue");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_queue_restart_next_order);
    tcase_add_test(tc, test_queue_restart_all);
    tcase_add_test(tc, test_queue_wait_with_mutex);
    tcase_add_test(tc, test_queue_cross_thread);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(coroutine_lock_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
