// block/job.h -- block jobs: long-running operations on a live graph
// (commit, stream, mirror, backup, create) with QEMU's job model.
//
// A job type subclasses Job and implements run(): the work, in a coroutine
// of the main loop, which calls the helpers below between chunks (a pause
// point, the speed limit, progress, the on-error policy). The framework
// owns the state machine (QEMU's JobStatus and its transitions), the verbs
// (pause, resume, cancel, complete, finalize, dismiss, set-speed), the
// completion of transactions (a group of jobs that succeed or fail
// together) and the events, which it hands to the JobManager's sink (the
// daemon sends them to its QMP monitors):
//   JOB_STATUS_CHANGE {id, status}             every state change
//   BLOCK_JOB_READY {type, device, len, offset, speed}
//   BLOCK_JOB_PENDING {type, id}               pending without auto-finalize
//   BLOCK_JOB_COMPLETED {type, device, len, offset, speed, error?}
//   BLOCK_JOB_CANCELLED {type, device, len, offset, speed}
//   BLOCK_JOB_ERROR {device, operation, action}
// ("device" is the job id; jobs that are not block jobs, i.e. create,
// send only JOB_STATUS_CHANGE.)
//
// Life of a job:
//   1. The job type's start function (block/jobs.h) checks its arguments,
//      builds the job and changes the graph (filters, backends). On any
//      failure it undoes that and returns the error: no job exists.
//   2. JobManager::add() registers it (-> created), Job::start() runs it
//      (-> running). A transaction adds several first and starts them once
//      every action succeeded.
//   3. run() returns 0 (success) or a negative errno (failure; the message
//      is set_error()'s, else strerror). A cancelled job's run() should
//      return -ECANCELED soon after is_cancelled() turns true.
//   4. The framework, in the main loop, in a coroutine of its own (not the
//      job's: graph changes drain, which needs the loop running): success ->
//      waiting; once every job of the transaction is waiting -> pending
//      (and, unless auto-finalize is off, at once) finalize: prepare() of
//      each (any failure aborts the whole transaction), then commit() and
//      clean() of each, BLOCK_JOB_COMPLETED, concluded, and with
//      auto-dismiss null (the job is destroyed). Failure or cancel -> the
//      other jobs of the transaction are cancelled; each goes aborting,
//      abort(), clean(), BLOCK_JOB_COMPLETED with error (or
//      BLOCK_JOB_CANCELLED), concluded, null.
//
// Threading model: main thread only. run() and its helpers run in the
// job's coroutine; the verbs and hooks in the main loop (the verbs may be
// called from a QMP coroutine; they never yield).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/aio.h"
#include "util/coroutine.h"
#include "util/error.h"
#include "util/ratelimit.h"

namespace bg {

class BlockNode;
class JobManager;
struct CopyOptions;
struct JobTxn;

enum class JobStatus { kUndefined, kCreated, kRunning, kPaused, kReady, kStandby, kWaiting, kPending, kAborting,
                       kConcluded, kNull };
const char *job_status_name(JobStatus s);

enum class JobVerb { kCancel, kPause, kResume, kSetSpeed, kComplete, kFinalize, kDismiss, kChange };
const char *job_verb_name(JobVerb v);

// on-error, on-source-error, on-target-error (QEMU's BlockdevOnError).
enum class BlockdevOnError { kReport, kIgnore, kEnospc, kStop, kAuto };
// "report", "ignore", "enospc", "stop", "auto"; false for anything else.
bool parse_on_error(const std::string &s, BlockdevOnError *out);
// What error_action() decided.
enum class BlockErrorAction { kReport, kIgnore, kStop };

// The arguments every job command takes.
struct JobCommonOptions {
    std::string id;                 // job-id (required in our daemon, as in QSD)
    bool auto_finalize = true;
    bool auto_dismiss = true;
    int64_t speed = 0;              // bytes per second, 0 = unlimited
};

class Job {
  public:
    virtual ~Job();
    Job(const Job &) = delete;
    Job &operator=(const Job &) = delete;

    const std::string &id() const { return id_; }
    // QEMU's JobType name: "commit", "stream", "mirror", "backup", "create".
    virtual const char *type() const = 0;
    // Block jobs show in query-block-jobs and send BLOCK_JOB_* events.
    virtual bool is_block_job() const { return true; }

