// Unit tests for util/coroutine.h (and the run_in_coroutine bridge).
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "util/aio.h"
#include "util/coroutine.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

std::vector<std::string> g_events;

void ev(const std::string &e) { g_events.push_back(e); }

std::string joined()
{
    std::string s;
    for (auto &e : g_events) {
        if (!s.empty()) s += ' ';
        s += e;
    }
    return s;
}

} // namespace

// The joined string must outlive the assertion (it keeps a pointer).
#define ck_assert_events(expected)                  \
    do {                                            \
        std::string got_ = joined();                \
        ck_assert_str_eq(got_.c_str(), expected);   \
    } while (0)

// ---------------------------------------------------------------- enter/yield

START_TEST(test_enter_yield_order)
{
    g_events.clear();
    ck_assert(!in_coroutine());
    ck_assert_ptr_null(coroutine_self());
    Coroutine *co = coroutine_create_fn([&] {
        ev("c1");
        ck_assert(in_coroutine());
        ck_assert_ptr_nonnull(coroutine_self());
        coroutine_yield();
        ev("c2");
        coroutine_yield();
        ev("c3");
    });
    ev("m0");
    coroutine_enter(co);
    ck_assert(!in_coroutine());
    ck_assert(!coroutine_is_terminated(co));
    ev("m1");
    coroutine_enter(co);
    ev("m2");
    coroutine_enter(co);
    ev("m3");
    ck_assert_events("m0 c1 m1 c2 m2 c3 m3");
}
END_TEST

START_TEST(test_self_identity)
{
    Coroutine *seen = nullptr;
    Coroutine *co = coroutine_create_fn([&] {
        seen = coroutine_self();
        coroutine_yield();
        ck_assert_ptr_eq(coroutine_self(), seen);
    });
    coroutine_enter(co);
    ck_assert_ptr_eq(seen, co);
    coroutine_enter(co);
}
END_TEST

// A enters B; B's yield returns to A, A's yield returns to main; B may later
// be resumed by main directly.
START_TEST(test_nesting)
{
    g_events.clear();
    Coroutine *b = coroutine_create_fn([] {
        ev("b1");
        coroutine_yield();   // back to A
        ev("b2");
        coroutine_yield();   // back to main (who resumed us)
        ev("b3");
    });
    Coroutine *a = coroutine_create_fn([b] {
        ev("a1");
        coroutine_enter(b);
        ev("a2");
        ck_assert_ptr_ne(coroutine_self(), b);
        coroutine_enter(b);
        ev("a3");
        coroutine_yield();   // back to main
        ev("a4");
    });
    coroutine_enter(a);
    ev("m1");
    coroutine_enter(b);
    ev("m2");
    coroutine_enter(a);
    ev("m3");
    ck_assert_events("a1 b1 a2 b2 a3 m1 b3 m2 a4 m3");
}
END_TEST

// Three levels deep: each yield returns one level up.
START_TEST(test_nesting_deep)
{
    g_events.clear();
    Coroutine *c = coroutine_create_fn([] {
        ev("c");
        coroutine_yield();
        ev("c'");
    });
    Coroutine *b = coroutine_create_fn([c] {
        ev("b");
        coroutine_enter(c);
        ev("b'");
        coroutine_enter(c);
        ev("b''");
    });
    Coroutine *a = coroutine_create_fn([b] {
        ev("a");
        coroutine_enter(b);
        ev("a'");
    });
    coroutine_enter(a);
    ck_assert_events("a b c b' c' b'' a'");
}
END_TEST

// ---------------------------------------------------------------- scale, pool

