// Coroutine switching and pooling. See coroutine.h for the contract.
//
// How a switch works: every coroutine (and each thread's own stack, the
// "leader") has a sigjmp_buf. To switch from A to B we sigsetjmp(A) and
// siglongjmp(B); neither saves the signal mask, so no system call is made.
// A new stack is entered once with makecontext/swapcontext, at creation; the
// trampoline immediately records its sigjmp_buf and jumps back, and from then
// on only sigsetjmp/siglongjmp are used. The trampoline loops, so a pooled
// coroutine runs its next entry function on the same stack without another
// makecontext.

// glibc's fortified longjmp refuses to jump to another stack.
#undef _FORTIFY_SOURCE

#include "util/coroutine.h"

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#ifdef BG_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

// On x86-64 a switch is a few lines of assembly: push the callee-saved
// registers, swap stack pointers, pop, return. Elsewhere sigsetjmp/siglongjmp
// without a signal mask do the same job a little slower.
#if defined(__x86_64__) && !defined(BG_NO_ASM_SWITCH)
#define BG_ASM_SWITCH 1
extern "C" {
// Saves the callee-saved registers on the current stack, stores the stack
// pointer in *save_sp, switches to new_sp and restores what it saved there.
void bg_co_switch(void **save_sp, void *new_sp);
// Saves like bg_co_switch, then calls fn(arg) on the same stack; fn must not
// return. A later bg_co_switch to *save_sp returns from this call.
void bg_co_save_and_call(void **save_sp, void (*fn)(void *), void *arg);
}
asm(R"(
    .text
    .globl bg_co_switch
    .type bg_co_switch, @function
bg_co_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size bg_co_switch, .-bg_co_switch

    .globl bg_co_save_and_call
    .type bg_co_save_and_call, @function
bg_co_save_and_call:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rdx, %rdi
    subq $8, %rsp
    call *%rsi
    ud2
    .cfi_endproc
    .size bg_co_save_and_call, .-bg_co_save_and_call
)");
#else
#define BG_ASM_SWITCH 0
#endif

namespace bg {

enum class CoState : uint8_t { kFresh, kRunning, kYielded, kTerminated, kPooled };

struct Coroutine {
    CoroutineEntry entry = nullptr;
    void *opaque = nullptr;
    Coroutine *caller = nullptr;     // who entered us; nullptr when not running
    AioContext *ctx = nullptr;
#if BG_ASM_SWITCH
    void *sp = nullptr;              // saved stack pointer while switched out
#else
    sigjmp_buf env;
#endif
    void *stack = nullptr;           // lowest mapped byte (the guard page)
    size_t stack_size = 0;           // usable bytes above the guard page
    CoState state = CoState::kFresh;
    Coroutine *wake_head = nullptr;  // coroutines woken while we ran (FIFO)
    Coroutine *wake_tail = nullptr;
    Coroutine *wake_next = nullptr;  // link in another coroutine's wake list
    bool wake_pending = false;       // already queued in some wake list
    Coroutine *pool_next = nullptr;
#ifdef BG_ASAN
    void *fake_stack = nullptr;
#endif
};

namespace {

constexpr size_t kDefaultStackSize = 1 << 20;
constexpr size_t kPoolMax = 1024;   // coroutines kept per thread

struct ThreadState {
    Coroutine leader;                // this thread's own stack
    Coroutine *current = nullptr;    // == &leader outside coroutines
    Coroutine *pool = nullptr;
    size_t pool_size = 0;
    CoroutineStats stats;
    // coroutine_enter_batch(): while a chain runs, the coroutines still to
    // enter (linked through wake_next, wake_pending set) and the one that
    // started the chain. A chain member that yields or terminates with
    // chain_origin as its caller switches straight to the next one.
    bool chain_active = false;
    Coroutine *chain_origin = nullptr;
    Coroutine *chain_head = nullptr;
    Coroutine *chain_tail = nullptr;
    // A terminated coroutine that switched away from its own stack and must
    // be recycled by whoever runs next (never by itself: it is on that stack).
    Coroutine *to_release = nullptr;
    // Where a new stack returns to after its first switch.
    ucontext_t creator_uc;
#if !BG_ASM_SWITCH
    sigjmp_buf creator_env;
#endif