    JobStatus status() const { return status_; }
    int64_t progress_current() const { return progress_current_; }
    int64_t progress_total() const { return progress_total_; }
    int64_t speed() const { return speed_; }
    bool busy() const { return busy_; }
    bool user_paused() const { return user_paused_; }
    bool paused() const { return pause_count_ > 0; }
    bool is_ready() const { return status_ == JobStatus::kReady || status_ == JobStatus::kStandby; }
    // QEMU's io-status: "ok", "failed", "nospace" (set by a stop on error).
    const char *io_status() const { return io_status_; }
    bool auto_finalize() const { return auto_finalize_; }
    bool auto_dismiss() const { return auto_dismiss_; }
    // The failure's message once the job failed ("" otherwise).
    const std::string &error() const { return error_; }
    // query-jobs / query-block-jobs entries.
    nlohmann::json query_job() const;
    nlohmann::json query_block_job() const;

    // ---- verbs (the monitor's commands); QEMU's texts:
    //   "Job 'ID' in state 'S' cannot accept command verb 'V'"
    // Sets user pause: the job stops at its next pause point (running ->
    // paused, ready -> standby). "Job is already paused".
    Status pause();
    // "Can't resume a job that was not paused". Clears io-status.
    Status resume();
    // force: stop now. Without force a ready job whose type supports it
    // (soft_cancel()) finishes as a success without its final graph change
    // (mirror: the target stays a point-in-time copy); every other job is
    // force-cancelled.
    Status cancel(bool force);
    // Ready jobs only: "The active block job 'ID' cannot be completed"
    // for job types without complete().
    Status complete();
    Status finalize();   // pending jobs (auto-finalize off): the whole transaction
    Status dismiss();    // concluded jobs (auto-dismiss off)
    // Bytes per second, 0 = unlimited; negative: "Parameter 'speed'
    // expects a non-negative value".
    Status set_speed(int64_t speed);
    // block-job-change (mirror's copy-mode). Default: "Job type does not
    // support change" -- job types override do_change().
    Status change(const nlohmann::json &opts);

    // Starts run() in a coroutine: created -> running. Called once, by the
    // start function or the transaction that created the job.
    void start();
    // A created job that is never started (a transaction rolled back):
    // created -> aborting -> concluded -> null (as QEMU), destroyed without
    // events other than the status changes; abort() and clean() run.
    void early_fail();

  protected:
    Job(JobManager &mgr, const JobCommonOptions &opts);

    // ---- what a job type implements
    // The work. Runs in the job's coroutine in the main loop.
    virtual int coroutine_fn run() = 0;
    // Finalization hooks, main loop, outside the job's coroutine (in one of
    // their own, or a QMP command's), in this order:
    // prepare() (success only; a failure aborts the transaction), then
    // commit() on success or abort() on failure/cancel, then clean().
    virtual Status prepare() { return {}; }
    virtual void commit() {}
    virtual void abort() {}
    virtual void clean() {}
    // job-complete of a ready job: should arrange for run() to finish
    // (mirror: switch to the target). Called with the job ready; the
    // default refuses. Main loop.
    virtual Status do_complete();
    // Cancel without force of a ready job: return true if the job type
    // handles it (mirror: finish as a success without pivoting; run() sees
    // cancel_requested() and returns 0), false to force-cancel.
    virtual bool soft_cancel() { return false; }
    virtual Status do_change(const nlohmann::json &opts);
    // Adds type-specific members to query-block-jobs (mirror: actively-synced).
    virtual void query_extra(nlohmann::json &) const {}

    // ---- helpers for run()
    // Force-cancelled: stop and return -ECANCELED.
    bool is_cancelled() const { return cancelled_ && force_cancel_; }
    // Any cancel (also a soft one of a ready job).
    bool cancel_requested() const { return cancelled_; }
    // Waits here while the job is paused (user pause or stop on error):
    // running -> paused, ready -> standby, and back on resume. Returns at
    // once when cancelled.
    void coroutine_fn pause_point();
    // Sleeps ns nanoseconds, then pause_point(). Woken early by cancel,
    // pause, resume, complete and set-speed.
    void coroutine_fn sleep_ns(int64_t ns);
    // Books n bytes against the speed limit and sleeps as long as it says
    // (0 when unlimited: then only a pause point). Call once per chunk,
    // before issuing it.
    void coroutine_fn rate_limit(int64_t n);
    // running -> ready; sends BLOCK_JOB_READY. Job types with a ready
    // state (mirror, active commit) call it once in sync.
    void set_ready();
    // Progress in bytes (query-jobs current/total-progress, len/offset).
    void progress_add(int64_t n) { progress_current_ += n; }
    void progress_set_total(int64_t total) { progress_total_ = total; }
    void progress_add_total(int64_t n) { progress_total_ += n; }
    // An I/O error err (negative errno) of a read (is_read) or write:
    // applies policy, sends BLOCK_JOB_ERROR {device, operation, action}
    // and returns the action: kReport (fail the job with err), kIgnore
    // (go on / retry), kStop (the job is now user-paused with io-status
    // failed/nospace; the caller calls pause_point() and then retries).
    BlockErrorAction error_action(BlockdevOnError policy, bool is_read, int err);
    // For a run() that copies with the copy engine (block/copy.h): sets
    // co.before_chunk (the speed limit and a pause point before each
    // chunk; a cancel stops the copy with -ECANCELED) and co.progress (the
    // job's progress follows the copy's). Needs co.max_workers 1 (the
    // hooks then run in the job's coroutine).
    void follow_copy(CopyOptions &co);
    // The message run()'s failure reports (else strerror of its errno).
    void set_error(const std::string &msg) { error_ = msg; }
    // Nodes the job works on: another job may not use them ("Node 'X' is
    // busy: block device is in use by block job: TYPE"); released when the
    // job is destroyed.
    void block_node(BlockNode *n);
    // Releases every node block_node() blocked (a job whose graph change
    // removed some of them does this in clean()).
    void unblock_nodes() { blocked_.clear(); }
    JobManager &manager() { return mgr_; }