START_TEST(test_many_live)
{
    constexpr int kN = 10000;
    CoroutineStats before = coroutine_stats();
    std::vector<Coroutine *> cos(kN);
    int started = 0, finished = 0;
    for (int i = 0; i < kN; i++) {
        cos[i] = coroutine_create_fn([&started, &finished, i, &cos] {
            ck_assert_ptr_eq(coroutine_self(), cos[i]);
            started++;
            volatile int on_stack = i;
            coroutine_yield();
            ck_assert_int_eq(on_stack, i);   // our stack survived 9,999 others
            finished++;
        });
    }
    for (int i = 0; i < kN; i++) coroutine_enter(cos[i]);
    ck_assert_int_eq(started, kN);
    ck_assert_int_eq(finished, 0);
    CoroutineStats mid = coroutine_stats();
    ck_assert_uint_eq(mid.created - before.created, kN);
    // All live at once: every one needed its own stack.
    ck_assert_uint_ge(mid.stacks_mapped - before.stacks_mapped + before.pool_size, kN);
    for (int i = kN - 1; i >= 0; i--) coroutine_enter(cos[i]);
    ck_assert_int_eq(finished, kN);
    ck_assert_uint_gt(coroutine_stats().pool_size, 0);
}
END_TEST

START_TEST(test_pool_reuse)
{
    constexpr int kN = 64;
    int ran = 0;
    // Warm up: kN live at once, then all finish and go to the pool.
    std::vector<Coroutine *> cos;
    for (int i = 0; i < kN; i++) cos.push_back(coroutine_create_fn([&ran] { coroutine_yield(); ran++; }));
    for (auto *co : cos) coroutine_enter(co);
    for (auto *co : cos) coroutine_enter(co);
    ck_assert_int_eq(ran, kN);
    CoroutineStats warm = coroutine_stats();
    ck_assert_uint_ge(warm.pool_size, kN);

    // Sequential and concurrent reuse map nothing new.
    for (int i = 0; i < 1000; i++) coroutine_enter(coroutine_create_fn([&ran] { ran++; }));
    cos.clear();
    for (int i = 0; i < kN; i++) cos.push_back(coroutine_create_fn([&ran] { coroutine_yield(); ran++; }));
    for (auto *co : cos) coroutine_enter(co);
    for (auto *co : cos) coroutine_enter(co);
    CoroutineStats after = coroutine_stats();
    ck_assert_int_eq(ran, 2 * kN + 1000);
    ck_assert_uint_eq(after.stacks_mapped, warm.stacks_mapped);
    ck_assert_uint_eq(after.created - warm.created, 1000 + kN);
    ck_assert_uint_eq(after.pool_size, warm.pool_size);
}
END_TEST

START_TEST(test_stats_switches)
{
    CoroutineStats a = coroutine_stats();
    Coroutine *co = coroutine_create_fn([] { coroutine_yield(); });
    coroutine_enter(co);   // main->co, co->main
    coroutine_enter(co);   // main->co, co->main (terminated)
    CoroutineStats b = coroutine_stats();
    ck_assert_uint_eq(b.switches - a.switches, 4);
    ck_assert_uint_eq(b.created - a.created, 1);
}
END_TEST

// ---------------------------------------------------------------- stacks

namespace {

__attribute__((noinline)) uint64_t use_stack(int depth, int max_depth)
{
    volatile uint8_t pad[1024];
    for (size_t i = 0; i < sizeof(pad); i += 64) pad[i] = static_cast<uint8_t>(depth + i);
    uint64_t below = depth < max_depth ? use_stack(depth + 1, max_depth) : 0;
    uint64_t sum = below;   // non-tail: pad is read after the call returns
    for (size_t i = 0; i < sizeof(pad); i += 64) sum += pad[i];
    return sum;
}

uint64_t use_stack_expected(int max_depth)
{
    uint64_t sum = 0;
    for (int d = 0; d <= max_depth; d++)
        for (size_t i = 0; i < 1024; i += 64) sum += static_cast<uint8_t>(d + i);
    return sum;
}

volatile int g_sink;
volatile int g_never = -1;   // a depth never reached: keeps the compiler from proving anything

__attribute__((noinline)) int recurse_forever(int depth)
{
    volatile char pad[512];
    pad[0] = static_cast<char>(depth);
    pad[511] = static_cast<char>(depth);
    if (depth == g_never) return 0;
    int r = recurse_forever(depth + 1);
    return r + pad[0] + pad[511];
}

} // namespace

START_TEST(test_stack_size)
{
    ck_assert_uint_ge(coroutine_stack_size(), 1u << 20);
    ck_assert_uint_eq(coroutine_stack_size() % 4096, 0);
}
END_TEST