    ~ThreadState()
    {
        while (pool) {
            Coroutine *co = pool;
            pool = co->pool_next;
            munmap(co->stack, co->stack_size + getpagesize());
            delete co;
        }
    }
};

// The pointer is constant-initialised, so reading it costs no TLS guard; the
// state itself is created on first use and destroyed with the thread.
constinit thread_local ThreadState *t_ts = nullptr;

__attribute__((noinline)) ThreadState &ts_init()
{
    static thread_local ThreadState state;
    state.current = &state.leader;
    t_ts = &state;
    return state;
}

inline ThreadState &ts()
{
    ThreadState *s = t_ts;
    if (__builtin_expect(s != nullptr, 1)) return *s;
    return ts_init();
}

[[noreturn]] void die(const char *msg)
{
    fprintf(stderr, "blockgraph: fatal: %s\n", msg);
    abort();
}

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

#ifdef BG_ASAN
void asan_start(Coroutine *from, Coroutine *to, bool from_terminating)
{
    __sanitizer_start_switch_fiber(from_terminating ? nullptr : &from->fake_stack,
                                   to->stack ? static_cast<char *>(to->stack) + page_size() : nullptr,
                                   to->stack_size);
}
void asan_finish(Coroutine *self)
{
    const void *bottom_old = nullptr;
    size_t size_old = 0;
    __sanitizer_finish_switch_fiber(self->fake_stack, &bottom_old, &size_old);
    ThreadState &s = ts();
    if (!s.leader.stack && !s.leader.stack_size) {
        // Remember the thread's own stack so we can announce switches to it.
        s.leader.stack_size = size_old;
        s.leader.stack = const_cast<char *>(static_cast<const char *>(bottom_old)) - page_size();
    }
}
#else
inline void asan_start(Coroutine *, Coroutine *, bool) {}
inline void asan_finish(Coroutine *) {}
#endif

void release(Coroutine *co);

// Back on our own stack after a switch: recycle a chain member that
// terminated and handed over to the coroutine that switched to us.
inline void release_pending()
{
    ThreadState &s = ts();
    if (Coroutine *r = s.to_release) {
        s.to_release = nullptr;
        release(r);
    }
}

// The one place a switch happens. noinline: the compiler must not cache
// thread_local addresses across it (a coroutine never changes thread here,
// but keep the switch opaque all the same).
__attribute__((noinline)) void switch_to(Coroutine *from, Coroutine *to, bool from_terminating)
{
    ThreadState &s = ts();
    s.stats.switches++;
    s.current = to;
    asan_start(from, to, from_terminating);
#if BG_ASM_SWITCH
    bg_co_switch(&from->sp, to->sp);
#else
    if (sigsetjmp(from->env, 0) == 0) siglongjmp(to->env, 1);
#endif
    asan_finish(from);
    release_pending();
}

// In a chain (coroutine_enter_batch), the coroutine to run after self gives
// up the CPU with caller as its caller, or nullptr to return to caller. Wake-ups
// self queued run first (as coroutine_enter would run them), then the rest of
// the chain.
Coroutine *chain_next(ThreadState &s, Coroutine *self, Coroutine *caller)
{
    if (!s.chain_active || caller != s.chain_origin) return nullptr;
    if (self->wake_head) {
        self->wake_tail->wake_next = s.chain_head;
        if (!s.chain_head) s.chain_tail = self->wake_tail;
        s.chain_head = self->wake_head;
        self->wake_head = self->wake_tail = nullptr;
    }
    Coroutine *next = s.chain_head;
    if (!next) return nullptr;
    s.chain_head = next->wake_next;
    if (!s.chain_head) s.chain_tail = nullptr;
    next->wake_next = nullptr;
    next->wake_pending = false;
    next->caller = caller;
    next->state = CoState::kRunning;
    return next;
}

#if BG_ASM_SWITCH
void back_to_creator(void *opaque)
{
    // Returns from the creator's swapcontext (one system call per new stack).
    setcontext(&static_cast<ThreadState *>(opaque)->creator_uc);
    abort();
}
#endif

void trampoline(int hi, int lo)
{
    auto *co = reinterpret_cast<Coroutine *>((static_cast<uintptr_t>(static_cast<unsigned>(hi)) << 32) |
                                             static_cast<unsigned>(lo));
    // First arrival: record where to resume and go back to the creator.
#ifdef BG_ASAN
    // Complete the creator's switch to this stack before starting the one back.
    const void *creator_bottom = nullptr;
    size_t creator_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &creator_bottom, &creator_size);
    __sanitizer_start_switch_fiber(&co->fake_stack, creator_bottom, creator_size);
#endif
#if BG_ASM_SWITCH
    bg_co_save_and_call(&co->sp, back_to_creator, &ts());
#else
    if (sigsetjmp(co->env, 0) == 0) siglongjmp(ts().creator_env, 1);
#endif
    asan_finish(co);
    // A new coroutine may be the next of a chain whose previous member
    // terminated.
    release_pending();
    for (;;) {
        co->entry(co->opaque);
        co->state = CoState::kTerminated;
        Coroutine *caller = co->caller;
        ThreadState &s = ts();
        Coroutine *next = chain_next(s, co, caller);
        // In a chain nobody returns into coroutine_enter() for us: whoever
        // runs next recycles this coroutine.
        if (s.chain_active && caller == s.chain_origin) s.to_release = co;
        // Once a finished coroutine is re-entered from the pool we come back here.
        switch_to(co, next ? next : caller, false);
    }
}

// Starts co's stack with makecontext and runs it until its trampoline has
// recorded its resume point. Kept apart (noinline) so that no caller's local
// lives across getcontext/swapcontext, which return twice.
__attribute__((noinline)) void first_switch(Coroutine *co)
{
    ucontext_t uc;
    if (getcontext(&uc) != 0) die("getcontext failed");
    uc.uc_link = nullptr;
    uc.uc_stack.ss_sp = static_cast<char *>(co->stack) + page_size();
    uc.uc_stack.ss_size = co->stack_size;
    uc.uc_stack.ss_flags = 0;
    auto p = reinterpret_cast<uintptr_t>(co);
    makecontext(&uc, reinterpret_cast<void (*)()>(trampoline), 2, static_cast<int>(p >> 32),
                static_cast<int>(p & 0xffffffffu));
#ifdef BG_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, uc.uc_stack.ss_sp, co->stack_size);
#endif
#if BG_ASM_SWITCH
    swapcontext(&ts().creator_uc, &uc);
#else
    if (sigsetjmp(ts().creator_env, 0) == 0) swapcontext(&ts().creator_uc, &uc);
#endif
#ifdef BG_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

Coroutine *new_coroutine()
{
    auto *co = new Coroutine;
    size_t ps = page_size();
    size_t size = (kDefaultStackSize + ps - 1) & ~(ps - 1);
    void *mem = mmap(nullptr, size + ps, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) die("cannot map a coroutine stack (out of memory or map count)");
    if (mprotect(mem, ps, PROT_NONE) != 0) die("cannot protect a coroutine stack guard page");
    co->stack = mem;
    co->stack_size = size;
    ts().stats.stacks_mapped++;
    first_switch(co);
    return co;
}

void run_wakeups(Coroutine *co)
{
    while (Coroutine *w = co->wake_head) {
        co->wake_head = w->wake_next;
        if (!co->wake_head) co->wake_tail = nullptr;
        w->wake_next = nullptr;
        w->wake_pending = false;
        coroutine_enter(w);
    }
}

void release(Coroutine *co)
{
    ThreadState &s = ts();
    co->state = CoState::kPooled;
    co->ctx = nullptr;
    if (s.pool_size < kPoolMax) {
        co->pool_next = s.pool;
        s.pool = co;
        s.pool_size++;
        return;
    }
    munmap(co->stack, co->stack_size + page_size());
    delete co;
}

} // namespace

Coroutine *coroutine_create(CoroutineEntry entry, void *opaque)
{
    ThreadState &s = ts();
    Coroutine *co = s.pool;
    if (co) {
        s.pool = co->pool_next;
        s.pool_size--;
        co->pool_next = nullptr;
    } else {
        co = new_coroutine();
    }
    co->entry = entry;
    co->opaque = opaque;
    co->caller = nullptr;
    co->state = CoState::kFresh;
    s.stats.created++;
    return co;
}

void coroutine_enter(Coroutine *co)
{
    ThreadState &s = ts();
    switch (co->state) {
    case CoState::kRunning:
        die("coroutine_enter: coroutine is already running");
    case CoState::kTerminated:
    case CoState::kPooled:
        die("coroutine_enter: coroutine has already terminated");
    case CoState::kFresh:
    case CoState::kYielded:
        break;
    }
    if (co->wake_pending) die("coroutine_enter: coroutine is queued for a wake-up already");
    Coroutine *self = s.current;
    co->caller = self;
    co->state = CoState::kRunning;
    switch_to(self, co, false);
    // Back: co yielded or terminated. Run what it woke, then recycle it.
    run_wakeups(co);
    if (co->state == CoState::kTerminated) release(co);
}

void coroutine_yield()
{
    ThreadState &s = ts();
    Coroutine *self = s.current;
    if (self == &s.leader) die("coroutine_yield: called outside a coroutine");
    Coroutine *caller = self->caller;
    self->caller = nullptr;
    self->state = CoState::kYielded;
    Coroutine *next = chain_next(s, self, caller);
    switch_to(self, next ? next : caller, false);
}

bool coroutine_chain_last()
{
    ThreadState &s = ts();
    Coroutine *self = s.current;
    return s.chain_active && self != &s.leader && self->caller == s.chain_origin && !s.chain_head &&
           !self->wake_head;
}

void coroutine_enter_batch(Coroutine *const *cos, size_t n)
{
    ThreadState &s = ts();
    if (n == 0) return;
    if (s.chain_active) {
        for (size_t i = 0; i < n; i++) coroutine_enter(cos[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        Coroutine *co = cos[i];
        if (co->state != CoState::kFresh && co->state != CoState::kYielded)
            die("coroutine_enter_batch: coroutine is running or has terminated");
        if (co->wake_pending) die("coroutine_enter_batch: coroutine is queued for a wake-up already");
    }
    // cos[1..n) wait in the chain; cos[0] runs first.
    for (size_t i = 1; i < n; i++) {
        Coroutine *co = cos[i];
        co->wake_pending = true;
        co->wake_next = nullptr;
        if (s.chain_tail) s.chain_tail->wake_next = co;
        else s.chain_head = co;
        s.chain_tail = co;
    }
    Coroutine *self = s.current;
    s.chain_active = true;
    s.chain_origin = self;
    Coroutine *first = cos[0];
    first->caller = self;
    first->state = CoState::kRunning;
    switch_to(self, first, false);
    // The last coroutine of the chain came back (switch_to recycled it if
    // it terminated); the chain is empty.
    s.chain_active = false;
    s.chain_origin = nullptr;
}

void coroutine_wake(Coroutine *co)
{
    ThreadState &s = ts();
    if (s.current == &s.leader) {
        coroutine_enter(co);
        return;
    }
    if (co->state != CoState::kYielded && co->state != CoState::kFresh)
        die("coroutine_wake: coroutine is not waiting");
    if (co->wake_pending) die("coroutine_wake: coroutine woken twice");
    Coroutine *cur = s.current;
    co->wake_pending = true;
    co->wake_next = nullptr;
    if (cur->wake_tail) cur->wake_tail->wake_next = co;
    else cur->wake_head = co;
    cur->wake_tail = co;
}

Coroutine *coroutine_self()
{
    ThreadState &s = ts();
    return s.current == &s.leader ? nullptr : s.current;
}

bool in_coroutine() { return coroutine_self() != nullptr; }

bool coroutine_is_terminated(const Coroutine *co)
{
    return co->state == CoState::kTerminated || co->state == CoState::kPooled;
}

AioContext *coroutine_context(const Coroutine *co) { return co->ctx; }
void coroutine_set_context(Coroutine *co, AioContext *ctx) { co->ctx = ctx; }

CoroutineStats coroutine_stats()
{
    ThreadState &s = ts();
    CoroutineStats st = s.stats;
    st.pool_size = s.pool_size;
    return st;
}

size_t coroutine_stack_size() { return (kDefaultStackSize + page_size() - 1) & ~(page_size() - 1); }

} // namespace bg
