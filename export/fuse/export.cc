// The FUSE export: set-up, its queues (one per serving thread), teardown and
// counters. See export/fuse/internal.h for the parts and their threads and
// docs/fuse-export.md for the design.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "export/fuse/internal.h"
#include "util/log.h"

namespace bg {

// ---------------------------------------------------------------- queues

void FuseQueue::woken()
{
    wakeups.fetch_add(1, std::memory_order_relaxed);
    if (!base_set) {
        switches_base = coroutine_stats().switches;
        base_set = true;
    }
}

void FuseQueue::deliver(FuseRequest *req)
{
    req->replied = false;
    exp->requests_in_flight_.fetch_add(1);
    ctx->co_enter_batched(coroutine_create(&FuseExport::process_entry, req));
}

void FuseQueue::publish_counters()
{
    switches.store(coroutine_stats().switches - switches_base, std::memory_order_relaxed);
    IoBackendStats ios = ctx->io()->stats();
    io_submissions.store(ios.submissions, std::memory_order_relaxed);
    io_enters.store(ios.enters, std::memory_order_relaxed);
    io_inline.store(ios.inline_requests, std::memory_order_relaxed);
    poll_hits.store(ctx->poll_hits(), std::memory_order_relaxed);
    sleeps.store(ctx->poll_sleeps(), std::memory_order_relaxed);
}

static int64_t coarse_now_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void FuseQueue::received(const FuseRequest &req)
{
    if (!exp->burst_q_) return;
    uint32_t op = req.in().opcode;
    uint64_t bytes = 0;
    if (op == FUSE_WRITE) {
        bytes = req.payload_len;
    } else if (op == FUSE_READ) {
        fuse_read_in in;
        if (req.arg(&in)) bytes = in.size;
    }
    if (bytes < FuseExport::kBurstMinBytes) return;
    exp->burst_last_ns_.store(coarse_now_ns(), std::memory_order_relaxed);
    if (!exp->burst_active_.load(std::memory_order_relaxed)) exp->burst_wake();
}

void FuseQueue::batch_done()
{
    if (this == exp->burst_q_) exp->burst_park_if_idle(this);
}

// ---------------------------------------------------------------- set-up

Status FuseExport::start(BlockGraph &graph, const BlockExportOptions &opts, const std::vector<IoThread *> &iothreads)
{
    Status s = open_node(graph, opts);
    if (!s.ok()) return s;
    s = check_mountpoint();
    if (s.ok()) s = choose_passthrough(opts);
    if (s.ok()) s = choose_uring(opts.fuse.io_uring);
    if (!s.ok()) return s.error().prefixed("export '" + id_ + "'");
    s = mount_as(opts.fuse.allow_other);
    if (s.ok()) s = make_queues(iothreads);
    if (!s.ok()) return s.error().prefixed("export '" + id_ + "'");
    for (auto &q : queues_) {
        if (q.get() == burst_q_) q->attached = true;   // reads only while woken (burst_wake)
        else attach(q.get());
    }
    log_info("export '%s': node '%s' mounted at %s (%s, %zu queue%s)", id_.c_str(), node_->node_name().c_str(),
             mountpoint_.c_str(), writable_ ? "writable" : "read-only", serving_queues(), serving_queues() > 1 ? "s" : "");
    return {};
}

// What every export needs before its transports: the options, the node,
// its backend and the file attributes.
Status FuseExport::open_node(BlockGraph &graph, const BlockExportOptions &opts)
{
    id_ = opts.id;
    type_ = "fuse";
    mountpoint_ = opts.fuse.mountpoint;
    writable_ = opts.writable;
    growable_ = opts.fuse.growable;
    main_ctx_ = AioContext::current();
    clock_gettime(CLOCK_REALTIME, &start_time_);

    node_ = graph.find(opts.node_name);
    if (!node_) return make_error(ENOENT, "export '%s': no node named '%s'", id_.c_str(), opts.node_name.c_str());
    BlockPerm perm = kPermConsistentRead | (writable_ ? kPermWrite | kPermResize : 0);
    // Others may read and resize (QMP block_resize on an exported node, as
    // in QEMU); a writable export shares no writes.
    BlockPerm shared = kPermConsistentRead | kPermWriteUnchanged | kPermResize | (writable_ ? 0 : kPermWrite);
    auto b = BlockBackend::create(node_, perm, shared, "export '" + id_ + "'");
    if (!b.ok()) return b.error().prefixed("export '" + id_ + "'");
    blk_ = std::move(b.value());
    blk_->set_writethrough(opts.writethrough);
    mode_ = S_IFREG | S_IRUSR | (writable_ ? S_IWUSR : 0);
    uid_ = getuid();
    gid_ = getgid();
    return {};
}

// A clone of the session's /dev/fuse descriptor (FUSE_DEV_IOC_CLONE): a
// reader of the same requests with its own processing queue.
static Result<int> clone_fuse_fd(int master)
{
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) return errno_error(errno, "/dev/fuse");
    uint32_t src = static_cast<uint32_t>(master);
    if (ioctl(fd, FUSE_DEV_IOC_CLONE, &src) != 0) {
        int e = errno;
        close(fd);
        return errno_error(e, "cloning the /dev/fuse descriptor");
    }
    return fd;
}

