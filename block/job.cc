// block/job.cc -- the job framework: QEMU's job state machine, verbs,
// transactions and events (block/job.h explains the model).
#include "block/job.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "block/block.h"
#include "block/copy.h"

namespace bg {

namespace {

constexpr const char *kStatusNames[] = {"undefined", "created", "running", "paused", "ready", "standby",
                                        "waiting", "pending", "aborting", "concluded", "null"};
constexpr const char *kVerbNames[] = {"cancel", "pause", "resume", "set-speed", "complete", "finalize",
                                      "dismiss", "change"};

// QEMU's JobSTT: which transitions exist.
bool transition_allowed(JobStatus from, JobStatus to)
{
    using S = JobStatus;
    switch (from) {
    case S::kUndefined: return to == S::kCreated;
    case S::kCreated: return to == S::kRunning || to == S::kAborting || to == S::kNull;
    case S::kRunning: return to == S::kPaused || to == S::kReady || to == S::kWaiting || to == S::kAborting;
    case S::kPaused: return to == S::kRunning;
    case S::kReady: return to == S::kStandby || to == S::kWaiting || to == S::kAborting;
    case S::kStandby: return to == S::kReady;
    case S::kWaiting: return to == S::kPending || to == S::kAborting;
    case S::kPending: return to == S::kConcluded || to == S::kAborting;
    case S::kAborting: return to == S::kConcluded;
    case S::kConcluded: return to == S::kNull;
    case S::kNull: return false;
    }
    return false;
}

// QEMU's JobVerbTable.
bool verb_allowed_in(JobVerb v, JobStatus s)
{
    using S = JobStatus;
    switch (v) {
    case JobVerb::kCancel:
        return s == S::kCreated || s == S::kRunning || s == S::kPaused || s == S::kReady || s == S::kStandby ||
               s == S::kWaiting || s == S::kPending;
    case JobVerb::kPause:
    case JobVerb::kResume:
    case JobVerb::kSetSpeed:
    case JobVerb::kChange:
        return s == S::kCreated || s == S::kRunning || s == S::kPaused || s == S::kReady || s == S::kStandby;
    case JobVerb::kComplete: return s == S::kReady || s == S::kStandby;
    case JobVerb::kFinalize: return s == S::kPending;
    case JobVerb::kDismiss: return s == S::kConcluded;
    }
    return false;
}

bool id_valid(const std::string &id)
{
    if (id.empty() || id.size() > 127 || !isalpha(static_cast<unsigned char>(id[0]))) return false;
    return std::all_of(id.begin(), id.end(), [](char c) {
        return isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    });
}

} // namespace

const char *job_status_name(JobStatus s) { return kStatusNames[static_cast<int>(s)]; }
const char *job_verb_name(JobVerb v) { return kVerbNames[static_cast<int>(v)]; }

bool parse_on_error(const std::string &s, BlockdevOnError *out)
{
    static const std::pair<const char *, BlockdevOnError> names[] = {
        {"report", BlockdevOnError::kReport}, {"ignore", BlockdevOnError::kIgnore},
        {"enospc", BlockdevOnError::kEnospc}, {"stop", BlockdevOnError::kStop},
        {"auto", BlockdevOnError::kAuto}};
    for (const auto &[n, v] : names) {
        if (s == n) {
            *out = v;
            return true;
        }
    }
    return false;
}

// ---------------------------------------------------------------- Job

Job::Job(JobManager &mgr, const JobCommonOptions &opts)
    : mgr_(mgr), id_(opts.id), auto_finalize_(opts.auto_finalize), auto_dismiss_(opts.auto_dismiss),
      speed_(opts.speed), limit_(std::make_unique<RateLimit>(static_cast<uint64_t>(std::max<int64_t>(0, opts.speed)))),
      timer_(AioContext::current(), &Job::timer_cb, this)
{
}

Job::~Job()
{
    timer_.del();
}

void Job::transition(JobStatus to)
{
    if (!transition_allowed(status_, to)) {
        fprintf(stderr, "job '%s': invalid transition %s -> %s\n", id_.c_str(), job_status_name(status_),
                job_status_name(to));
        abort();
    }
    status_ = to;
    mgr_.emit("JOB_STATUS_CHANGE", {{"id", id_}, {"status", job_status_name(to)}});
}

bool Job::verb_allowed(JobVerb v, Status *st) const
{
    if (verb_allowed_in(v, status_)) return true;
    *st = make_error(EINVAL, "Job '%s' in state '%s' cannot accept command verb '%s'", id_.c_str(),
                     job_status_name(status_), job_verb_name(v));
    return false;
}

nlohmann::json Job::query_job() const
{
    nlohmann::json j = {{"id", id_},
                        {"type", type()},
                        {"status", job_status_name(status_)},
                        {"current-progress", progress_current_},
                        {"total-progress", progress_total_}};
    if (ret_ < 0 && !error_.empty()) j["error"] = error_;
    return j;
}

nlohmann::json Job::query_block_job() const
{
    nlohmann::json j = {{"type", type()},
                        {"device", id_},
                        {"len", progress_total_},
                        {"offset", progress_current_},
                        {"busy", busy_},
                        {"paused", pause_count_ > 0},
                        {"speed", speed_},
                        {"io-status", io_status_},
                        {"ready", is_ready()},
                        {"status", job_status_name(status_)},
                        {"auto-finalize", auto_finalize_},
                        {"auto-dismiss", auto_dismiss_}};
    if (ret_ < 0 && !error_.empty()) j["error"] = error_;
    query_extra(j);
    return j;
}

void Job::send_block_event(const char *name, bool with_error)
{
    if (!is_block_job()) return;
    nlohmann::json d = {{"type", type()},
                        {"device", id_},
                        {"len", progress_total_},
                        {"offset", progress_current_},
                        {"speed", speed_}};
    if (with_error) d["error"] = error_;
    mgr_.emit(name, d);
}

// ---- verbs

Status Job::pause()
{
    Status st;
    if (!verb_allowed(JobVerb::kPause, &st)) return st;
    if (user_paused_) return make_error(EINVAL, "Job is already paused");
    user_paused_ = true;
    pause_count_++;
    enter();
    return {};
}

Status Job::resume()
{
    Status st;
    if (!verb_allowed(JobVerb::kResume, &st)) return st;
    if (!user_paused_ || pause_count_ == 0) return make_error(EINVAL, "Can't resume a job that was not paused");
    user_paused_ = false;
    pause_count_--;
    io_status_ = "ok";
    enter();
    return {};
}

Status Job::cancel(bool force)
{
    Status st;
    if (!verb_allowed(JobVerb::kCancel, &st)) return st;
    if (status_ == JobStatus::kConcluded) return {};
    if (!force && !(is_ready() && soft_cancel())) force = true;
    cancelled_ = true;
    force_cancel_ = force_cancel_ || force;
    if (status_ == JobStatus::kCreated) {
        // Never started: it aborts at once.
        early_fail();
        return {};
    }
    if (status_ == JobStatus::kPending || status_ == JobStatus::kWaiting) {
        // Done with its work, waiting for the transaction: abort it all.
        ret_ = -ECANCELED;
        JobTxn &t = *txn_;
        if (!t.aborting) {
            t.aborting = true;
            auto self = txn_;   // keep the transaction alive while its jobs go
            std::vector<Job *> jobs = self->jobs;
            for (Job *j : jobs) {
                if (j != this && !j->completed_) (void)j->cancel(true);
            }
            for (Job *j : jobs) {
                if (j->completed_ && (j->status_ == JobStatus::kWaiting || j->status_ == JobStatus::kPending))
                    j->finalize_one(false);
            }
        }
        return {};
    }
    enter();
    return {};
}

Status Job::complete()
{
    Status st;
    if (!verb_allowed(JobVerb::kComplete, &st)) return st;
    if (cancelled_) {
        return make_error(EINVAL, "The active block job '%s' cannot be completed", id_.c_str());
    }
    st = do_complete();
    if (!st.ok()) return st;
    enter();
    return {};
}

Status Job::do_complete()
{
    return make_error(EINVAL, "The active block job '%s' cannot be completed", id_.c_str());
}

Status Job::finalize()
{
    Status st;
    if (!verb_allowed(JobVerb::kFinalize, &st)) return st;
    auto t = txn_;
    // Every job of the transaction is pending (finalize only happens then).
    bool ok = true;
    std::vector<Job *> jobs = t->jobs;
    for (Job *j : jobs) {
        Status p = j->prepare();
        if (!p.ok()) {
            j->ret_ = -p.error().err;
            j->error_ = p.error().msg;
            ok = false;
            break;
        }
    }
    if (!ok) {
        t->aborting = true;
        for (Job *j : jobs) j->finalize_one(false);
        return {};
    }
    for (Job *j : jobs) j->finalize_one(true);
    return {};
}

Status Job::dismiss()
{
    Status st;
    if (!verb_allowed(JobVerb::kDismiss, &st)) return st;
    transition(JobStatus::kNull);
    mgr_.destroy(this);
    return {};
}

Status Job::set_speed(int64_t speed)
{
    Status st;
    if (!verb_allowed(JobVerb::kSetSpeed, &st)) return st;
    if (speed < 0) return make_error(EINVAL, "Parameter 'speed' expects a non-negative value");
    speed_ = speed;
    limit_ = std::make_unique<RateLimit>(static_cast<uint64_t>(speed));
    enter();
    return {};
}

Status Job::change(const nlohmann::json &opts)
{
    Status st;
    if (!verb_allowed(JobVerb::kChange, &st)) return st;
    return do_change(opts);
}

Status Job::do_change(const nlohmann::json &)
{
    return make_error(EINVAL, "Job type does not support change");
}

// ---- running

void Job::start()
{
    transition(JobStatus::kRunning);
    busy_ = true;
    co_ = coroutine_create(&Job::co_entry, this);
    AioContext::current()->co_schedule(co_);
}

void Job::co_entry(void *opaque)
{
    Job *j = static_cast<Job *>(opaque);
    j->pause_point();
    int ret = j->is_cancelled() ? -ECANCELED : j->run();
    j->ret_ = ret;
    j->busy_ = false;
    j->completed_ = true;
    // Finalization changes the graph: outside the coroutine.
    AioContext::current()->schedule_oneshot(&Job::completed_bh, j);
}

void Job::completed_bh(void *opaque)
{
    // Finalization changes the graph, which drains nodes and waits for
    // their requests: that needs the loop, which a bottom half cannot run
    // (the loop does not dispatch itself recursively), so it runs in a
    // coroutine of its own (not the job's).
    AioContext::current()->co_enter(
        coroutine_create([](void *o) { static_cast<Job *>(o)->on_run_done(); }, opaque));
}

void Job::enter()
{
    if (!co_ || completed_) return;
    if (sleeping_) {
        sleeping_ = false;
        timer_.del();
        AioContext::current()->co_schedule(co_);
    }
}

void Job::timer_cb(void *opaque)
{
    Job *j = static_cast<Job *>(opaque);
    if (!j->sleeping_) return;
    j->sleeping_ = false;
    coroutine_enter(j->co_);
}

void coroutine_fn Job::sleep_ns(int64_t ns)
{
    if (!is_cancelled() && pause_count_ == 0) {
        busy_ = false;
        sleeping_ = true;
        if (ns >= 0) timer_.mod_in(ns);
        coroutine_yield();
        sleeping_ = false;
        busy_ = true;
    }
    pause_point();
}

void coroutine_fn Job::pause_point()
{
    while (pause_count_ > 0 && !is_cancelled()) {
        bool was_ready = is_ready();
        transition(was_ready ? JobStatus::kStandby : JobStatus::kPaused);
        paused_ = true;
        busy_ = false;
        sleeping_ = true;    // enter() wakes us
        coroutine_yield();
        sleeping_ = false;
        busy_ = true;
        paused_ = false;
        transition(was_ready ? JobStatus::kReady : JobStatus::kRunning);
    }
}

void coroutine_fn Job::rate_limit(int64_t n)
{
    int64_t wait = 0;
    if (speed_ > 0) wait = limit_->account(static_cast<uint64_t>(n), clock_ns());
    if (wait > 0) {
        sleep_ns(wait);
    } else {
        pause_point();
    }
}

void Job::set_ready()
{
    if (status_ != JobStatus::kRunning) return;
    transition(JobStatus::kReady);
    send_block_event("BLOCK_JOB_READY", false);
}

BlockErrorAction Job::error_action(BlockdevOnError policy, bool is_read, int err)
{
    int e = err < 0 ? -err : err;
    BlockErrorAction a = BlockErrorAction::kReport;
    switch (policy) {
    case BlockdevOnError::kReport: a = BlockErrorAction::kReport; break;
    case BlockdevOnError::kIgnore: a = BlockErrorAction::kIgnore; break;
    case BlockdevOnError::kStop: a = BlockErrorAction::kStop; break;
    case BlockdevOnError::kEnospc:
    case BlockdevOnError::kAuto: a = e == ENOSPC ? BlockErrorAction::kStop : BlockErrorAction::kReport; break;
    }
    static const char *const action_names[] = {"report", "ignore", "stop"};
    mgr_.emit("BLOCK_JOB_ERROR", {{"device", id_},
                                  {"operation", is_read ? "read" : "write"},
                                  {"action", action_names[static_cast<int>(a)]}});
    if (a == BlockErrorAction::kStop) {
        // As a user pause, so that resume continues it.
        if (!user_paused_) {
            user_paused_ = true;
            pause_count_++;
        }
        io_status_ = e == ENOSPC ? "nospace" : "failed";
    }
    return a;
}

void Job::follow_copy(CopyOptions &co)
{
    co.before_chunk = [this](int64_t n) {
        rate_limit(n);
        return is_cancelled() ? -ECANCELED : 0;
    };
    auto seen = std::make_shared<int64_t>(0);
    co.progress = [this, seen](const CopyProgress &p) {
        progress_add(p.done - *seen);
        *seen = p.done;
    };
}

void Job::block_node(BlockNode *n)
{
    if (std::find(blocked_.begin(), blocked_.end(), n) == blocked_.end()) blocked_.push_back(n);
}

// ---- completion

void Job::on_run_done()
{
    co_ = nullptr;
    auto t = txn_;   // may be the last reference once jobs go away
    if (ret_ == 0 && is_cancelled()) ret_ = -ECANCELED;
    if (ret_ < 0 && error_.empty()) error_ = strerror(-ret_);
    if (ret_ < 0 || t->aborting) {
        if (ret_ == 0) ret_ = -ECANCELED;
        if (!t->aborting) {
            t->aborting = true;
            // The others of the transaction are cancelled; those already
            // done abort now, the rest when their run() returns.
            std::vector<Job *> jobs = t->jobs;
            for (Job *j : jobs) {
                if (j == this) continue;
                if (!j->completed_) {
                    j->cancelled_ = j->force_cancel_ = true;
                    if (j->status_ == JobStatus::kCreated) {
                        j->early_fail();
                    } else {
                        j->enter();
                    }
                } else if (j->status_ == JobStatus::kWaiting || j->status_ == JobStatus::kPending) {
                    j->ret_ = -ECANCELED;
                    j->finalize_one(false);
                }
            }
        }
        finalize_one(false);
        return;
    }
    transition(JobStatus::kWaiting);
    for (Job *j : t->jobs) {
        if (!j->completed_ || j->status_ != JobStatus::kWaiting) return;
    }
    // Every job of the transaction is done: pending, then finalized unless
    // one of them wants job-finalize.
    bool all_auto = true;
    std::vector<Job *> jobs = t->jobs;
    for (Job *j : jobs) {
        j->transition(JobStatus::kPending);
        if (!j->auto_finalize_) {
            all_auto = false;
            if (j->is_block_job()) mgr_.emit("BLOCK_JOB_PENDING", {{"type", j->type()}, {"id", j->id_}});
        }
    }
    if (all_auto) (void)jobs.front()->finalize();
}

void Job::finalize_one(bool success)
{
    auto keep = txn_;
    if (!success) {
        if (ret_ == 0) ret_ = -ECANCELED;
        if (error_.empty()) error_ = strerror(-ret_);
        transition(JobStatus::kAborting);
        abort();
    } else {
        commit();
    }
    clean();
    if (success) {
        send_block_event("BLOCK_JOB_COMPLETED", false);
    } else if (is_cancelled() && ret_ == -ECANCELED) {
        send_block_event("BLOCK_JOB_CANCELLED", false);
    } else {
        send_block_event("BLOCK_JOB_COMPLETED", true);
    }
    transition(JobStatus::kConcluded);
    auto &v = keep->jobs;
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
    if (auto_dismiss_) {
        transition(JobStatus::kNull);
        mgr_.destroy(this);
    }
}

void Job::early_fail()
{
    cancelled_ = force_cancel_ = true;
    ret_ = -ECANCELED;
    completed_ = true;
    transition(JobStatus::kAborting);
    abort();
    clean();
    auto &v = txn_->jobs;
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
    transition(JobStatus::kConcluded);
    transition(JobStatus::kNull);
    mgr_.destroy(this);
}

// ---------------------------------------------------------------- JobManager

JobManager::JobManager(EventSink sink) : sink_(std::move(sink)) {}

JobManager::~JobManager()
{
    delete reap_;
}

Status JobManager::check_new_id(const std::string &id) const
{
    if (!id_valid(id)) return make_error(EINVAL, "Invalid job ID '%s'", id.c_str());
    if (find(id)) return make_error(EEXIST, "Job ID '%s' already in use", id.c_str());
    return {};
}

Status JobManager::check_node_free(const BlockNode *n) const
{
    for (const auto &j : jobs_) {
        if (std::find(j->blocked_.begin(), j->blocked_.end(), n) != j->blocked_.end()) {
            return make_error(EBUSY, "Node '%s' is busy: block device is in use by block job: %s",
                              n->node_name().c_str(), j->type());
        }
    }
    return {};
}

Job *JobManager::add(std::unique_ptr<Job> job, const std::shared_ptr<JobTxn> &txn)
{
    Job *j = job.get();
    j->txn_ = txn ? txn : std::make_shared<JobTxn>();
    j->txn_->jobs.push_back(j);
    jobs_.push_back(std::move(job));
    j->transition(JobStatus::kCreated);
    return j;
}

Job *JobManager::find(const std::string &id) const
{
    for (const auto &j : jobs_) {
        if (j->id() == id) return j.get();
    }
    return nullptr;
}

std::vector<Job *> JobManager::jobs() const
{
    std::vector<Job *> out;
    for (const auto &j : jobs_) out.push_back(j.get());
    return out;
}

void JobManager::destroy(Job *job)
{
    for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
        if (it->get() == job) {
            dead_.push_back(std::move(*it));
            jobs_.erase(it);
            break;
        }
    }
    if (!reap_) reap_ = AioContext::current()->bh_new(&JobManager::reap_bh, this);
    reap_->schedule();
}

void JobManager::reap_bh(void *opaque)
{
    auto *m = static_cast<JobManager *>(opaque);
    m->dead_.clear();
}

void JobManager::cancel_all_sync()
{
    for (Job *j : jobs()) {
        if (j->status_ != JobStatus::kConcluded && j->status_ != JobStatus::kNull) (void)j->cancel(true);
    }
    AioContext *ctx = AioContext::current();
    for (;;) {
        bool busy = false;
        for (const auto &j : jobs_) {
            if (j->status_ != JobStatus::kConcluded) busy = true;
        }
        if (!busy) break;
        ctx->iterate(true);
    }
    for (Job *j : jobs()) {
        j->transition(JobStatus::kNull);
        destroy(j);
    }
    dead_.clear();
}

} // namespace bg