// A coroutine may use most of its stack; neighbours are not disturbed.
START_TEST(test_stack_deep_use_ok)
{
    int depth = static_cast<int>(coroutine_stack_size() / 1024 / 2);   // ~half the stack
    uint64_t got = 0;
    volatile uint64_t marker_value = 0;
    Coroutine *neighbour = coroutine_create_fn([&marker_value] {
        volatile uint64_t marker = 0x5a5a5a5a12345678ull;
        coroutine_yield();
        marker_value = marker;
    });
    coroutine_enter(neighbour);
    coroutine_enter(coroutine_create_fn([&] { got = use_stack(0, depth); }));
    coroutine_enter(neighbour);
    ck_assert_uint_eq(got, use_stack_expected(depth));
    ck_assert_uint_eq(marker_value, 0x5a5a5a5a12345678ull);
}
END_TEST

namespace {

uintptr_t g_guard_lo, g_guard_hi;   // where the guard page must be

// Runs on an alternate stack. A fault inside the guard page is re-raised with
// the default action (the test expects SIGSEGV); a fault anywhere else means
// the overflow went past the guard page, and fails the test.
void overflow_segv_handler(int, siginfo_t *si, void *)
{
    auto a = reinterpret_cast<uintptr_t>(si->si_addr);
    if (a >= g_guard_lo && a < g_guard_hi) {
        signal(SIGSEGV, SIG_DFL);   // the faulting access repeats and kills us
        return;
    }
    static const char msg[] = "stack overflow faulted outside the guard page\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    _exit(3);
}

} // namespace

// Unbounded recursion hits the guard page: SIGSEGV, not silent corruption.
START_TEST(test_stack_overflow_segv)
{
    static std::vector<char> altstack(1 << 16);
    stack_t ss{};
    ss.ss_sp = altstack.data();
    ss.ss_size = altstack.size();
    ck_assert_int_eq(sigaltstack(&ss, nullptr), 0);
    struct sigaction sa {};
    sa.sa_sigaction = overflow_segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    ck_assert_int_eq(sigaction(SIGSEGV, &sa, nullptr), 0);

    Coroutine *co = coroutine_create_fn([] {
        volatile char top;
        // The stack's top lies a few frames above this local; the guard page
        // is the page just below top - stack size.
        auto here = reinterpret_cast<uintptr_t>(&top);
        size_t size = coroutine_stack_size(), ps = static_cast<size_t>(getpagesize());
        g_guard_lo = here - size - ps;
        g_guard_hi = here + 16384 - size;
        g_sink = recurse_forever(0);
    });
    coroutine_enter(co);
    ck_abort_msg("recursion without bound returned");
}
END_TEST

// ---------------------------------------------------------------- misuse aborts

START_TEST(test_enter_self_aborts)
{
    Coroutine *co = coroutine_create_fn([] { coroutine_enter(coroutine_self()); });
    coroutine_enter(co);
    ck_abort_msg("entering a running coroutine did not abort");
}
END_TEST

// B tries to enter A, which is running (it is B's caller).
START_TEST(test_enter_caller_aborts)
{
    static Coroutine *a;
    a = coroutine_create_fn([] {
        Coroutine *b = coroutine_create_fn([] { coroutine_enter(a); });
        coroutine_enter(b);
    });
    coroutine_enter(a);
    ck_abort_msg("entering a running coroutine did not abort");
}
END_TEST

START_TEST(test_enter_finished_aborts)
{
    int ran = 0;
    Coroutine *co = coroutine_create_fn([&ran] { ran++; });
    coroutine_enter(co);
    ck_assert_int_eq(ran, 1);
    coroutine_enter(co);   // finished (pooled): must abort
    ck_abort_msg("entering a finished coroutine did not abort");
}
END_TEST

START_TEST(test_yield_outside_aborts)
{
    coroutine_yield();
    ck_abort_msg("yield outside a coroutine did not abort");
}
END_TEST

START_TEST(test_wake_twice_aborts)
{
    Coroutine *sleeper = coroutine_create_fn([] { coroutine_yield(); });
    coroutine_enter(sleeper);
    Coroutine *waker = coroutine_create_fn([sleeper] {
        coroutine_wake(sleeper);
        coroutine_wake(sleeper);
    });
    coroutine_enter(waker);
    ck_abort_msg("waking a coroutine twice did not abort");
}
END_TEST

