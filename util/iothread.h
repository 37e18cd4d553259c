// An I/O thread: a thread running its own GMainContext with an AioContext,
// for exports that serve requests outside the main loop (--object iothread).
#pragma once

#include <glib.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "util/aio.h"
#include "util/error.h"

namespace bg {

class IoThread {
  public:
    // Starts the thread; returns once its AioContext exists.
    static Result<std::unique_ptr<IoThread>> create(const std::string &id);
    ~IoThread();   // stop() + join
    const std::string &id() const { return id_; }
    AioContext *ctx() const { return ctx_; }
    // Asks the loop to quit; the thread exits after its current iteration.
    void stop();
    // Runs fn in the thread and waits for it (from any other thread).
    void run_sync(void (*fn)(void *), void *opaque);

  private:
    IoThread() = default;
    void run();
    std::string id_;
    std::thread thread_;
    GMainContext *gctx_ = nullptr;
    AioContext *ctx_ = nullptr;
    std::atomic<bool> stopping_{false};
};

} // namespace bg
