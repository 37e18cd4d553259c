// Stackful coroutines.
//
// Threading model: a coroutine belongs to the thread that created it. It runs
// on its own mmap'd stack (with a PROT_NONE guard page below it) and switches
// without system calls (sigsetjmp/siglongjmp with no signal mask). Finished
// coroutines go back to a per-thread pool, stack and all, and are reused by the
// next coroutine_create().
//
// Rules: functions that may yield carry the coroutine_fn
// marker and a co_ prefix; yielding primitives assert in_coroutine(). Never run
// an event loop from inside a coroutine; synchronous callers use
// run_in_coroutine() (util/aio.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

// Marks a function that may only be called in coroutine context (it may yield).
#define coroutine_fn

namespace bg {

class AioContext;
struct Coroutine;

using CoroutineEntry = void (*)(void *opaque);

// Creates a coroutine that will run entry(opaque) when first entered. Never
// fails (aborts if no stack can be mapped). Does not start it.
Coroutine *coroutine_create(CoroutineEntry entry, void *opaque);

// Convenience: a coroutine running a callable. The callable is moved into a
// heap block owned by the coroutine and destroyed when it returns.
template <typename F>
Coroutine *coroutine_create_fn(F &&fn);

// Switches to co until it yields or terminates, then returns. The caller may
// itself be a coroutine (nesting). co must be fresh or yielded: entering a
// running or finished coroutine aborts with a message. A terminated coroutine
// is returned to the pool before this returns; do not touch it afterwards.
void coroutine_enter(Coroutine *co);

// Enters cos[0..n) in order, as coroutine_enter() on each one would, but as
// one chain: when a coroutine of the chain yields or terminates it switches
// straight to the next one instead of back to the caller (one switch per
// hand-over instead of two); the last one returns here. Wake-ups a member
// queues run right after it, before the rest. Each must be fresh or yielded
// and not queued for a wake-up. Inside a running chain it enters them one
// at a time instead. Returns when every one has yielded or terminated.
void coroutine_enter_batch(Coroutine *const *cos, size_t n);

// True in the last coroutine of a running chain (coroutine_enter_batch)
// when nothing else waits in it: once it yields, its caller (the event loop)
// runs next. I/O backends use it to submit at once instead of at the end of
// the loop round, which comes next anyway.
bool coroutine_chain_last();

// Returns to whoever entered the current coroutine. REQUIRES in_coroutine().
void coroutine_fn coroutine_yield();

// Wakes a yielded coroutine of this thread. Outside a coroutine it is entered
// at once; inside one it is entered right after the current coroutine next
// yields or terminates (so a waker never nests into the woken). For a
// coroutine of another thread use aio_co_wake() (util/aio.h).
void coroutine_wake(Coroutine *co);

// The running coroutine, or nullptr on a thread's own stack.
Coroutine *coroutine_self();
bool in_coroutine();

// True once the coroutine has returned from its entry function.
bool coroutine_is_terminated(const Coroutine *co);

// The AioContext the coroutine was last entered from (nullptr if none).
AioContext *coroutine_context(const Coroutine *co);
void coroutine_set_context(Coroutine *co, AioContext *ctx);

// Per-thread counters, for benchmarks and export statistics.
struct CoroutineStats {
    uint64_t switches = 0;       // context switches in either direction
    uint64_t created = 0;        // coroutine_create() calls
    uint64_t stacks_mapped = 0;  // new stacks mapped (pool misses)
    uint64_t pool_size = 0;      // coroutines waiting in this thread's pool
};
CoroutineStats coroutine_stats();

// Stack size for new coroutines, in bytes (default 1 MiB, rounded up to pages).
size_t coroutine_stack_size();

// ---- implementation of the template helper ----
namespace detail {
template <typename F>
struct CoroutineFnBox {
    F fn;
    static void run(void *opaque)
    {
        auto *box = static_cast<CoroutineFnBox *>(opaque);
        box->fn();
        delete box;
    }
};
} // namespace detail

template <typename F>
Coroutine *coroutine_create_fn(F &&fn)
{
    using Box = detail::CoroutineFnBox<std::decay_t<F>>;
    auto *box = new Box{std::forward<F>(fn)};
    return coroutine_create(&Box::run, box);
}

} // namespace bg