// ---------------------------------------------------------------- wake

// From inside a coroutine the wake-up is deferred until the waker yields.
START_TEST(test_wake_deferred_until_yield)
{
    g_events.clear();
    Coroutine *b = coroutine_create_fn([] {
        ev("b1");
        coroutine_yield();
        ev("b2");
    });
    coroutine_enter(b);
    Coroutine *a = coroutine_create_fn([b] {
        ev("a1");
        coroutine_wake(b);
        ev("a2");   // b has not run yet
        coroutine_yield();
        ev("a3");
    });
    coroutine_enter(a);
    ev("m");
    coroutine_enter(a);
    ck_assert_events("b1 a1 a2 b2 m a3");
}
END_TEST

// ... or terminates; several wake-ups run in the order they were made.
START_TEST(test_wake_on_terminate_fifo)
{
    g_events.clear();
    std::vector<Coroutine *> w;
    for (int i = 0; i < 3; i++) {
        w.push_back(coroutine_create_fn([i] {
            coroutine_yield();
            ev("w" + std::to_string(i));
        }));
        coroutine_enter(w.back());
    }
    coroutine_enter(coroutine_create_fn([&w] {
        coroutine_wake(w[2]);
        coroutine_wake(w[0]);
        coroutine_wake(w[1]);
        ev("waker-done");
    }));
    ev("m");
    ck_assert_events("waker-done w2 w0 w1 m");
}
END_TEST

// Outside a coroutine, wake enters at once.
START_TEST(test_wake_from_outside_immediate)
{
    g_events.clear();
    Coroutine *b = coroutine_create_fn([] {
        coroutine_yield();
        ev("b");
    });
    coroutine_enter(b);
    ev("before");
    coroutine_wake(b);
    ev("after");
    ck_assert_events("before b after");
}
END_TEST

// A wake-up issued by a nested coroutine runs when that coroutine yields,
// i.e. still inside its caller, before the caller continues.
START_TEST(test_wake_nested)
{
    g_events.clear();
    Coroutine *s = coroutine_create_fn([] {
        coroutine_yield();
        ev("s");
    });
    coroutine_enter(s);
    Coroutine *inner = coroutine_create_fn([s] {
        coroutine_wake(s);
        ev("inner");
        coroutine_yield();
    });
    coroutine_enter(coroutine_create_fn([inner] {
        coroutine_enter(inner);
        ev("outer");
        coroutine_enter(inner);
    }));
    ck_assert_events("inner s outer");
}
END_TEST

// ---------------------------------------------------------------- create_fn

START_TEST(test_create_fn_captures)
{
    auto shared = std::make_shared<int>(7);
    std::weak_ptr<int> weak = shared;
    std::string text = "hello";
    int out = 0;
    std::string out_text;
    auto owned = std::make_unique<int>(35);
    Coroutine *co = coroutine_create_fn(
        [shared = std::move(shared), text, &out, &out_text, owned = std::move(owned)]() mutable {
            coroutine_yield();
            out = *shared + *owned;
            text += " world";
            out_text = text;
        });
    ck_assert(!weak.expired());   // held by the coroutine's copy of the lambda
    text = "changed";             // captured by value: the coroutine does not see this
    coroutine_enter(co);
    ck_assert_int_eq(out, 0);
    coroutine_enter(co);
    ck_assert_int_eq(out, 42);
    ck_assert_str_eq(out_text.c_str(), "hello world");
    ck_assert(weak.expired());    // the callable was destroyed when it returned
}
END_TEST

START_TEST(test_create_with_opaque)
{
    struct Arg {
        int in;
        int out;
    } arg{20, 0};
    Coroutine *co = coroutine_create(
        [](void *p) {
            auto *a = static_cast<Arg *>(p);
            a->out = a->in * 2;
            coroutine_yield();
            a->out += 2;
        },
        &arg);
    coroutine_enter(co);
    ck_assert_int_eq(arg.out, 40);
    coroutine_enter(co);
    ck_assert_int_eq(arg.out, 42);
}
END_TEST

// ---------------------------------------------------------------- run_in_coroutine

