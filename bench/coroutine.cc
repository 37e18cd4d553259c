// Coroutine switch micro-benchmark (make bench-coroutine; never part of check).
//
// Measures, in one run, the cost of an enter+yield round trip of our
// coroutines against a swapcontext round trip (the same two switches done
// with ucontext, which saves and restores the signal mask with a system call
// each time). Prints one line per measurement round, then the summary line
//   coroutine_switch_ns=<X> swapcontext_switch_ns=<Y> ratio=<Y/X>
// using the best (lowest) round of each, which is the least disturbed by
// other load on the machine.
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "util/aio.h"
#include "util/coroutine.h"

using namespace bg;

namespace {

constexpr long kIters = 2000000;
constexpr int kRounds = 5;

volatile long g_sink;

void co_body(void *opaque)
{
    long *n = static_cast<long *>(opaque);
    for (;;) {
        (*n)++;
        coroutine_yield();
    }
}

double bench_coroutine()
{
    long n = 0;
    Coroutine *co = coroutine_create(co_body, &n);
    coroutine_enter(co);  // warm up: first entry
    int64_t t0 = clock_ns();
    for (long i = 0; i < kIters; i++) coroutine_enter(co);
    int64_t t1 = clock_ns();
    g_sink = n;
    // The coroutine never finishes; it is leaked on purpose (one stack).
    return static_cast<double>(t1 - t0) / kIters;
}

ucontext_t g_main_uc, g_co_uc;
long g_uc_count;

void uc_body()
{
    for (;;) {
        g_uc_count++;
        swapcontext(&g_co_uc, &g_main_uc);
    }
}

double bench_swapcontext()
{
    static std::vector<char> stack(1 << 20);
    getcontext(&g_co_uc);
    g_co_uc.uc_stack.ss_sp = stack.data();
    g_co_uc.uc_stack.ss_size = stack.size();
    g_co_uc.uc_link = nullptr;
    makecontext(&g_co_uc, uc_body, 0);
    swapcontext(&g_main_uc, &g_co_uc);  // warm up
    int64_t t0 = clock_ns();
    for (long i = 0; i < kIters; i++) swapcontext(&g_main_uc, &g_co_uc);
    int64_t t1 = clock_ns();
    g_sink = g_uc_count;
    return static_cast<double>(t1 - t0) / kIters;
}

} // namespace

int main()
{
    std::vector<double> ours, theirs;
    for (int r = 0; r < kRounds; r++) {
        ours.push_back(bench_coroutine());
        theirs.push_back(bench_swapcontext());
        printf("round %d: coroutine enter+yield %.1f ns, swapcontext round trip %.1f ns\n", r + 1, ours.back(),
               theirs.back());
    }
    double x = *std::min_element(ours.begin(), ours.end());
    double y = *std::min_element(theirs.begin(), theirs.end());
    printf("coroutine_switch_ns=%.1f swapcontext_switch_ns=%.1f ratio=%.1f\n", x, y, y / x);
    return 0;
}
