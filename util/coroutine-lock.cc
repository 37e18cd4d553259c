#include "util/coroutine-lock.h"

#include <cstdio>
#include <cstdlib>

#include "util/aio.h"

namespace bg {

namespace {
[[noreturn]] void die(const char *msg)
{
    fprintf(stderr, "blockgraph: fatal: %s\n", msg);
    abort();
}

Coroutine *self_or_die(const char *what)
{
    Coroutine *co = coroutine_self();
    if (!co) die(what);
    return co;
}
} // namespace

// Waiters live on the waiting coroutine's stack.
struct CoQueue::Waiter {
    Coroutine *co;
    Waiter *next;
    bool woken;
};

void CoQueue::wait(CoMutex *mutex)
{
    Waiter w{self_or_die("CoQueue::wait outside a coroutine"), nullptr, false};
    if (!coroutine_context(w.co)) coroutine_set_context(w.co, AioContext::current());
    {
        std::lock_guard<std::mutex> g(lock_);
        if (tail_) tail_->next = &w;
        else head_ = &w;
        tail_ = &w;
    }
    if (mutex) mutex->unlock();
    // Exactly one wake-up comes, and it enters us only after this yield: from
    // our own thread it is deferred until the waker yields, from another
    // thread it is delivered through our own loop.
    coroutine_yield();
    if (!__atomic_load_n(&w.woken, __ATOMIC_ACQUIRE)) die("CoQueue::wait: entered without a wake-up");
    if (mutex) mutex->lock();
}

bool CoQueue::restart_next()
{
    Waiter *w;
    {
        std::lock_guard<std::mutex> g(lock_);
        w = head_;
        if (!w) return false;
        head_ = w->next;
        if (!head_) tail_ = nullptr;
    }
    Coroutine *co = w->co;
    __atomic_store_n(&w->woken, true, __ATOMIC_RELEASE);
    aio_co_wake(co);
    return true;
}

int CoQueue::restart_all()
{
    // Only those waiting now: a woken coroutine that waits again (it may run
    // at once, from outside a coroutine) must not be woken by this call.
    Waiter *list;
    {
        std::lock_guard<std::mutex> g(lock_);
        list = head_;
        head_ = tail_ = nullptr;
    }
    int n = 0;
    while (Waiter *w = list) {
        list = w->next;   // w lives on the waiter's stack: read it before the wake
        Coroutine *co = w->co;
        __atomic_store_n(&w->woken, true, __ATOMIC_RELEASE);
        aio_co_wake(co);
        n++;
    }
    return n;
}

bool CoQueue::empty()
{
    std::lock_guard<std::mutex> g(lock_);
    return head_ == nullptr;
}

struct CoMutex::Waiter {
    Coroutine *co;
    Waiter *next;
    bool granted;
};

void CoMutex::lock()
{
    Coroutine *self = self_or_die("CoMutex::lock outside a coroutine");
    Waiter w{self, nullptr, false};
    {
        std::lock_guard<std::mutex> g(lock_);
        if (!locked_) {
            locked_ = true;
            holder_ = self;
            return;
        }
        if (holder_ == self) die("CoMutex::lock: mutex already held by this coroutine");
        if (!coroutine_context(self)) coroutine_set_context(self, AioContext::current());
        if (tail_) tail_->next = &w;
        else head_ = &w;
        tail_ = &w;
    }
    coroutine_yield();   // see CoQueue::wait for why one yield suffices
    if (!__atomic_load_n(&w.granted, __ATOMIC_ACQUIRE)) die("CoMutex::lock: entered without the mutex");
}

bool CoMutex::try_lock()
{
    std::lock_guard<std::mutex> g(lock_);
    if (locked_) return false;
    locked_ = true;
    holder_ = coroutine_self();
    return true;
}

void CoMutex::unlock()
{
    Waiter *w;
    {
        std::lock_guard<std::mutex> g(lock_);
        if (!locked_) die("CoMutex::unlock: mutex is not locked");
        w = head_;
        if (!w) {
            locked_ = false;
            holder_ = nullptr;
            return;
        }
        head_ = w->next;
        if (!head_) tail_ = nullptr;
        holder_ = w->co;   // hand-off: the mutex stays locked
    }
    Coroutine *co = w->co;
    __atomic_store_n(&w->granted, true, __ATOMIC_RELEASE);
    aio_co_wake(co);
}

bool CoMutex::locked()
{
    std::lock_guard<std::mutex> g(lock_);
    return locked_;
}

Coroutine *CoMutex::holder()
{
    std::lock_guard<std::mutex> g(lock_);
    return holder_;
}

} // namespace bg
