// Unit tests for util/aio.h: the AioContext event loop (bottom halves,
// timers, fd handlers, coroutine scheduling, loops in other threads).
#include <glib.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/aio.h"
#include "util/coroutine.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

constexpr int64_t kMs = 1000000;

// Runs ctx's loop until done() or the timeout; returns done().
bool run_until(AioContext *ctx, const std::function<bool()> &done, int64_t timeout_ns = 5000 * kMs)
{
    int64_t deadline = clock_ns() + timeout_ns;
    while (!done()) {
        if (clock_ns() > deadline) return false;
        if (!ctx->iterate(false)) g_usleep(50);
    }
    return true;
}

// Runs non-blocking iterations until one dispatches nothing.
void drain(AioContext *ctx)
{
    for (int i = 0; i < 1000 && ctx->iterate(false); i++) {
    }
}

struct Recorder {
    std::vector<std::string> ev;
    std::vector<uint64_t> iter;   // ctx->iterations() at each event
    AioContext *ctx = nullptr;
    void add(const std::string &e)
    {
        ev.push_back(e);
        iter.push_back(ctx ? ctx->iterations() : 0);
    }
    std::string joined() const
    {
        std::string s;
        for (auto &e : ev) s += (s.empty() ? "" : " ") + e;
        return s;
    }
};

#define ck_assert_events(rec, expected)             \
    do {                                            \
        std::string got_ = (rec).joined();          \
        ck_assert_str_eq(got_.c_str(), expected);   \
    } while (0)

// A named bottom half that records itself and may run an extra action.
struct NamedBh {
    Recorder *rec;
    std::string name;
    std::function<void()> action;
    BottomHalf *bh = nullptr;
    static void cb(void *opaque)
    {
        auto *n = static_cast<NamedBh *>(opaque);
        n->rec->add(n->name);
        if (n->action) n->action();
    }
    NamedBh(AioContext *ctx, Recorder *r, std::string nm) : rec(r), name(std::move(nm))
    {
        bh = ctx->bh_new(&NamedBh::cb, this);
    }
    ~NamedBh() { delete bh; }
};

} // namespace

// ---------------------------------------------------------------- basics

START_TEST(test_create_current)
{
    ck_assert_ptr_null(AioContext::current());
    auto ctx = AioContext::create();
    ck_assert_ptr_eq(AioContext::current(), ctx.get());
    ck_assert_ptr_nonnull(ctx->main_context());
    auto second = AioContext::create();   // the thread has one already
    ck_assert_ptr_eq(AioContext::current(), ctx.get());
    second.reset();
    ck_assert_ptr_eq(AioContext::current(), ctx.get());
    ck_assert(!ctx->iterate(false));   // nothing to do
    ctx.reset();
    ck_assert_ptr_null(AioContext::current());
}
END_TEST

START_TEST(test_clock_monotonic)
{
    int64_t a = clock_ns();
    g_usleep(2000);
    int64_t b = clock_ns();
    ck_assert_int_ge(b - a, 2 * kMs);
    ck_assert_int_lt(b - a, 2000 * kMs);
}
END_TEST

// ---------------------------------------------------------------- bottom halves

START_TEST(test_bh_order)
{
    auto ctx = AioContext::create();
    Recorder rec;
    NamedBh a(ctx.get(), &rec, "A"), b(ctx.get(), &rec, "B"), c(ctx.get(), &rec, "C");
    b.bh->schedule();
    c.bh->schedule();
    a.bh->schedule();
    ck_assert(rec.ev.empty());   // nothing runs before the loop does
    ck_assert(ctx->iterate(false));
    ck_assert_events(rec, "B C A");
    ck_assert(!ctx->iterate(false));
    // They can be scheduled again.
    a.bh->schedule();
    b.bh->schedule();
    drain(ctx.get());
    ck_assert_events(rec, "B C A A B");
}
END_TEST

START_TEST(test_bh_schedule_twice_runs_once)
{
    auto ctx = AioContext::create();
    Recorder rec;
    NamedBh a(ctx.get(), &rec, "A"), b(ctx.get(), &rec, "B");
    a.bh->schedule();
    b.bh->schedule();
    a.bh->schedule();   // no-op: keeps its place
    drain(ctx.get());
    ck_assert_events(rec, "A B");
}
END_TEST

START_TEST(test_bh_cancel)
{
    auto ctx = AioContext::create();
    Recorder rec;
    NamedBh a(ctx.get(), &rec, "A"), b(ctx.get(), &rec, "B"), c(ctx.get(), &rec, "C");
    a.bh->schedule();
    b.bh->schedule();
    c.bh->schedule();
    b.bh->cancel();   // the middle one
    c.bh->cancel();   // the tail
    a.bh->cancel();   // the head: now empty
    b.bh->cancel();   // cancelling an idle one is a no-op
    ck_assert(!ctx->iterate(false));
    ck_assert(rec.ev.empty());
    // The list is intact after cancelling the tail: appending still works.
    a.bh->schedule();
    c.bh->schedule();
    b.bh->schedule();
    c.bh->cancel();
    drain(ctx.get());
    ck_assert_events(rec, "A B");
}
END_TEST