START_TEST(test_run_in_coroutine_value)
{
    auto ctx = AioContext::create();
    ck_assert_ptr_eq(AioContext::current(), ctx.get());
    int v = run_in_coroutine([] {
        ck_assert(in_coroutine());
        co_sleep_ns(1000000);   // needs the loop to come back
        return 42;
    });
    ck_assert_int_eq(v, 42);
    ck_assert(!in_coroutine());

    std::string s = run_in_coroutine([] { return std::string("blockgraph"); });
    ck_assert_str_eq(s.c_str(), "blockgraph");

    // Move-only result; resumed from the loop through a bottom half.
    std::unique_ptr<int> p = run_in_coroutine([] {
        AioContext::current()->co_schedule(coroutine_self());
        coroutine_yield();
        return std::make_unique<int>(9);
    });
    ck_assert_int_eq(*p, 9);

    // An lvalue callable.
    int calls = 0;
    auto fn = [&calls] {
        calls++;
        return calls * 10;
    };
    ck_assert_int_eq(run_in_coroutine(fn), 10);
    ck_assert_int_eq(calls, 1);
}
END_TEST

START_TEST(test_run_in_coroutine_void)
{
    auto ctx = AioContext::create();
    bool done = false;
    Coroutine *self = nullptr;
    run_in_coroutine([&] {
        self = coroutine_self();
        co_sleep_ns(100000);
        // Already in a coroutine: runs fn directly, in the same coroutine.
        run_in_coroutine([&] { ck_assert_ptr_eq(coroutine_self(), self); });
        done = true;
    });
    ck_assert(done);
    ck_assert_ptr_nonnull(self);
    ck_assert(!in_coroutine());
}
END_TEST

// ---------------------------------------------------------------- suite

// ---------------------------------------------------------------- chains

// A chain enters its members in order; each hands over to the next with one
// switch; yielded members can be entered again later; terminated ones are
// recycled (the pool grows back).
START_TEST(test_batch_order_and_switches)
{
    g_events.clear();
    Coroutine *a = coroutine_create_fn([] {
        ev("a1");
        coroutine_yield();
        ev("a2");
    });
    Coroutine *b = coroutine_create_fn([] { ev("b"); });
    Coroutine *c = coroutine_create_fn([] {
        ev("c1");
        coroutine_yield();
        ev("c2");
    });
    Coroutine *cos[] = {a, b, c};
    uint64_t sw0 = coroutine_stats().switches;
    coroutine_enter_batch(cos, 3);
    ev("m");
    // main -> a -> b -> c -> main: 4 switches, not 6.
    ck_assert_uint_eq(coroutine_stats().switches - sw0, 4);
    ck_assert_events("a1 b c1 m");
    ck_assert(!in_coroutine());
    Coroutine *again[] = {c, a};
    coroutine_enter_batch(again, 2);
    ck_assert_events("a1 b c1 m c2 a2");
    // Recycled: new coroutines come from the pool without mapping stacks.
    uint64_t mapped = coroutine_stats().stacks_mapped;
    for (int i = 0; i < 3; i++) {
        Coroutine *x = coroutine_create_fn([] {});
        coroutine_enter(x);
    }
    ck_assert_uint_eq(coroutine_stats().stacks_mapped, mapped);
}
END_TEST

// Wake-ups a member queues run right after it, before the rest of the chain.
START_TEST(test_batch_wakeups_run_next)
{
    g_events.clear();
    Coroutine *w = coroutine_create_fn([] {
        ev("w1");
        coroutine_yield();
        ev("w2");
    });
    coroutine_enter(w);
    Coroutine *a = coroutine_create_fn([w] {
        ev("a");
        coroutine_wake(w);
        ev("a-after-wake");
    });
    Coroutine *b = coroutine_create_fn([] { ev("b"); });
    Coroutine *cos[] = {a, b};
    coroutine_enter_batch(cos, 2);
    ck_assert_events("w1 a a-after-wake w2 b");
}
END_TEST

