// Coroutine synchronisation: CoQueue (a wait queue) and CoMutex (a fair,
// FIFO mutex that a coroutine may hold across yields).
//
// Threading model: both may be shared by coroutines of different threads;
// a small internal spinlock-free std::mutex guards the waiter list, and
// wake-ups of another thread's coroutine go through aio_co_wake(). Neither
// may be used outside a coroutine (except CoQueue::restart_all and
// CoMutex::unlock, which only wake).
#pragma once

#include <mutex>

#include "util/coroutine.h"

namespace bg {

class CoMutex;

class CoQueue {
  public:
    CoQueue() = default;
    CoQueue(const CoQueue &) = delete;
    CoQueue &operator=(const CoQueue &) = delete;

    // Waits until woken by restart_next()/restart_all(). If mutex is given it
    // is unlocked while waiting and locked again before returning. Yields.
    void coroutine_fn wait(CoMutex *mutex = nullptr);
    // Wakes the longest waiter. Returns false if nobody was waiting.
    bool restart_next();
    // Wakes every waiter, in order. Returns how many were woken.
    int restart_all();
    bool empty();

  private:
    struct Waiter;
    std::mutex lock_;
    Waiter *head_ = nullptr, *tail_ = nullptr;
};

class CoMutex {
  public:
    CoMutex() = default;
    CoMutex(const CoMutex &) = delete;
    CoMutex &operator=(const CoMutex &) = delete;

    // Takes the mutex, waiting in FIFO order if it is held. Ownership is
    // handed directly to the next waiter on unlock, so no waiter can be
    // overtaken or miss its wake-up. Yields. Not recursive.
    void coroutine_fn lock();
    // Takes the mutex only if free; never yields.
    bool try_lock();
    // Releases the mutex, handing it to the first waiter if any.
    // REQUIRES: held by the calling coroutine.
    void unlock();
    bool locked();
    Coroutine *holder();

  private:
    struct Waiter;
    std::mutex lock_;
    bool locked_ = false;
    Coroutine *holder_ = nullptr;
    Waiter *head_ = nullptr, *tail_ = nullptr;
};

// RAII holder for a CoMutex inside a coroutine.
class CoMutexGuard {
  public:
    explicit CoMutexGuard(CoMutex &m) : m_(m) { m_.lock(); }
    ~CoMutexGuard() { m_.unlock(); }
    CoMutexGuard(const CoMutexGuard &) = delete;
    CoMutexGuard &operator=(const CoMutexGuard &) = delete;

  private:
    CoMutex &m_;
};

} // namespace bg