START_TEST(test_bh_delete_scheduled)
{
    auto ctx = AioContext::create();
    Recorder rec;
    auto *a = new NamedBh(ctx.get(), &rec, "A");
    NamedBh b(ctx.get(), &rec, "B");
    a->bh->schedule();
    b.bh->schedule();
    delete a;   // deleting cancels
    drain(ctx.get());
    ck_assert_events(rec, "B");
}
END_TEST

// A bottom half scheduled from inside a bottom half runs in a later round.
START_TEST(test_bh_from_bh_later_round)
{
    auto ctx = AioContext::create();
    Recorder rec;
    rec.ctx = ctx.get();
    NamedBh a(ctx.get(), &rec, "A"), b(ctx.get(), &rec, "B");
    int self_runs = 0;
    a.action = [&] {
        b.bh->schedule();
        if (++self_runs < 3) a.bh->schedule();   // re-arms itself: not in this round
    };
    a.bh->schedule();
    ck_assert(ctx->iterate(false));
    ck_assert_events(rec, "A");
    ck_assert(ctx->iterate(false));
    ck_assert_events(rec, "A B A");
    drain(ctx.get());
    ck_assert_events(rec, "A B A B A B");
    ck_assert_uint_lt(rec.iter[0], rec.iter[1]);
    ck_assert_uint_eq(rec.iter[1], rec.iter[2]);
}
END_TEST

// B is scheduled for this round; A, running before it in the same round,
// schedules B again. Neither B nor C (behind B) may be lost.
START_TEST(test_bh_reschedule_pending_same_round)
{
    auto ctx = AioContext::create();
    Recorder rec;
    NamedBh a(ctx.get(), &rec, "A"), b(ctx.get(), &rec, "B"), c(ctx.get(), &rec, "C");
    a.action = [&] { b.bh->schedule(); };
    a.bh->schedule();
    b.bh->schedule();
    c.bh->schedule();
    drain(ctx.get());
    bool b_ran = false, c_ran = false;
    for (auto &e : rec.ev) {
        b_ran |= e == "B";
        c_ran |= e == "C";
    }
    ck_assert_msg(b_ran && c_ran, "bottom halves lost; ran: %s", rec.joined().c_str());
}
END_TEST

// Cancelling a bottom half that is due later in the same round stops it.
START_TEST(test_bh_cancel_pending_same_round)
{
    auto ctx = AioContext::create();
    Recorder rec;
    NamedBh a(ctx.get(), &rec, "A"), b(ctx.get(), &rec, "B"), c(ctx.get(), &rec, "C");
    a.action = [&] { b.bh->cancel(); };
    a.bh->schedule();
    b.bh->schedule();
    c.bh->schedule();
    drain(ctx.get());
    ck_assert_events(rec, "A C");
}
END_TEST

START_TEST(test_schedule_oneshot)
{
    auto ctx = AioContext::create();
    Recorder rec;
    struct Arg {
        Recorder *rec;
        const char *name;
    } x{&rec, "x"}, y{&rec, "y"};
    auto cb = [](void *p) {
        auto *a = static_cast<Arg *>(p);
        a->rec->add(a->name);
    };
    ctx->schedule_oneshot(cb, &x);
    ctx->schedule_oneshot(cb, &y);
    ctx->schedule_oneshot(cb, &x);   // a one-shot is a new bottom half each time
    drain(ctx.get());
    ck_assert_events(rec, "x y x");
    // Pending one-shots are freed with their context (no leak, no crash).
    ctx->schedule_oneshot(cb, &x);
    ctx.reset();
    ck_assert_events(rec, "x y x");
}
END_TEST

// ---------------------------------------------------------------- timers

namespace {
struct TimerProbe {
    Recorder *rec;
    std::string name;
    int64_t deadline = 0;
    int64_t fired_at = 0;
    int fired = 0;
    static void cb(void *opaque)
    {
        auto *p = static_cast<TimerProbe *>(opaque);
        p->fired_at = clock_ns();
        p->fired++;
        p->rec->add(p->name);
    }
};
} // namespace