// The burst queue (see internal.h) exists when the machine has more than
// one CPU, unless BLOCKGRAPH_FUSE_BURST=0.
static bool want_burst_queue()
{
    const char *env = getenv("BLOCKGRAPH_FUSE_BURST");
    return !(env && strcmp(env, "0") == 0) && get_nprocs() > 1;
}

// One queue on the session's descriptor in the main loop, or one per
// iothread, each on its own clone of it (FUSE_DEV_IOC_CLONE). The kernel
// ring queues (when wanted) are spread round-robin over the queues.
Status FuseExport::make_queues(const std::vector<IoThread *> &iothreads)
{
    int master = session_fd();
    auto add = [&](int fd, bool owns, AioContext *ctx, IoThread *t) {
        auto q = std::make_unique<FuseQueue>();
        q->exp = this;
        q->fd = fd;
        q->owns_fd = owns;
        q->ctx = ctx;
        q->thread = t;
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        queues_.push_back(std::move(q));
    };
    if (iothreads.empty()) add(master, false, main_ctx_, nullptr);
    for (IoThread *t : iothreads) {
        auto fd = clone_fuse_fd(master);
        if (!fd.ok()) return fd.error();
        add(fd.value(), true, t->ctx(), t);
    }
    if (uring_why_.empty()) {
        for (unsigned qid = 0; qid < uring_queues_; qid++)
            queues_[qid % queues_.size()]->ring_qids.push_back(static_cast<uint16_t>(qid));
    }
    // The burst queue (see internal.h) is the last one: it serves no ring.
    if (iothreads.empty() && !uring_why_.empty() && want_burst_queue()) {
        auto t = IoThread::create("export-" + id_ + "-burst");
        if (!t.ok()) return t.error();
        auto fd = clone_fuse_fd(master);
        if (!fd.ok()) return fd.error();
        burst_thread_ = std::move(t.value());
        add(fd.value(), true, burst_thread_->ctx(), burst_thread_.get());
        burst_q_ = queues_.back().get();
    }
    for (auto &q : queues_) {
        q->dev = fuse_dev_transport(q.get());
        if (!q->ring_qids.empty()) q->ring = fuse_ring_transport(q.get());
    }
    return {};
}

// A big request arrived (any thread): the burst queue starts reading, in its
// thread. Counted in flight so that shutdown waits for the start.
void FuseExport::burst_wake()
{
    if (burst_active_.exchange(true) || halted()) return;
    requests_in_flight_.fetch_add(1);
    burst_q_->ctx->schedule_oneshot(&FuseExport::burst_start, this);
}

void FuseExport::burst_start(void *opaque)
{
    auto *x = static_cast<FuseExport *>(opaque);
    if (!x->halted()) {
        x->burst_q_->dev->start();
        x->burst_starts_.fetch_add(1, std::memory_order_relaxed);
    }
    x->requests_in_flight_.fetch_sub(1);   // the last touch of the export
}