// A member may enter other coroutines itself (and even start a nested
// batch, which then runs one at a time); they return to it, not to the chain.
START_TEST(test_batch_nested_enter)
{
    g_events.clear();
    Coroutine *inner = coroutine_create_fn([] {
        ev("i1");
        coroutine_yield();
        ev("i2");
    });
    Coroutine *a = coroutine_create_fn([inner] {
        ev("a1");
        coroutine_enter(inner);
        ev("a2");
        Coroutine *n1 = coroutine_create_fn([] { ev("n1"); });
        Coroutine *n2 = coroutine_create_fn([] { ev("n2"); });
        Coroutine *nested[] = {n1, n2};
        coroutine_enter_batch(nested, 2);
        ev("a3");
        coroutine_yield();
        ev("a4");
    });
    Coroutine *b = coroutine_create_fn([] { ev("b"); });
    Coroutine *cos[] = {a, b};
    coroutine_enter_batch(cos, 2);
    ck_assert_events("a1 i1 a2 n1 n2 a3 b");
    coroutine_enter(inner);
    coroutine_enter(a);
    ck_assert_events("a1 i1 a2 n1 n2 a3 b i2 a4");
}
END_TEST

// coroutine_chain_last() is true only in the last member with nothing queued.
START_TEST(test_batch_chain_last)
{
    std::vector<int> seen;
    Coroutine *a = coroutine_create_fn([&seen] { seen.push_back(coroutine_chain_last()); });
    Coroutine *b = coroutine_create_fn([&seen] { seen.push_back(coroutine_chain_last()); });
    Coroutine *cos[] = {a, b};
    coroutine_enter_batch(cos, 2);
    Coroutine *c = coroutine_create_fn([&seen] { seen.push_back(coroutine_chain_last()); });
    coroutine_enter(c);
    ck_assert(!coroutine_chain_last());
    ck_assert_uint_eq(seen.size(), 3);
    ck_assert_int_eq(seen[0], 0);
    ck_assert_int_eq(seen[1], 1);
    ck_assert_int_eq(seen[2], 0);   // not in a chain
}
END_TEST

START_TEST(test_batch_running_member_aborts)
{
    Coroutine *a = coroutine_create_fn([] {
        Coroutine *self = coroutine_self();
        Coroutine *cos[] = {self};
        coroutine_enter_batch(cos, 1);   // entering itself: running
    });
    coroutine_enter(a);
}
END_TEST

static Suite *coroutine_suite()
{
    Suite *s = suite_create("coroutine");

    TCase *tc = tcase_create("basic");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_enter_yield_order);
    tcase_add_test(tc, test_self_identity);
    tcase_add_test(tc, test_nesting);
    tcase_add_test(tc, test_nesting_deep);
    tcase_add_test(tc, test_stats_switches);
    suite_add_tcase(s, tc);

    tc = tcase_create("scale");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_many_live);
    tcase_add_test(tc, test_pool_reuse);
    suite_add_tcase(s, tc);

    tc = tcase_create("stack");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_stack_size);
    tcase_add_test(tc, test_stack_deep_use_ok);
    tcase_add_test_raise_signal(tc, test_stack_overflow_segv, SIGSEGV);
    suite_add_tcase(s, tc);

    tc = tcase_create("misuse");
    tcase_set_timeout(tc, 30);
    tcase_add_test_raise_signal(tc, test_enter_self_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_enter_caller_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_enter_finished_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_yield_outside_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, test_wake_twice_aborts, SIGABRT);
    suite_add_tcase(s, tc);

    tc = tcase_create("wake");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_wake_deferred_until_yield);
    tcase_add_test(tc, test_wake_on_terminate_fifo);
    tcase_add_test(tc, test_wake_from_outside_immediate);
    tcase_add_test(tc, test_wake_nested);
    suite_add_tcase(s, tc);

    tc = tcase_create("chain");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_batch_order_and_switches);
    tcase_add_test(tc, test_batch_wakeups_run_next);
    tcase_add_test(tc, test_batch_nested_enter);
    tcase_add_test(tc, test_batch_chain_last);
    tcase_add_test_raise_signal(tc, test_batch_running_member_aborts, SIGABRT);
    suite_add_tcase(s, tc);

    tc = tcase_create("create");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_create_fn_captures);
    tcase_add_test(tc, test_create_with_opaque);
    tcase_add_test(tc, test_run_in_coroutine_value);
    tcase_add_test(tc, test_run_in_coroutine_void);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(coroutine_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