START_TEST(test_timer_order_and_deadline)
{
    auto ctx = AioContext::create();
    Recorder rec;
    TimerProbe p30{&rec, "t30"}, p10{&rec, "t10"}, p20{&rec, "t20"}, p20b{&rec, "t20b"};
    Timer t30(ctx.get(), TimerProbe::cb, &p30), t10(ctx.get(), TimerProbe::cb, &p10),
        t20(ctx.get(), TimerProbe::cb, &p20), t20b(ctx.get(), TimerProbe::cb, &p20b);
    int64_t now = clock_ns();
    p30.deadline = now + 30 * kMs;
    p10.deadline = now + 10 * kMs;
    p20.deadline = now + 20 * kMs;
    p20b.deadline = p20.deadline;   // equal deadline: armed later, fires later
    t30.mod(p30.deadline);
    t10.mod(p10.deadline);
    t20.mod(p20.deadline);
    t20b.mod(p20b.deadline);
    ck_assert(t10.pending());
    ck_assert_int_eq(t10.deadline(), p10.deadline);
    ck_assert(run_until(ctx.get(), [&] { return rec.ev.size() == 4; }));
    ck_assert_events(rec, "t10 t20 t20b t30");
    for (auto *p : {&p10, &p20, &p20b, &p30}) {
        ck_assert_int_eq(p->fired, 1);
        ck_assert_int_ge(p->fired_at, p->deadline);
    }
    ck_assert(!t10.pending());
}
END_TEST

START_TEST(test_timer_blocking_wait)
{
    // iterate(true) sleeps until the timer is due, and not before.
    auto ctx = AioContext::create();
    Recorder rec;
    TimerProbe p{&rec, "t"};
    Timer t(ctx.get(), TimerProbe::cb, &p);
    int64_t start = clock_ns();
    t.mod_in(15 * kMs);
    p.deadline = t.deadline();
    ck_assert_int_ge(p.deadline, start + 15 * kMs);
    while (!p.fired) ctx->iterate(true);
    ck_assert_int_ge(p.fired_at, p.deadline);
    ck_assert_int_lt(p.fired_at - start, 1000 * kMs);
}
END_TEST

START_TEST(test_timer_del_and_mod)
{
    auto ctx = AioContext::create();
    Recorder rec;
    TimerProbe pd{&rec, "deleted"}, pm{&rec, "moved"}, pe{&rec, "end"}, pz{&rec, "destroyed"};
    Timer td(ctx.get(), TimerProbe::cb, &pd), tm(ctx.get(), TimerProbe::cb, &pm),
        te(ctx.get(), TimerProbe::cb, &pe);
    auto *tz = new Timer(ctx.get(), TimerProbe::cb, &pz);
    td.mod_in(5 * kMs);
    tz->mod_in(5 * kMs);
    tm.mod_in(5 * kMs);
    tm.mod_in(25 * kMs);   // replaces the earlier setting
    pm.deadline = tm.deadline();
    te.mod_in(40 * kMs);
    td.del();
    ck_assert(!td.pending());
    td.del();   // idempotent
    delete tz;  // destroying disarms
    ck_assert(run_until(ctx.get(), [&] { return pe.fired == 1; }));
    ck_assert_events(rec, "moved end");
    ck_assert_int_eq(pm.fired, 1);
    ck_assert_int_ge(pm.fired_at, pm.deadline);
    ck_assert_int_eq(pd.fired, 0);
    ck_assert_int_eq(pz.fired, 0);
}
END_TEST

// A timer re-armed from its own callback for "now" fires in a later round.
START_TEST(test_timer_rearm_from_callback)
{
    auto ctx = AioContext::create();
    struct State {
        Timer *t;
        int fired = 0;
        uint64_t iters[3];
        AioContext *ctx;
    } st{};
    st.ctx = ctx.get();
    Timer t(ctx.get(),
            [](void *p) {
                auto *s = static_cast<State *>(p);
                s->iters[s->fired] = s->ctx->iterations();
                if (++s->fired < 3) s->t->mod(clock_ns());
            },
            &st);
    st.t = &t;
    t.mod(clock_ns());
    ck_assert(run_until(ctx.get(), [&] { return st.fired == 3; }));
    ck_assert_uint_lt(st.iters[0], st.iters[1]);
    ck_assert_uint_lt(st.iters[1], st.iters[2]);
}
END_TEST

// ---------------------------------------------------------------- fd handlers

namespace {
struct PipeProbe {
    PipeProbe(AioContext *c, int f) : ctx(c), fd(f) {}
    AioContext *ctx;
    int fd;
    int reads = 0;
    int writes = 0;
    bool consume = true;
    bool remove_self = false;
    int *other_fd = nullptr;   // handler to remove from inside this callback
    std::string data;
    static void on_read(void *opaque)
    {
        auto *p = static_cast<PipeProbe *>(opaque);
        p->reads++;
        if (p->consume) {
            char buf[64];
            ssize_t n = read(p->fd, buf, sizeof(buf));
            if (n > 0) p->data.append(buf, static_cast<size_t>(n));
        }
        if (p->remove_self) p->ctx->set_fd_handler(p->fd, nullptr, nullptr, nullptr);
        if (p->other_fd) p->ctx->set_fd_handler(*p->other_fd, nullptr, nullptr, nullptr);
    }
    static void on_write(void *opaque) { static_cast<PipeProbe *>(opaque)->writes++; }
};

void write_str(int fd, const char *s)
{
    ssize_t n = write(fd, s, strlen(s));
    ck_assert_int_eq(n, static_cast<ssize_t>(strlen(s)));
}
} // namespace

