// Unit tests for block/job.h: QEMU's job state machine, verbs, events and
// transactions, driven by a job type whose run() steps through a counter.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "block/job.h"
#include "util/aio.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

struct Events {
    std::vector<std::string> seq;   // "JOB_STATUS_CHANGE:running", "BLOCK_JOB_COMPLETED", ...
    std::vector<nlohmann::json> data;
    void add(const std::string &name, const nlohmann::json &d)
    {
        seq.push_back(name == "JOB_STATUS_CHANGE" ? "status:" + d["status"].get<std::string>() : name);
        data.push_back(d);
    }
    std::string joined(const std::string &id = "") const
    {
        std::string s;
        for (size_t i = 0; i < seq.size(); i++) {
            if (!id.empty() && data[i].value("id", data[i].value("device", "")) != id) continue;
            s += (s.empty() ? "" : " ") + seq[i];
        }
        return s;
    }
};

// Steps `steps` times (1 ms each, a pause point each), optionally becoming
// ready after ready_at steps and then running until cancelled or completed.
class StepJob : public Job {
  public:
    StepJob(JobManager &m, const JobCommonOptions &o, int steps) : Job(m, o), steps_(steps) {}
    const char *type() const override { return "stream"; }
    int fail_with = 0;
    int ready_at = -1;
    bool completing = false;
    int committed = 0, aborted = 0, cleaned = 0;
    int done = 0;
    BlockdevOnError policy = BlockdevOnError::kReport;
    int error_at = -1;   // step that hits an I/O error once

    using Job::error_action;

  protected:
    int coroutine_fn run() override
    {
        progress_set_total(steps_);
        for (done = 0; done < steps_ || ready_at >= 0; done++) {
            if (is_cancelled()) return -ECANCELED;
            if (done == error_at) {
                error_at = -1;
                BlockErrorAction a = error_action(policy, false, -EIO);
                if (a == BlockErrorAction::kReport) return -EIO;
                if (a == BlockErrorAction::kStop) pause_point();
            }
            if (ready_at >= 0 && done >= ready_at) {
                set_ready();
                if (completing || cancel_requested()) return 0;
            }
            sleep_ns(1000000);
            if (done < steps_) progress_add(1);
        }
        if (fail_with) {
            set_error("step job failed on purpose");
            return fail_with;
        }
        return 0;
    }
    Status do_complete() override
    {
        if (ready_at < 0) return Job::do_complete();
        completing = true;
        return {};
    }
    bool soft_cancel() override { return ready_at >= 0; }
    void commit() override { committed++; }
    void abort() override { aborted++; }
    void clean() override { cleaned++; }

  private:
    int steps_;
};

struct Fixture {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    Events ev;
    JobManager mgr{[this](const std::string &n, const nlohmann::json &d) { ev.add(n, d); }};

    StepJob *add(const std::string &id, int steps, bool af = true, bool ad = true,
                 const std::shared_ptr<JobTxn> &txn = nullptr)
    {
        JobCommonOptions o;
        o.id = id;
        o.auto_finalize = af;
        o.auto_dismiss = ad;
        auto j = std::make_unique<StepJob>(mgr, o, steps);
        return static_cast<StepJob *>(mgr.add(std::move(j), txn));
    }
    // Runs the loop until pred holds (at most ~5 s).
    template <typename P>
    bool run_until(P pred)
    {
        int64_t end = clock_ns() + 5000000000LL;
        while (!pred()) {
            if (clock_ns() > end) return false;
            ctx->iterate(true);
        }
        return true;
    }
    bool gone(const std::string &id) { return mgr.find(id) == nullptr; }
};

} // namespace

// ck_assert_str_eq on a temporary std::string would read freed memory.
#define STR_EQ(got, want)                                                                                       \
    do {                                                                                                        \
        const std::string got_ = (got);                                                                         \
        ck_assert_str_eq(got_.c_str(), want);                                                                   \
    } while (0)

START_TEST(test_success_events)
{
    Fixture f;
    StepJob *j = f.add("j1", 3);
    ck_assert_str_eq(job_status_name(j->status()), "created");
    j->start();
    ck_assert(f.run_until([&] { return f.gone("j1"); }));
    STR_EQ(f.ev.joined(),
                     "status:created status:running status:waiting status:pending BLOCK_JOB_COMPLETED "
                     "status:concluded status:null");
    const nlohmann::json &c = f.ev.data[4];
    STR_EQ(c["type"].get<std::string>(), "stream");
    STR_EQ(c["device"].get<std::string>(), "j1");
    ck_assert_int_eq(c["len"].get<int64_t>(), 3);
    ck_assert_int_eq(c["offset"].get<int64_t>(), 3);
    ck_assert(!c.contains("error"));
}
END_TEST

