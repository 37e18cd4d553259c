// The FUSE export's parts (docs/fuse-export.md), shared by its files:
//
//   export/fuse/uapi.h       the kernel ABI
//   export/fuse/export.cc    set-up, queues, teardown, counters
//   export/fuse/mount.cc     mountpoint checks, mount and unmount (libfuse)
//   export/fuse/passthrough.cc  kernel passthrough: choice and backing file
//   export/fuse/ops.cc       one request: dispatch, the opcode handlers, the reply
//   export/fuse/dev.cc       transport: requests read from /dev/fuse
//   export/fuse/uring.cc     transport: FUSE-over-io_uring
//
// A request arrives through a FuseTransport, runs in its own coroutine in
// the thread of the queue that received it, and leaves through the same
// transport; nothing between those two ends knows which transport it is.
//
// Threading: one FuseQueue per serving thread (the main loop without
// iothreads). A request, its queue's transports and its queue's counters are
// touched only in that thread; FuseExport's state is set up in the main loop
// before any request and read-only afterwards unless stated.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "export/fuse.h"
#include "export/fuse/uapi.h"
#include "util/aio.h"
#include "util/coroutine-lock.h"
#include "util/io.h"
#include "util/iothread.h"

namespace bg {

constexpr size_t kFuseHeaderArea = sizeof(fuse_in_header) + sizeof(fuse_write_in);  // 80
constexpr uint32_t kFuseMaxWrite = 1 << 20;                 // bytes per READ/WRITE request
constexpr size_t kFusePayloadSize = kFuseMaxWrite + 4096;   // room for any request's arguments
constexpr unsigned kFuseRingDepth = 32;                     // ring entries per kernel ring queue

class FuseExport;
class FuseTransport;
struct FuseQueue;

// Name of an opcode for messages ("other" for those we do not name).
const char *fuse_opcode_name(uint32_t op);

// A request and the buffers it owns until its transport takes it back.
struct FuseRequest {
    FuseQueue *q = nullptr;
    FuseTransport *transport = nullptr;   // carried the request; sends its reply
    // The in-header (the /dev/fuse transport reads the first argument bytes
    // after it, up to fuse_write_in, so that WRITE data lands at payload[0]).
    alignas(64) uint8_t hdr[kFuseHeaderArea];
    // The page-aligned payload buffer: WRITE data on arrival, READ data on
    // reply.
    AlignedBuf payload;
    size_t payload_len = 0;               // bytes of payload the request brought
    // The argument bytes after the in-header, in at most two pieces (set by
    // the transport on arrival).
    const uint8_t *args[2] = {};
    size_t args_len[2] = {};
    bool replied = false;                 // a reply was sent
    FuseRequest *next = nullptr;          // free-list link of the transport

    FuseRequest() = default;
    FuseRequest(const FuseRequest &) = delete;
    FuseRequest &operator=(const FuseRequest &) = delete;

    const fuse_in_header &in() const { return *reinterpret_cast<const fuse_in_header *>(hdr); }
    // Copies the argument bytes [off, off+n) into dst; false if the request
    // is too short.
    bool arg(size_t off, void *dst, size_t n) const
    {
        if (off + n > args_len[0] + args_len[1]) return false;
        auto *d = static_cast<uint8_t *>(dst);
        if (off < args_len[0]) {
            size_t k = std::min(n, args_len[0] - off);
            memcpy(d, args[0] + off, k);
            d += k;
            n -= k;
            off = 0;
        } else {
            off -= args_len[0];
        }
        if (n) memcpy(d, args[1] + off, n);
        return true;
    }
    template <typename T>
    bool arg(T *out) const { return arg(0, out, sizeof(T)); }
};

// How requests reach a queue and how their replies leave. Each queue has a
// /dev/fuse transport and, when FUSE-over-io_uring is used, a ring
// transport. Every call is made in the queue's thread unless stated.
class FuseTransport {
  public:
    virtual ~FuseTransport() = default;
    // Starts taking requests: each goes to FuseQueue::deliver().
    virtual void start() = 0;
    // Stops taking requests; replies of requests still running go out at
    // once from send(). Safe without start().
    virtual void stop() = 0;
    // Sends req's reply: the header oh, then len bytes at data (len may be
    // 0). At most once per request, from its coroutine. Never fails: a
    // reply the kernel no longer wants is dropped.
    virtual void send(FuseRequest *req, const fuse_out_header &oh, const void *data, size_t len) = 0;
    // req is finished, replied to or not (FORGET and INTERRUPT expect no
    // reply): the transport takes it back. The last touch of req.
    virtual void release(FuseRequest *req) = 0;
    // Gives back what the transport holds in the kernel, before the
    // /dev/fuse descriptor closes. Main thread, after stop() and once no
    // request is in flight.
    virtual void close() {}
};

// export/fuse/dev.cc and export/fuse/uring.cc.
std::unique_ptr<FuseTransport> fuse_dev_transport(FuseQueue *q);
// The ring transport for the kernel ring queues q->ring_qids.
std::unique_ptr<FuseTransport> fuse_ring_transport(FuseQueue *q);

// One serving thread's share of the export.
struct FuseQueue {
    FuseExport *exp = nullptr;
    int fd = -1;                    // its /dev/fuse descriptor
    bool owns_fd = false;
    AioContext *ctx = nullptr;
    IoThread *thread = nullptr;     // nullptr: main loop
    std::atomic<bool> attached{false};
    std::unique_ptr<FuseTransport> dev;    // requests read from /dev/fuse
    std::unique_ptr<FuseTransport> ring;   // FUSE-over-io_uring, or nullptr
    std::vector<uint16_t> ring_qids;       // kernel ring queues served here