START_TEST(test_fd_handler_read_and_remove)
{
    auto ctx = AioContext::create();
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    PipeProbe probe{ctx.get(), p[0]};
    ctx->set_fd_handler(p[0], &PipeProbe::on_read, nullptr, &probe);
    drain(ctx.get());
    ck_assert_int_eq(probe.reads, 0);   // not readable yet

    write_str(p[1], "hello");
    ck_assert(run_until(ctx.get(), [&] { return probe.reads > 0; }));
    ck_assert_str_eq(probe.data.c_str(), "hello");

    // A blocking iteration wakes up for the fd.
    std::thread writer([&] {
        g_usleep(10000);
        write_str(p[1], "world");
    });
    int64_t deadline = clock_ns() + 5000 * kMs;
    while (probe.data.size() < 10 && clock_ns() < deadline) ctx->iterate(true);
    writer.join();
    ck_assert_str_eq(probe.data.c_str(), "helloworld");

    // Removed: no more calls though the pipe is readable.
    ctx->set_fd_handler(p[0], nullptr, nullptr, nullptr);
    int reads = probe.reads;
    write_str(p[1], "x");
    for (int i = 0; i < 20; i++) ctx->iterate(false);
    ck_assert_int_eq(probe.reads, reads);
    close(p[0]);
    close(p[1]);
}
END_TEST

// Adaptive polling: the window starts empty (a ready fd is found by the
// sleeping poll), grows after a short wait so that the next ready fd is
// found while polling, shrinks to nothing after a wait longer than the
// maximum, and poll-max-ns 0 turns polling off.
START_TEST(test_fd_handler_polling)
{
    auto ctx = AioContext::create();
    ctx->set_poll_params(1000 * kMs, 0, 0);
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    PipeProbe probe{ctx.get(), p[0]};
    ctx->set_fd_handler(p[0], &PipeProbe::on_read, nullptr, &probe);
    const uint64_t hits0 = ctx->poll_hits(), sleeps0 = ctx->poll_sleeps();

    write_str(p[1], "a");
    ctx->iterate(true);
    ck_assert_str_eq(probe.data.c_str(), "a");
    ck_assert_uint_eq(ctx->poll_hits(), hits0);        // window was empty
    ck_assert_uint_eq(ctx->poll_sleeps(), sleeps0 + 1);

    write_str(p[1], "b");                              // ready before the wait: found polling
    ctx->iterate(true);
    ck_assert_str_eq(probe.data.c_str(), "ab");
    ck_assert_uint_eq(ctx->poll_hits(), hits0 + 1);
    ck_assert_uint_eq(ctx->poll_sleeps(), sleeps0 + 1);

    // A wait longer than the maximum (1 ms) empties the window.
    ctx->set_poll_params(kMs, 0, 0);
    std::thread writer([&] {
        g_usleep(30000);
        write_str(p[1], "c");
    });
    while (probe.data.size() < 3) ctx->iterate(true);
    writer.join();
    const uint64_t hits1 = ctx->poll_hits();
    write_str(p[1], "d");
    ctx->iterate(true);
    ck_assert_str_eq(probe.data.c_str(), "abcd");
    ck_assert_uint_eq(ctx->poll_hits(), hits1);

    // Off: the fd is still served, never by polling.
    ctx->set_poll_params(0, 0, 0);
    for (const char *c : {"e", "f"}) {
        write_str(p[1], c);
        ctx->iterate(true);
    }
    ck_assert_str_eq(probe.data.c_str(), "abcdef");
    ck_assert_uint_eq(ctx->poll_hits(), hits1);
    close(p[0]);
    close(p[1]);
}
END_TEST

// io_poll: work a handler reports from memory is served without its
// descriptor being readable, before the loop would sleep and while it polls;
// a removed handler's io_poll is no longer asked.
namespace {
struct MemProbe {
    std::atomic<bool> work{false};
    std::atomic<int> calls{0};
    static bool poll(void *opaque) { return static_cast<MemProbe *>(opaque)->work.load(); }
    static void on_read(void *opaque)
    {
        auto *m = static_cast<MemProbe *>(opaque);
        m->calls++;
        m->work = false;
    }
};
} // namespace