  private:
    friend class JobManager;
    friend struct JobTxn;
    bool verb_allowed(JobVerb v, Status *st) const;
    void transition(JobStatus to);
    void enter();                       // wakes a sleeping/paused run()
    static void timer_cb(void *opaque);
    static void co_entry(void *opaque);
    static void completed_bh(void *opaque);
    void on_run_done();                 // main loop, in a coroutine other than the job's
    void finalize_one(bool success);    // commit|abort, clean, event, conclude
    void send_block_event(const char *name, bool with_error);

    JobManager &mgr_;
    std::string id_;
    JobStatus status_ = JobStatus::kUndefined;
    bool auto_finalize_, auto_dismiss_;
    int64_t speed_ = 0;
    std::unique_ptr<RateLimit> limit_;
    int64_t progress_current_ = 0, progress_total_ = 0;
    bool busy_ = false;
    int pause_count_ = 0;
    bool user_paused_ = false;
    bool paused_ = false;               // waiting in pause_point()
    bool sleeping_ = false;             // waiting in sleep_ns()
    bool cancelled_ = false, force_cancel_ = false;
    bool completed_ = false;            // run() returned
    int ret_ = 0;
    const char *io_status_ = "ok";
    std::string error_;
    Coroutine *co_ = nullptr;
    Timer timer_;
    std::vector<BlockNode *> blocked_;
    std::shared_ptr<JobTxn> txn_;
};

// Jobs that complete together: a transaction's actions with
// completion-mode=grouped. Every job is in exactly one (its own by default).
struct JobTxn {
    std::vector<Job *> jobs;
    bool aborting = false;
};

// The daemon's jobs.
class JobManager {
  public:
    using EventSink = std::function<void(const std::string &name, const nlohmann::json &data)>;
    explicit JobManager(EventSink sink);
    ~JobManager();
    JobManager(const JobManager &) = delete;
    JobManager &operator=(const JobManager &) = delete;

    // Checks a new job's id: "Invalid job ID 'X'" (node name rules: a
    // letter first, then letters, digits, '-', '.', '_'), "Job ID 'X'
    // already in use".
    Status check_new_id(const std::string &id) const;
    // Fails with QEMU's "Node 'X' is busy: block device is in use by block
    // job: TYPE" when a job has blocked n.
    Status check_node_free(const BlockNode *n) const;
    // Registers a built job: -> created. txn: join this transaction
    // (grouped completion); nullptr: a transaction of its own.
    Job *add(std::unique_ptr<Job> job, const std::shared_ptr<JobTxn> &txn = nullptr);
    Job *find(const std::string &id) const;
    // Every job, in creation order.
    std::vector<Job *> jobs() const;
    // quit / SIGTERM: force-cancels every job and runs the loop until each
    // has concluded, then dismisses them. Main loop, not from a coroutine.
    void cancel_all_sync();

    void emit(const std::string &name, const nlohmann::json &data) const
    {
        if (sink_) sink_(name, data);
    }

  private:
    friend class Job;
    void destroy(Job *job);   // null: frees it from a bottom half
    static void reap_bh(void *opaque);
    EventSink sink_;
    std::vector<std::unique_ptr<Job>> jobs_;
    std::vector<std::unique_ptr<Job>> dead_;
    BottomHalf *reap_ = nullptr;
};

} // namespace bg