START_TEST(test_manual_finalize_dismiss)
{
    Fixture f;
    StepJob *j = f.add("j1", 2, false, false);
    j->start();
    ck_assert(f.run_until([&] { return j->status() == JobStatus::kPending; }));
    ck_assert_int_eq(j->committed, 0);
    ck_assert(f.ev.joined().find("BLOCK_JOB_PENDING") != std::string::npos);
    Status st = j->dismiss();
    ck_assert(!st.ok());
    STR_EQ(st.error().msg, "Job 'j1' in state 'pending' cannot accept command verb 'dismiss'");
    ck_assert(j->finalize().ok());
    ck_assert_int_eq(j->committed, 1);
    ck_assert_int_eq(j->cleaned, 1);
    ck_assert(j->status() == JobStatus::kConcluded);
    STR_EQ(j->query_job()["status"].get<std::string>(), "concluded");
    ck_assert(j->dismiss().ok());
    ck_assert(f.run_until([&] { return f.gone("j1"); }));
}
END_TEST

START_TEST(test_pause_resume)
{
    Fixture f;
    StepJob *j = f.add("j1", 1000000);
    j->start();
    ck_assert(f.run_until([&] { return j->done > 2; }));
    ck_assert(j->pause().ok());
    Status st = j->pause();
    STR_EQ(st.error().msg, "Job is already paused");
    ck_assert(f.run_until([&] { return j->status() == JobStatus::kPaused; }));
    ck_assert(!j->busy());
    ck_assert(j->query_block_job()["paused"].get<bool>());
    int at = j->done;
    for (int i = 0; i < 20; i++) f.ctx->iterate(false);
    ck_assert_int_eq(j->done, at);
    ck_assert(j->resume().ok());
    st = j->resume();
    STR_EQ(st.error().msg, "Can't resume a job that was not paused");
    ck_assert(f.run_until([&] { return j->done > at + 2; }));
    ck_assert(j->status() == JobStatus::kRunning);
    ck_assert(j->cancel(true).ok());
    ck_assert(f.run_until([&] { return f.gone("j1"); }));
    ck_assert(f.ev.joined().find("status:paused status:running") != std::string::npos);
}
END_TEST

START_TEST(test_cancel)
{
    Fixture f;
    StepJob *j = f.add("j1", 1000000, true, false);
    j->start();
    ck_assert(f.run_until([&] { return j->done > 1; }));
    ck_assert(j->cancel(false).ok());   // not ready: a force cancel
    ck_assert(f.run_until([&] { return j->status() == JobStatus::kConcluded; }));
    ck_assert_int_eq(j->aborted, 1);
    ck_assert_int_eq(j->committed, 0);
    std::string s = f.ev.joined();
    ck_assert(s.find("status:aborting BLOCK_JOB_CANCELLED status:concluded") != std::string::npos);
    ck_assert(s.find("BLOCK_JOB_COMPLETED") == std::string::npos);
    STR_EQ(j->query_job()["error"].get<std::string>(), "Operation canceled");
    ck_assert(j->dismiss().ok());
}
END_TEST

START_TEST(test_failure)
{
    Fixture f;
    StepJob *j = f.add("j1", 2, true, false);
    j->fail_with = -EIO;
    j->start();
    ck_assert(f.run_until([&] { return j->status() == JobStatus::kConcluded; }));
    std::string s = f.ev.joined();
    ck_assert(s.find("status:aborting BLOCK_JOB_COMPLETED status:concluded") != std::string::npos);
    const nlohmann::json &c = f.ev.data[f.ev.seq.size() - 2];
    STR_EQ(c["error"].get<std::string>(), "step job failed on purpose");
    STR_EQ(j->query_job()["error"].get<std::string>(), "step job failed on purpose");
    ck_assert_int_eq(j->aborted, 1);
}
END_TEST

START_TEST(test_ready_complete_and_soft_cancel)
{
    Fixture f;
    StepJob *j = f.add("m1", 3);
    j->ready_at = 3;
    Status st = j->complete();
    STR_EQ(st.error().msg, "Job 'm1' in state 'created' cannot accept command verb 'complete'");
    j->start();
    ck_assert(f.run_until([&] { return j->is_ready(); }));
    ck_assert(f.ev.joined().find("status:ready BLOCK_JOB_READY") != std::string::npos);
    ck_assert(j->query_block_job()["ready"].get<bool>());
    ck_assert(j->complete().ok());
    ck_assert(f.run_until([&] { return f.gone("m1"); }));
    ck_assert(f.ev.joined().find("status:waiting status:pending BLOCK_JOB_COMPLETED") != std::string::npos);

    // A soft cancel of a ready job finishes as a success.
    Fixture g;
    StepJob *k = g.add("m2", 2);
    k->ready_at = 2;
    k->start();
    ck_assert(g.run_until([&] { return k->is_ready(); }));
    ck_assert(k->cancel(false).ok());
    ck_assert(g.run_until([&] { return g.gone("m2"); }));
    ck_assert(g.ev.joined().find("BLOCK_JOB_COMPLETED") != std::string::npos);
    ck_assert(g.ev.joined().find("BLOCK_JOB_CANCELLED") == std::string::npos);

    // A job type without complete() refuses it once ready.
    Fixture h;
    StepJob *n = h.add("s1", 1000000);
    n->start();
    ck_assert(h.run_until([&] { return n->done > 0; }));
    st = n->complete();
    STR_EQ(st.error().msg, "Job 's1' in state 'running' cannot accept command verb 'complete'");
    ck_assert(n->cancel(true).ok());
    ck_assert(h.run_until([&] { return h.gone("s1"); }));
}
END_TEST