START_TEST(test_fd_handler_io_poll)
{
    auto ctx = AioContext::create();
    ctx->set_poll_params(1000 * kMs, 1000000, 0);   // the second growth fills the window
    int p[2];
    ck_assert_int_eq(pipe(p), 0);   // written only if the loop missed the work
    MemProbe m;
    ctx->set_fd_handler(p[0], &MemProbe::on_read, nullptr, &m, &MemProbe::poll);
    drain(ctx.get());
    ck_assert_int_eq(m.calls, 0);

    // Work already there: a blocking iteration does not sleep.
    m.work = true;
    const uint64_t sleeps0 = ctx->poll_sleeps();
    int64_t t0 = clock_ns();
    ctx->iterate(true);
    ck_assert_int_eq(m.calls, 1);
    ck_assert_uint_eq(ctx->poll_sleeps(), sleeps0);
    ck_assert_int_lt(clock_ns() - t0, 500 * kMs);

    // Grow the window with two short sleeps (bottom halves from another
    // thread), then work that appears while the loop polls ends the wait
    // as a poll hit, not a sleep. Were it missed, the loop would sleep
    // until the pipe is written, and the handler would run more than once.
    std::atomic<int> bh_runs{0};
    BottomHalf *bh = ctx->bh_new([](void *o) { (*static_cast<std::atomic<int> *>(o))++; }, &bh_runs);
    for (int i = 1; i <= 2; i++) {
        std::thread kicker([&] {
            g_usleep(2000);
            bh->schedule();
        });
        while (bh_runs < i) ctx->iterate(true);
        kicker.join();
    }
    delete bh;
    const uint64_t hits1 = ctx->poll_hits(), sleeps1 = ctx->poll_sleeps();
    std::thread setter([&] {
        g_usleep(2000);
        m.work = true;
        int64_t give_up = clock_ns() + 3000 * kMs;
        while (m.calls < 2 && clock_ns() < give_up) g_usleep(1000);
        if (m.calls < 2) write_str(p[1], "x");
    });
    int64_t deadline = clock_ns() + 5000 * kMs;
    while (m.calls < 2 && clock_ns() < deadline) ctx->iterate(true);
    setter.join();
    ck_assert_int_eq(m.calls, 2);
    ck_assert_uint_eq(ctx->poll_hits(), hits1 + 1);
    ck_assert_uint_eq(ctx->poll_sleeps(), sleeps1);

    // Removed: its io_poll is not asked any more.
    ctx->set_fd_handler(p[0], nullptr, nullptr, nullptr);
    m.work = true;
    for (int i = 0; i < 20; i++) ctx->iterate(false);
    ck_assert_int_eq(m.calls, 2);
    close(p[0]);
    close(p[1]);
}
END_TEST

// A handler that removes itself is not called again, though the fd stays
// readable (level-triggered); removing another fd's handler from a callback
// in the same dispatch round is also safe and takes effect at once.
START_TEST(test_fd_handler_remove_from_callback)
{
    auto ctx = AioContext::create();
    int p[2], q[2];
    ck_assert_int_eq(pipe(p), 0);
    ck_assert_int_eq(pipe(q), 0);
    PipeProbe pp{ctx.get(), p[0]}, pq{ctx.get(), q[0]};
    pp.consume = false;
    pp.remove_self = true;
    pq.consume = false;
    pq.remove_self = true;
    ctx->set_fd_handler(p[0], &PipeProbe::on_read, nullptr, &pp);
    ctx->set_fd_handler(q[0], &PipeProbe::on_read, nullptr, &pq);
    // Whichever runs first removes the other.
    pp.other_fd = &q[0];
    pq.other_fd = &p[0];
    write_str(p[1], "a");
    write_str(q[1], "b");
    ck_assert(run_until(ctx.get(), [&] { return pp.reads + pq.reads > 0; }));
    for (int i = 0; i < 20; i++) ctx->iterate(false);
    ck_assert_int_eq(pp.reads + pq.reads, 1);

    // Re-adding works after removal from a callback.
    pp.remove_self = false;
    pp.other_fd = nullptr;
    pp.consume = true;
    ctx->set_fd_handler(p[0], &PipeProbe::on_read, nullptr, &pp);
    int before = pp.reads;
    ck_assert(run_until(ctx.get(), [&] { return pp.reads > before; }));
    ck_assert_str_eq(pp.data.c_str(), "a");
    ctx->set_fd_handler(p[0], nullptr, nullptr, nullptr);
    for (int fd : {p[0], p[1], q[0], q[1]}) close(fd);
}
END_TEST

