// Thread-pool backend: the same interface as io_uring, for kernels or
// sandboxes without it and for aio=threads. Workers run the blocking system
// calls; completions come back through an eventfd noticed by the loop.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "util/aio.h"
#include "util/io-internal.h"
#include "util/io.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr unsigned kDefaultMaxThreads = 16;

class ThreadPoolBackend final : public IoBackendOf<ThreadPoolBackend> {
  public:
    ThreadPoolBackend(AioContext *ctx, unsigned max_threads);
    ~ThreadPoolBackend() override;

    const char *name() const override { return "threads"; }
    IoBackendStats stats() const override
    {
        IoBackendStats s = stats_;
        s.inline_requests = inline_requests_;
        return s;
    }
    bool idle() const override { return outstanding_ == 0; }

  private:
    friend class IoBackendOf<ThreadPoolBackend>;
    // Submits req, yields until it is complete, returns req->result.
    int64_t coroutine_fn co_run(IoRequest *req) noexcept;
    void worker();
    void on_event();
    static void on_event_cb(void *opaque) { static_cast<ThreadPoolBackend *>(opaque)->on_event(); }

    AioContext *ctx_;
    unsigned max_threads_;
    int efd_;
    std::mutex lock_;
    std::condition_variable cond_;
    std::vector<std::thread> threads_;
    unsigned idle_ = 0;
    bool stopping_ = false;
    IoRequest *job_head_ = nullptr, *job_tail_ = nullptr;  // guarded by lock_
    IoRequest *done_head_ = nullptr;                       // guarded by lock_ (LIFO, reversed on reap)
    IoBackendStats stats_;
    unsigned outstanding_ = 0;      // submitted, not yet reaped (loop thread only)
};

ThreadPoolBackend::ThreadPoolBackend(AioContext *ctx, unsigned max_threads)
    : ctx_(ctx), max_threads_(max_threads ? max_threads : kDefaultMaxThreads)
{
    efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0) {
        log_error("eventfd: %s", strerror(errno));
        abort();
    }
    ctx_->set_fd_handler(efd_, &ThreadPoolBackend::on_event_cb, nullptr, this);
}

ThreadPoolBackend::~ThreadPoolBackend()
{
    {
        std::lock_guard<std::mutex> g(lock_);
        stopping_ = true;
    }
    cond_.notify_all();
    for (auto &t : threads_) t.join();
    ctx_->set_fd_handler(efd_, nullptr, nullptr, nullptr);
    close(efd_);
}

void ThreadPoolBackend::worker()
{
    std::unique_lock<std::mutex> g(lock_);
    for (;;) {
        while (!job_head_ && !stopping_) {
            idle_++;
            cond_.wait(g);
            idle_--;
        }
        if (stopping_ && !job_head_) return;
        IoRequest *req = job_head_;
        job_head_ = req->next;
        if (!job_head_) job_tail_ = nullptr;
        g.unlock();
        io_request_execute(req);
        g.lock();
        req->next = done_head_;
        done_head_ = req;
        uint64_t one = 1;
        ssize_t w = write(efd_, &one, sizeof(one));
        (void)w;
    }
}

void ThreadPoolBackend::on_event()
{
    uint64_t cnt;
    ssize_t rd = read(efd_, &cnt, sizeof(cnt));
    (void)rd;
    IoRequest *list;
    {
        std::lock_guard<std::mutex> g(lock_);
        list = done_head_;
        done_head_ = nullptr;
    }
    // Reverse to completion order.
    IoRequest *ordered = nullptr;
    while (list) {
        IoRequest *n = list->next;
        list->next = ordered;
        ordered = list;
        list = n;
    }
    while (ordered) {
        IoRequest *req = ordered;
        ordered = req->next;
        req->completed = true;
        stats_.requests++;
        outstanding_--;
        coroutine_wake(req->co);
    }
}

int64_t ThreadPoolBackend::co_run(IoRequest *req) noexcept
{
    req->co = coroutine_self();
    if (!req->co) {
        log_error("thread pool: I/O issued outside a coroutine");
        abort();
    }
    outstanding_++;
    {
        std::lock_guard<std::mutex> g(lock_);
        req->next = nullptr;
        if (job_tail_) job_tail_->next = req;
        else job_head_ = req;
        job_tail_ = req;
        stats_.submissions++;
        if (idle_ == 0 && threads_.size() < max_threads_) threads_.emplace_back(&ThreadPoolBackend::worker, this);
    }
    cond_.notify_one();
    while (!req->completed) coroutine_yield();
    return req->result;
}

} // namespace

std::unique_ptr<IoBackend> IoBackend::new_threads(AioContext *ctx, unsigned max_threads)
{
    return std::make_unique<ThreadPoolBackend>(ctx, max_threads);
}

} // namespace bg