    // Counters (written by the queue's thread, read by anyone).
    std::atomic<uint64_t> requests[8] = {};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, errors{0}, fuse_reads{0}, wakeups{0};
    std::atomic<uint64_t> ring_fetches{0}, ring_enters{0}, ring_dead{0};
    std::atomic<int> ring_error{0};        // errno of the first ring entry the kernel refused
    std::atomic<uint64_t> switches{0}, io_submissions{0}, io_enters{0}, io_inline{0}, poll_hits{0}, sleeps{0};
    uint64_t switches_base = 0;
    bool base_set = false;

    // A transport was woken to look for requests.
    void woken();
    // Starts a request the transport received: one coroutine per request,
    // entered in the loop's batch after the fd handlers (util/aio.h).
    void deliver(FuseRequest *req);
    // Publishes the thread's counters for stats(); after each wake-up.
    void publish_counters();
    // The /dev/fuse transport read req (any queue): a big READ or WRITE
    // wakes the burst queue (FuseExport::burst_*).
    void received(const FuseRequest &req);
    // After a wake-up's batch of reads: the burst queue parks itself when
    // no big request came for a while.
    void batch_done();
};

class FuseExport final : public BlockExport {
  public:
    using TransportFactory = std::function<std::unique_ptr<FuseTransport>(FuseQueue *)>;
    // An export of opts.node_name that mounts nothing: one queue in the
    // current thread whose only transport is make_transport's (no
    // passthrough, no ring). For tests that play the kernel
    // (tests/fuzz/fuzz-fuse.cc); production exports come from
    // fuse_export_create().
    static Result<std::unique_ptr<FuseExport>> create_unmounted(BlockGraph &graph, const BlockExportOptions &opts,
                                                                const TransportFactory &make_transport);
    ~FuseExport() override;
    Status start(BlockGraph &graph, const BlockExportOptions &opts, const std::vector<IoThread *> &iothreads);
    void shutdown() override;
    ExportStats stats() const override;
    std::string stats_text() const override;
    bool bypasses_graph() const override { return backing_fd_ >= 0; }
    BlockNode *node() const override { return blk_ ? blk_->node() : nullptr; }

    // For the transports.
    bool halted() const { return halted_.load(std::memory_order_relaxed); }
    // A transport found the mount gone (ENODEV) or broken: the export shuts
    // down from the main loop and tells its owner. Any thread.
    void unmounted_externally();

    ExportGoneFn on_gone_;

  private:
    friend struct FuseQueue;
    // mount.cc
    Status check_mountpoint();
    Status mount(bool allow_other);
    Status mount_as(OnOffAuto allow_other);
    void unmount();
    int session_fd() const;
    // export.cc
    Status open_node(BlockGraph &graph, const BlockExportOptions &opts);
    Status make_queues(const std::vector<IoThread *> &iothreads);
    void attach(FuseQueue *q);
    void detach(FuseQueue *q);
    static void start_ring(void *opaque);
    void start_rings();
    Status choose_uring(OnOffAuto want);
    std::string transport_text() const;
    // Queues that always read (the burst queue is not one of them).
    size_t serving_queues() const { return queues_.size() - (burst_q_ ? 1 : 0); }
    void burst_wake();
    void burst_park_if_idle(FuseQueue *q);
    static void burst_start(void *opaque);
    // passthrough.cc
    Status choose_passthrough(const BlockExportOptions &opts);
    int passthrough_backing_id(FuseQueue *q);
    void close_backing();
    void refresh_length_if_passthrough();
    std::string passthrough_text() const;
    // ops.cc
    struct Reply;
    static void process_entry(void *opaque);
    void process(FuseRequest *req);
    int dispatch(FuseRequest *req, Reply *rep);
    void reply(FuseRequest *req, int ret, const void *data, size_t len);
    int handle_init(FuseRequest *req, Reply *rep);
    void negotiate_extensions(const fuse_init_in &in, fuse_init_out *out);
    int handle_getattr(FuseRequest *req, Reply *rep);
    int handle_setattr(FuseRequest *req, Reply *rep);
    int handle_open(FuseRequest *req, Reply *rep);
    int handle_read(FuseRequest *req, Reply *rep);
    int handle_write(FuseRequest *req, Reply *rep);
    int handle_fallocate(FuseRequest *req);
    int handle_lseek(FuseRequest *req, Reply *rep);
    int handle_statfs(Reply *rep);
    void fill_attr(fuse_attr *a);
    int co_grow(int64_t new_size, PreallocMode prealloc);
    int co_write_zeroes(int64_t off, int64_t end, ReqFlags flags);