START_TEST(test_fd_handler_write_and_replace)
{
    auto ctx = AioContext::create();
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    PipeProbe probe{ctx.get(), p[1]};
    ctx->set_fd_handler(p[1], nullptr, &PipeProbe::on_write, &probe);
    ck_assert(run_until(ctx.get(), [&] { return probe.writes > 0; }));   // an empty pipe is writable
    ck_assert_int_eq(probe.reads, 0);

    // Replacing the handler: only the new one is called.
    PipeProbe reader{ctx.get(), p[0]};
    ctx->set_fd_handler(p[0], &PipeProbe::on_read, nullptr, &probe);
    ctx->set_fd_handler(p[0], &PipeProbe::on_read, nullptr, &reader);
    ctx->set_fd_handler(p[1], nullptr, nullptr, nullptr);
    int writes = probe.writes;
    write_str(p[1], "z");
    ck_assert(run_until(ctx.get(), [&] { return reader.reads > 0; }));
    for (int i = 0; i < 5; i++) ctx->iterate(false);
    ck_assert_int_eq(probe.reads, 0);
    ck_assert_int_eq(probe.writes, writes);
    ck_assert_str_eq(reader.data.c_str(), "z");
    ctx->set_fd_handler(p[0], nullptr, nullptr, nullptr);
    close(p[0]);
    close(p[1]);
}
END_TEST

// ---------------------------------------------------------------- hooks, GLib

START_TEST(test_prepare_hook)
{
    auto ctx = AioContext::create();
    int calls = 0;
    auto hook = [](void *p) { (*static_cast<int *>(p))++; };
    ctx->add_prepare_hook(hook, &calls);
    ctx->iterate(false);
    ck_assert_int_gt(calls, 0);
    ctx->remove_prepare_hook(hook, &calls);
    int after = calls;
    for (int i = 0; i < 5; i++) ctx->iterate(false);
    ck_assert_int_eq(calls, after);
}
END_TEST

// The context is a GSource: ordinary GLib sources run next to it.
START_TEST(test_glib_sources_coexist)
{
    auto ctx = AioContext::create();
    int idle_runs = 0, bh_runs = 0;
    g_idle_add(
        [](gpointer p) -> gboolean {
            (*static_cast<int *>(p))++;
            return G_SOURCE_REMOVE;
        },
        &idle_runs);
    ctx->schedule_oneshot([](void *p) { (*static_cast<int *>(p))++; }, &bh_runs);
    ck_assert(run_until(ctx.get(), [&] { return idle_runs == 1 && bh_runs == 1; }));
    // A GMainLoop drives it too.
    GMainLoop *loop = g_main_loop_new(ctx->main_context(), FALSE);
    ctx->schedule_oneshot([](void *p) { g_main_loop_quit(static_cast<GMainLoop *>(p)); }, loop);
    g_main_loop_run(loop);
    g_main_loop_unref(loop);
}
END_TEST

// ---------------------------------------------------------------- coroutines

START_TEST(test_co_sleep)
{
    auto ctx = AioContext::create();
    int64_t slept = run_in_coroutine([] {
        int64_t t0 = clock_ns();
        co_sleep_ns(20 * kMs);
        return clock_ns() - t0;
    });
    ck_assert_int_ge(slept, 20 * kMs);
    ck_assert_int_lt(slept, 2000 * kMs);

    // Concurrent sleepers wake in deadline order, each no earlier than asked.
    Recorder rec;
    int done = 0;
    const int64_t delays[] = {30, 5, 20, 10};
    for (int64_t d : delays) {
        ctx->co_enter(coroutine_create_fn([&rec, &done, d] {
            int64_t t0 = clock_ns();
            co_sleep_ns(d * kMs);
            ck_assert_int_ge(clock_ns() - t0, d * kMs);
            rec.add(std::to_string(d));
            done++;
        }));
    }
    ck_assert(run_until(ctx.get(), [&] { return done == 4; }));
    ck_assert_events(rec, "5 10 20 30");
}
END_TEST

START_TEST(test_co_schedule_and_co_enter)
{
    auto ctx = AioContext::create();
    Recorder rec;
    Coroutine *co = coroutine_create_fn([&] {
        rec.add("run1");
        ck_assert_ptr_eq(coroutine_context(coroutine_self()), AioContext::current());
        AioContext::current()->co_schedule(coroutine_self());
        coroutine_yield();
        rec.add("run2");
    });
    ctx->co_schedule(co);
    ck_assert(rec.ev.empty());   // only from the loop
    ck_assert_ptr_eq(coroutine_context(co), ctx.get());
    ck_assert(run_until(ctx.get(), [&] { return rec.ev.size() == 2; }));
    ck_assert_events(rec, "run1 run2");
}
END_TEST

START_TEST(test_aio_co_wake_same_thread)
{
    auto ctx = AioContext::create();
    bool resumed = false;
    Coroutine *co = coroutine_create_fn([&] {
        coroutine_yield();
        resumed = true;
    });
    ctx->co_enter(co);
    aio_co_wake(co);   // own thread, outside a coroutine: at once
    ck_assert(resumed);
}
END_TEST