START_TEST(test_error_stop_resume)
{
    Fixture f;
    StepJob *j = f.add("j1", 5);
    j->policy = BlockdevOnError::kStop;
    j->error_at = 2;
    j->start();
    ck_assert(f.run_until([&] { return j->status() == JobStatus::kPaused; }));
    ck_assert_str_eq(j->io_status(), "failed");
    ck_assert(j->user_paused());
    ck_assert(f.ev.joined().find("BLOCK_JOB_ERROR") != std::string::npos);
    ck_assert(j->resume().ok());
    ck_assert_str_eq(j->io_status(), "ok");
    ck_assert(f.run_until([&] { return f.gone("j1"); }));
    ck_assert(f.ev.joined().find("BLOCK_JOB_COMPLETED") != std::string::npos);

    // enospc: stops on ENOSPC only.
    StepJob dummy(f.mgr, JobCommonOptions{"x"}, 0);
    ck_assert(dummy.error_action(BlockdevOnError::kEnospc, true, -EIO) == BlockErrorAction::kReport);
    ck_assert(dummy.error_action(BlockdevOnError::kEnospc, true, -ENOSPC) == BlockErrorAction::kStop);
    ck_assert_str_eq(dummy.io_status(), "nospace");
    ck_assert(dummy.error_action(BlockdevOnError::kIgnore, true, -EIO) == BlockErrorAction::kIgnore);
}
END_TEST

// A failing job of a grouped transaction cancels the others.
START_TEST(test_txn_abort)
{
    Fixture f;
    auto txn = std::make_shared<JobTxn>();
    StepJob *a = f.add("a", 1000000, true, true, txn);
    StepJob *b = f.add("b", 2, true, true, txn);
    b->fail_with = -EIO;
    a->start();
    b->start();
    ck_assert(f.run_until([&] { return f.gone("a") && f.gone("b"); }));
    ck_assert(f.ev.joined("a").find("BLOCK_JOB_CANCELLED") != std::string::npos);
    ck_assert(f.ev.joined("b").find("BLOCK_JOB_COMPLETED") != std::string::npos);

    // Both succeed: neither finalizes before the other is done.
    Fixture g;
    auto t2 = std::make_shared<JobTxn>();
    StepJob *c = g.add("c", 1, true, true, t2);
    StepJob *d = g.add("d", 30, true, true, t2);
    c->start();
    d->start();
    ck_assert(g.run_until([&] { return c->status() == JobStatus::kWaiting; }));
    ck_assert_int_eq(c->committed, 0);
    ck_assert(g.run_until([&] { return g.gone("c") && g.gone("d"); }));
    std::string s = g.ev.joined();
    ck_assert(s.rfind("status:waiting") < s.find("BLOCK_JOB_COMPLETED"));
}
END_TEST

START_TEST(test_ids_and_speed)
{
    Fixture f;
    STR_EQ(f.mgr.check_new_id("").error().msg, "Invalid job ID ''");
    STR_EQ(f.mgr.check_new_id("1x").error().msg, "Invalid job ID '1x'");
    StepJob *j = f.add("j1", 1000000);
    STR_EQ(f.mgr.check_new_id("j1").error().msg, "Job ID 'j1' already in use");
    ck_assert(f.mgr.check_new_id("j2").ok());
    j->start();
    STR_EQ(j->set_speed(-1).error().msg, "Parameter 'speed' expects a non-negative value");
    ck_assert(j->set_speed(1 << 20).ok());
    ck_assert_int_eq(j->query_block_job()["speed"].get<int64_t>(), 1 << 20);
    STR_EQ(j->change({}).error().msg, "Job type does not support change");
    // quit: every job cancelled and gone.
    f.mgr.cancel_all_sync();
    ck_assert(f.mgr.jobs().empty());
}
END_TEST

static Suite *job_suite()
{
    Suite *s = suite_create("job");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_success_events);
    tcase_add_test(tc, test_manual_finalize_dismiss);
    tcase_add_test(tc, test_pause_resume);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_failure);
    tcase_add_test(tc, test_ready_complete_and_soft_cancel);
    tcase_add_test(tc, test_error_stop_resume);
    tcase_add_test(tc, test_txn_abort);
    tcase_add_test(tc, test_ids_and_speed);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(job_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