    std::string mountpoint_;
    bool writable_ = false;
    bool growable_ = false;
    bool allow_other_ = false;
    std::unique_ptr<BlockBackend> blk_;
    // Serialises growing the node: requests run in parallel, and two writes
    // past EOF that both saw the old length must not shrink the node under
    // each other's data (truncate is exact).
    CoMutex grow_lock_;
    BlockNode *node_ = nullptr;
    struct fuse_session *se_ = nullptr;
    bool mounted_ = false;
    std::vector<std::unique_ptr<FuseQueue>> queues_;
    std::atomic<bool> halted_{false};
    std::atomic<bool> gone_scheduled_{false};
    // Request coroutines that have not finished (received, not yet replied
    // and taken back by their transport), plus ring start-ups scheduled.
    // shutdown() waits for zero before it drains, closes the descriptors and
    // frees the queues; the block layer's in-flight counters do not cover a
    // request between two block calls or after its last one.
    std::atomic<uint64_t> requests_in_flight_{0};
    bool shut_down_ = false;
    AioContext *main_ctx_ = nullptr;
    // File attributes shown to the kernel (SETATTR may change mode/uid/gid).
    std::mutex attr_lock_;
    uint32_t mode_ = 0;
    uint32_t uid_ = 0, gid_ = 0;
    struct timespec start_time_ {};
    uint32_t proto_minor_ = 0;

    // Kernel passthrough (docs/fuse-export.md): when the node's bytes are a
    // host file's 1:1 (BlockNode::passthrough_fd) and passthrough keeps every
    // export semantic, READ and WRITE go from the kernel to that file
    // without us. backing_fd_ is our duplicate of the node's descriptor
    // (-1 = not eligible; the reason is in passthrough_why_);
    // passthrough_on_ is set once the kernel agreed at INIT; backing_id_ is
    // registered at the first OPEN (-1: not yet, -2: registration failed,
    // requests are served by us).
    std::string passthrough_why_;
    std::string passthrough_file_;   // for messages
    bool passthrough_on_ = false;
    std::mutex backing_lock_;
    int backing_fd_ = -1;
    std::atomic<int> backing_id_{-1};
    int backing_queue_fd_ = -1;
    std::atomic<uint64_t> passthrough_opens_{0};
    std::atomic<bool> passthrough_used_{false};   // a backing id was registered

    // FUSE-over-io_uring (docs/fuse-export.md): uring_why_ is why it is not
    // used ("" = wanted); uring_on_ once the kernel agreed at INIT.
    std::string uring_why_;
    std::atomic<bool> uring_on_{false};
    unsigned uring_queues_ = 0;     // kernel ring queues (possible CPUs)

    // The burst queue (docs/fuse-export.md, "The burst queue"): without
    // iothreads, requests are served in the main loop, one thread, which
    // alone copies every byte the kernel hands over on /dev/fuse. While big
    // READs and WRITEs arrive (sequential copies), a second thread of the
    // export reads requests too, on its own clone of the descriptor, so
    // that those copies run on two CPUs; it stops reading (parks) once no
    // big request came for kBurstIdleNs, so small random requests are
    // served by the main loop alone (a second reader costs them latency).
    // burst_q_ is in queues_; its transport starts only while active.
    static constexpr uint32_t kBurstMinBytes = 256 * 1024;
    static constexpr int64_t kBurstIdleNs = 100 * 1000 * 1000;
    std::unique_ptr<IoThread> burst_thread_;
    FuseQueue *burst_q_ = nullptr;
    std::atomic<bool> burst_active_{false};
    std::atomic<int64_t> burst_last_ns_{0};   // CLOCK_MONOTONIC_COARSE of the last big request
    std::atomic<uint64_t> burst_starts_{0};
};

} // namespace bg