START_TEST(test_iterate_in_coroutine_aborts)
{
    auto ctx = AioContext::create();
    ctx->co_enter(coroutine_create_fn([&] { ctx->iterate(false); }));
    ck_abort_msg("iterate() in a coroutine did not abort");
}
END_TEST

// ---------------------------------------------------------------- other threads

namespace {

// A thread running its own GMainContext + AioContext until told to stop.
class LoopThread {
  public:
    LoopThread()
    {
        thread_ = std::thread([this] { run(); });
        std::unique_lock<std::mutex> g(lk_);
        cv_.wait(g, [this] { return ctx_ != nullptr; });
    }
    ~LoopThread()
    {
        ctx_->schedule_oneshot([](void *p) { static_cast<LoopThread *>(p)->stop_ = true; }, this);
        thread_.join();
    }
    AioContext *ctx() const { return ctx_; }
    std::thread::id id() const { return thread_.get_id(); }

  private:
    void run()
    {
        GMainContext *gctx = g_main_context_new();
        g_main_context_push_thread_default(gctx);
        auto ctx = AioContext::create(gctx);
        {
            std::lock_guard<std::mutex> g(lk_);
            ctx_ = ctx.get();
        }
        cv_.notify_all();
        while (!stop_) ctx->iterate(true);
        ctx.reset();
        g_main_context_pop_thread_default(gctx);
        g_main_context_unref(gctx);
    }
    std::thread thread_;
    std::mutex lk_;
    std::condition_variable cv_;
    AioContext *ctx_ = nullptr;
    bool stop_ = false;   // only touched by the loop thread
};

// A one-shot result handed from another thread.
template <typename T>
struct Mailbox {
    std::mutex lk;
    std::condition_variable cv;
    bool has = false;
    T value{};
    void put(T v)
    {
        std::lock_guard<std::mutex> g(lk);
        value = std::move(v);
        has = true;
        cv.notify_all();
    }
    bool get(T *out, int ms = 5000)
    {
        std::unique_lock<std::mutex> g(lk);
        if (!cv.wait_for(g, std::chrono::milliseconds(ms), [this] { return has; })) return false;
        *out = value;
        has = false;
        return true;
    }
};

struct Where {
    std::thread::id tid;
    AioContext *ctx = nullptr;
    bool in_co = false;
};

} // namespace

START_TEST(test_thread_schedule_oneshot)
{
    auto main_ctx = AioContext::create();
    LoopThread lt;
    ck_assert_ptr_ne(lt.ctx(), main_ctx.get());
    Mailbox<Where> box;
    // The worker sleeps in iterate(true): scheduling must wake it.
    g_usleep(20000);
    lt.ctx()->schedule_oneshot(
        [](void *p) {
            static_cast<Mailbox<Where> *>(p)->put(Where{std::this_thread::get_id(), AioContext::current(), false});
        },
        &box);
    Where w;
    ck_assert(box.get(&w));
    ck_assert(w.tid == lt.id());
    ck_assert_ptr_eq(w.ctx, lt.ctx());

    // A bottom half of the worker's context, scheduled from here, many times.
    struct Count {
        std::atomic<int> n{0};
    } count;
    BottomHalf *bh = nullptr;
    Mailbox<BottomHalf *> made;
    std::pair<Mailbox<BottomHalf *> *, Count *> make_arg(&made, &count);
    lt.ctx()->schedule_oneshot(
        [](void *p) {
            auto *c = static_cast<std::pair<Mailbox<BottomHalf *> *, Count *> *>(p);
            c->first->put(AioContext::current()->bh_new([](void *q) { static_cast<Count *>(q)->n++; }, c->second));
        },
        &make_arg);
    ck_assert(made.get(&bh));
    for (int i = 0; i < 100; i++) {
        int before = count.n;
        bh->schedule();
        int64_t deadline = clock_ns() + 5000 * kMs;
        while (count.n == before && clock_ns() < deadline) std::this_thread::yield();
        ck_assert_int_eq(count.n, before + 1);
    }
    // Delete it in its own thread.
    Mailbox<int> deleted;
    struct Del {
        BottomHalf *bh;
        Mailbox<int> *box;
    } del{bh, &deleted};
    lt.ctx()->schedule_oneshot(
        [](void *p) {
            auto *d = static_cast<Del *>(p);
            delete d->bh;
            d->box->put(1);
        },
        &del);
    int one = 0;
    ck_assert(deleted.get(&one));
}
END_TEST

START_TEST(test_thread_co_schedule)
{
    LoopThread lt;
    Mailbox<Where> box;
    // A coroutine made here, entered by the worker's loop.
    Coroutine *co = coroutine_create_fn([&box] {
        box.put(Where{std::this_thread::get_id(), AioContext::current(), in_coroutine()});
    });
    lt.ctx()->co_schedule(co);
    Where w;
    ck_assert(box.get(&w));
    ck_assert(w.tid == lt.id());
    ck_assert_ptr_eq(w.ctx, lt.ctx());
    ck_assert(w.in_co);
}
END_TEST

