// Regression test: lost wake-up in BlockBackend::wait_while_quiesced()
// (block/backend.cc). The check "quiesce_counter_ > 0" and the enqueue in
// queued_.wait() are not atomic with respect to drained_end(), which
// decrements the counter and calls queued_.restart_all() from another
// thread. An I/O thread's request that sees the counter > 0, and is then
// overtaken by drained_end() before it is on the queue, sleeps for ever.
//
// Stress test: coroutines in an IoThread issue reads in a loop; the main
// thread drains and undrains the node. Every reader must keep making
// progress.
#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "tests/unit/testdrv.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/iothread.h"

#include <check.h>

using namespace bg;

namespace {

constexpr int kReaders = 4;
struct Shared {
    BlockBackend *blk;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> progress[kReaders] = {};
    std::atomic<int> finished{0};
};
struct Start {
    Shared *sh;
    int idx;
};

void reader(void *opaque)
{
    auto *st = static_cast<Start *>(opaque);
    Shared *sh = st->sh;
    char buf[512];
    while (!sh->stop.load()) {
        if (sh->blk->co_pread(0, sizeof(buf), buf) != 0) abort();
        sh->progress[st->idx].fetch_add(1);
        co_sleep_ns(1000);   // let the thread's loop run
    }
    sh->finished.fetch_add(1);
}

} // namespace

START_TEST(test_no_lost_wakeup_across_threads)
{
    auto ctx = AioContext::create();
    BlockGraph graph(&test_registry());
    BlockNode *n = graph.add_node(must_parse("test-mem,node-name=m")).value();
    auto blk = BlockBackend::create(n, kPermConsistentRead, kPermAll, "t").value();
    auto th = IoThread::create("io0").value();

    Shared sh;
    sh.blk = blk.get();
    Start starts[kReaders];
    for (int i = 0; i < kReaders; i++) {
        starts[i] = {&sh, i};
        struct Arg {
            Start *s;
        } a{&starts[i]};
        th->run_sync([](void *p) {
            auto *s = static_cast<Arg *>(p)->s;
            AioContext::current()->co_enter(coroutine_create(reader, s));
        }, &a);
    }

    const int64_t deadline = clock_ns() + 8LL * 1000 * 1000 * 1000;
    int cycles = 0;
    while (clock_ns() < deadline) {
        n->drained_begin();
        n->drained_end();
        cycles++;
        if (cycles % 500 == 0) {
            // Every reader must move within 2 s of an undrained node.
            uint64_t before[kReaders];
            for (int i = 0; i < kReaders; i++) before[i] = sh.progress[i].load();
            int64_t until = clock_ns() + 2LL * 1000 * 1000 * 1000;
            for (int i = 0; i < kReaders; i++) {
                while (sh.progress[i].load() == before[i] && clock_ns() < until) ctx->iterate(false);
                ck_assert_msg(sh.progress[i].load() != before[i],
                              "reader %d stuck after %d drain cycles: lost wake-up (backend in_flight=%lu)", i,
                              cycles, static_cast<unsigned long>(blk->in_flight()));
            }
        }
    }
    sh.stop = true;
    while (sh.finished.load() < kReaders) ctx->iterate(false);
    th.reset();
    blk.reset();
}
END_TEST

int main()
{
    Suite *s = suite_create("regress-backend-wakeup");
    TCase *tc = tcase_create("backend-queue");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_no_lost_wakeup_across_threads);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