// In the burst queue's thread, after a batch: park when idle. A big request
// that comes in between wakes it again.
void FuseExport::burst_park_if_idle(FuseQueue *q)
{
    if (coarse_now_ns() - burst_last_ns_.load(std::memory_order_relaxed) < kBurstIdleNs) return;
    q->dev->stop();
    burst_active_.store(false);
}

// Runs fn(q) in q's thread and waits for it.
static void run_in_queue(FuseQueue *q, void (*fn)(void *))
{
    if (q->thread) q->thread->run_sync(fn, q);
    else fn(q);
}

void FuseExport::attach(FuseQueue *q)
{
    run_in_queue(q, [](void *p) { static_cast<FuseQueue *>(p)->dev->start(); });
    q->attached = true;
}

// No more requests from any transport of q. Replies prepared so far go out
// now; those of requests still running go out at once when they reply.
void FuseExport::detach(FuseQueue *q)
{
    if (!q->attached.exchange(false)) return;
    run_in_queue(q, [](void *p) {
        auto *qq = static_cast<FuseQueue *>(p);
        qq->dev->stop();
        if (qq->ring) qq->ring->stop();
    });
}

// After the reply to INIT: the kernel has set up its side of the rings, so
// each queue registers its ring entries in its own thread (completions go
// to the submitter). Counted in flight so that shutdown waits for them.
void FuseExport::start_rings()
{
    for (auto &q : queues_) {
        if (!q->ring) continue;
        requests_in_flight_.fetch_add(1);
        q->ctx->schedule_oneshot(&FuseExport::start_ring, q.get());
    }
}

void FuseExport::start_ring(void *opaque)
{
    auto *q = static_cast<FuseQueue *>(opaque);
    FuseExport *x = q->exp;
    if (!x->halted()) q->ring->start();
    x->requests_in_flight_.fetch_sub(1);   // the last touch of the export
}

// FUSE-over-io_uring is used when the kernel has it (Linux >= 6.14 built
// with CONFIG_FUSE_IO_URING) and enabled (module parameter
// fuse.enable_uring=Y, off by default), unless io-uring=off (or, with
// auto, BLOCKGRAPH_FUSE_URING=0); io-uring=on fails the export where the
// kernel does not have it enabled. Otherwise, or if registering the ring
// entries fails, requests are read from /dev/fuse, which also carries what
// the kernel never sends through a ring (INIT, interrupts).
Status FuseExport::choose_uring(OnOffAuto want)
{
    auto no = [&](const char *why) -> Status {
        uring_why_ = why;
        if (want == OnOffAuto::kOn) return make_error(ENOTSUP, "io-uring=on: %s", why);
        return {};
    };
    if (want == OnOffAuto::kOff) return no("io-uring=off");
    const char *env = getenv("BLOCKGRAPH_FUSE_URING");
    if (want == OnOffAuto::kAuto && env && strcmp(env, "0") == 0) return no("disabled by BLOCKGRAPH_FUSE_URING=0");
    std::ifstream f("/sys/module/fuse/parameters/enable_uring");
    std::string v;
    if (!(f >> v)) return no("the kernel has no FUSE-over-io_uring");
    if (v != "Y" && v != "1") return no("disabled in the kernel: fuse.enable_uring=N");
    // One kernel ring queue per possible CPU, spread over our queues.
    unsigned n = 0;
    std::ifstream pf("/sys/devices/system/cpu/possible");
    std::string range;
    if (pf >> range) {
        size_t dash = range.find('-');
        unsigned hi = static_cast<unsigned>(atoi(range.c_str() + (dash == std::string::npos ? 0 : dash + 1)));
        if (range.find(',') == std::string::npos) n = hi + 1;
    }
    if (n == 0) n = static_cast<unsigned>(get_nprocs_conf());
    uring_queues_ = n;
    return {};
}

// ---------------------------------------------------------------- teardown