// A coroutine waiting in the worker is woken from the main thread with
// aio_co_wake(); it resumes in the worker, with the worker's context.
START_TEST(test_thread_aio_co_wake)
{
    auto main_ctx = AioContext::create();
    LoopThread lt;
    Mailbox<Coroutine *> waiting;
    Mailbox<Where> box;
    struct Arg {
        Mailbox<Coroutine *> *waiting;
        Mailbox<Where> *box;
    } arg{&waiting, &box};
    lt.ctx()->schedule_oneshot(
        [](void *p) {
            auto *a = static_cast<Arg *>(p);
            AioContext::current()->co_enter(coroutine_create_fn([a] {
                for (int i = 0; i < 3; i++) {
                    a->waiting->put(coroutine_self());
                    coroutine_yield();
                    a->box->put(Where{std::this_thread::get_id(), AioContext::current(), in_coroutine()});
                }
            }));
        },
        &arg);
    for (int i = 0; i < 3; i++) {
        Coroutine *co = nullptr;
        ck_assert(waiting.get(&co));
        ck_assert_ptr_eq(coroutine_context(co), lt.ctx());
        g_usleep(5000);   // let the worker go back to sleep in poll
        aio_co_wake(co);
        Where w;
        ck_assert(box.get(&w));
        ck_assert(w.tid == lt.id());
        ck_assert_ptr_eq(w.ctx, lt.ctx());
        ck_assert(w.in_co);
    }
}
END_TEST

// Many threads hammer one context with schedule_oneshot; every one runs.
START_TEST(test_thread_many_producers)
{
    LoopThread lt;
    std::atomic<int> ran{0};
    constexpr int kThreads = 4, kEach = 2000;
    std::vector<std::thread> producers;
    for (int t = 0; t < kThreads; t++) {
        producers.emplace_back([&] {
            for (int i = 0; i < kEach; i++)
                lt.ctx()->schedule_oneshot([](void *p) { (*static_cast<std::atomic<int> *>(p))++; }, &ran);
        });
    }
    for (auto &t : producers) t.join();
    int64_t deadline = clock_ns() + 5000 * kMs;
    while (ran < kThreads * kEach && clock_ns() < deadline) g_usleep(100);
    ck_assert_int_eq(ran.load(), kThreads * kEach);
}
END_TEST

// ---------------------------------------------------------------- suite

static Suite *aio_suite()
{
    Suite *s = suite_create("aio");

    TCase *tc = tcase_create("basic");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_create_current);
    tcase_add_test(tc, test_clock_monotonic);
    tcase_add_test(tc, test_prepare_hook);
    tcase_add_test(tc, test_glib_sources_coexist);
    suite_add_tcase(s, tc);

    tc = tcase_create("bh");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_bh_order);
    tcase_add_test(tc, test_bh_schedule_twice_runs_once);
    tcase_add_test(tc, test_bh_cancel);
    tcase_add_test(tc, test_bh_delete_scheduled);
    tcase_add_test(tc, test_bh_from_bh_later_round);
    tcase_add_test(tc, test_bh_reschedule_pending_same_round);
    tcase_add_test(tc, test_bh_cancel_pending_same_round);
    tcase_add_test(tc, test_schedule_oneshot);
    suite_add_tcase(s, tc);

    tc = tcase_create("timer");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_timer_order_and_deadline);
    tcase_add_test(tc, test_timer_blocking_wait);
    tcase_add_test(tc, test_timer_del_and_mod);
    tcase_add_test(tc, test_timer_rearm_from_callback);
    suite_add_tcase(s, tc);

    tc = tcase_create("fd");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_fd_handler_read_and_remove);
    tcase_add_test(tc, test_fd_handler_remove_from_callback);
    tcase_add_test(tc, test_fd_handler_write_and_replace);
    tcase_add_test(tc, test_fd_handler_polling);
    tcase_add_test(tc, test_fd_handler_io_poll);
    suite_add_tcase(s, tc);

    tc = tcase_create("coroutine");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_co_sleep);
    tcase_add_test(tc, test_co_schedule_and_co_enter);
    tcase_add_test(tc, test_aio_co_wake_same_thread);
    tcase_add_test_raise_signal(tc, test_iterate_in_coroutine_aborts, SIGABRT);
    suite_add_tcase(s, tc);

    tc = tcase_create("thread");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_thread_schedule_oneshot);
    tcase_add_test(tc, test_thread_co_schedule);
    tcase_add_test(tc, test_thread_aio_co_wake);
    tcase_add_test(tc, test_thread_many_producers);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(aio_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