void FuseExport::shutdown()
{
    if (shut_down_) return;
    shut_down_ = true;
    halted_ = true;
    for (auto &q : queues_) detach(q.get());
    // Let every request that was received finish (its reply goes to a
    // descriptor we still hold, its buffers back to a transport that still
    // exists). The timer re-checks requests finishing in other threads.
    // In a coroutine (a monitor command) the loop runs on meanwhile.
    while (requests_in_flight_.load() > 0) {
        if (in_coroutine()) {
            co_sleep_ns(1000 * 1000);
            continue;
        }
        Timer t(main_ctx_, [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        main_ctx_->iterate(true);
    }
    if (blk_) {
        // Finish what is in flight, then make it stable.
        blk_->drain();
        if (writable_) {
            int r = run_in_coroutine([this] { return blk_->co_flush(); });
            if (r < 0) log_error("export '%s': flush failed: %s", id_.c_str(), strerror(-r));
        }
    }
    close_backing();
    // Transports give back what they hold in the kernel (the kernel cancels
    // ring entries) before the descriptors close and the mount goes. Their
    // buffers stay until the queues are freed.
    for (auto &q : queues_) {
        q->dev->close();
        if (q->ring) q->ring->close();
    }
    for (auto &q : queues_) {
        if (q->owns_fd && q->fd >= 0) close(q->fd);
        q->fd = -1;
    }
    unmount();
    blk_.reset();
    burst_thread_.reset();
    log_info("export '%s': unmounted %s", id_.c_str(), mountpoint_.c_str());
}

FuseExport::~FuseExport() { shutdown(); }

void FuseExport::unmounted_externally()
{
    halted_ = true;
    if (gone_scheduled_.exchange(true)) return;
    // Finish in the main loop: shutdown() detaches handlers and drains.
    main_ctx_->schedule_oneshot(
        [](void *p) {
            auto *e = static_cast<FuseExport *>(p);
            log_info("export '%s': %s was unmounted", e->id().c_str(), e->mountpoint_.c_str());
            e->mounted_ = false;   // nothing left to unmount
            e->shutdown();
            if (e->on_gone_) e->on_gone_(e);
        },
        this);
}

// ---------------------------------------------------------------- stats

ExportStats FuseExport::stats() const
{
    ExportStats s;
    for (auto &q : queues_) {
        for (int k = 0; k < 8; k++) s.requests[k] += q->requests[k].load(std::memory_order_relaxed);
        s.bytes_read += q->bytes_read.load(std::memory_order_relaxed);
        s.bytes_written += q->bytes_written.load(std::memory_order_relaxed);
        s.errors += q->errors.load(std::memory_order_relaxed);
        s.coroutine_switches += q->switches.load(std::memory_order_relaxed);
        s.io_submissions += q->io_submissions.load(std::memory_order_relaxed);
        s.io_enters += q->io_enters.load(std::memory_order_relaxed);
        s.fuse_reads += q->fuse_reads.load(std::memory_order_relaxed);
        s.ring_fetches += q->ring_fetches.load(std::memory_order_relaxed);
        s.ring_enters += q->ring_enters.load(std::memory_order_relaxed);
        s.wakeups += q->wakeups.load(std::memory_order_relaxed);
        s.io_inline += q->io_inline.load(std::memory_order_relaxed);
        s.loop_poll_hits += q->poll_hits.load(std::memory_order_relaxed);
        s.loop_sleeps += q->sleeps.load(std::memory_order_relaxed);
    }
    return s;
}

// The "fuse-over-io_uring:" line of stats_text().
std::string FuseExport::transport_text() const
{
    uint64_t fetches = 0;
    int error = 0;
    for (auto &q : queues_) {
        fetches += q->ring_fetches.load(std::memory_order_relaxed);
        if (!error) error = q->ring_error.load(std::memory_order_relaxed);
    }
    std::ostringstream o;
    o << "  fuse-over-io_uring: ";
    if (fetches)
        o << "on (" << uring_queues_ << " kernel queues x " << kFuseRingDepth << " entries)\n";
    else if (!uring_why_.empty())
        o << "off (" << uring_why_ << "; requests read from /dev/fuse)\n";
    else if (error)
        o << "off (the kernel refused the ring entries: " << strerror(error) << "; requests read from /dev/fuse)\n";
    else if (uring_on_)
        o << "registered, no request through it yet\n";
    else
        o << "wanted, not negotiated yet\n";
    return o.str();
}

std::string FuseExport::stats_text() const
{
    ExportStats s = stats();
    uint64_t total = 0;
    for (int k = 0; k < 8; k++) total += s.requests[k];
    uint64_t rw = s.requests[ExportStats::kRead] + s.requests[ExportStats::kWrite];
    std::ostringstream o;
    size_t nq = serving_queues();   // the burst queue is shown on its own line
    o << "export '" << id_ << "' (fuse, " << mountpoint_ << ", " << nq << " queue" << (nq > 1 ? "s" : "")
      << (burst_q_ ? " + burst" : "") << ", transport "
      << (s.ring_fetches ? "io_uring" : "/dev/fuse read/writev") << (passthrough_used_ ? ", passthrough" : "")
      << "):\n";
    o << "  requests:";
    for (int k = 0; k < 8; k++) o << " " << ExportStats::kind_name(k) << "=" << s.requests[k];
    o << "\n  bytes read=" << s.bytes_read << " written=" << s.bytes_written << " errors=" << s.errors << "\n";
    o << "  fuse reads=" << s.fuse_reads + s.ring_fetches << " wakeups=" << s.wakeups
      << " coroutine switches=" << s.coroutine_switches << " io_uring submissions=" << s.io_submissions
      << " io_uring enters=" << s.io_enters + s.ring_enters << " (of which fuse ring fetches=" << s.ring_fetches
      << " fuse ring enters=" << s.ring_enters << ")\n";
    o << "  serving threads: inline page-cache I/O=" << s.io_inline << " loop waits ended by polling="
      << s.loop_poll_hits << " loop sleeps=" << s.loop_sleeps << "\n";
    if (rw) {
        char buf[160];
        snprintf(buf, sizeof(buf), "  per read/write request: %.2f coroutine switches, %.2f io_uring enters\n",
                 static_cast<double>(s.coroutine_switches) / static_cast<double>(total ? total : 1),
                 static_cast<double>(s.io_enters + s.ring_enters) / static_cast<double>(rw));
        o << buf;
    }
    if (burst_q_) {
        o << "  burst queue: woken " << burst_starts_.load(std::memory_order_relaxed) << " times, "
          << burst_q_->fuse_reads.load(std::memory_order_relaxed) << " requests read, "
          << (burst_active_.load() ? "reading" : "parked") << "\n";
    }
    o << transport_text() << passthrough_text();
    return o.str();
}

// ---------------------------------------------------------------- creation

Result<std::unique_ptr<FuseExport>> FuseExport::create_unmounted(BlockGraph &graph, const BlockExportOptions &opts,
                                                               const TransportFactory &make_transport)
{
    std::unique_ptr<FuseExport> exp(new FuseExport);
    Status s = exp->open_node(graph, opts);
    if (!s.ok()) {
        exp->shutdown();
        return s.error();
    }
    exp->passthrough_why_ = "not mounted";
    exp->uring_why_ = "not mounted";
    exp->allow_other_ = opts.fuse.allow_other == OnOffAuto::kOn;
    auto q = std::make_unique<FuseQueue>();
    q->exp = exp.get();
    q->ctx = exp->main_ctx_;
    q->dev = make_transport(q.get());
    exp->queues_.push_back(std::move(q));
    exp->attach(exp->queues_.back().get());
    return exp;
}

Result<std::unique_ptr<BlockExport>> fuse_export_create(BlockGraph &graph, const BlockExportOptions &opts,
                                                        const std::vector<IoThread *> &iothreads,
                                                        ExportGoneFn on_gone)
{
    std::unique_ptr<FuseExport> exp(new FuseExport);
    exp->on_gone_ = std::move(on_gone);
    Status s = exp->start(graph, opts, iothreads);
    if (!s.ok()) {
        exp->shutdown();
        return s.error();
    }
    return std::unique_ptr<BlockExport>(std::move(exp));
}

} // namespace bg
