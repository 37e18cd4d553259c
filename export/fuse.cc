// The FUSE export.
//
// libfuse is used only to mount and unmount (fusermount3 semantics); requests
// are read from /dev/fuse and answered by this file. Each request is read
// into a buffer it owns (an 80-byte header area plus a payload buffer, read
// with one readv so that WRITE data lands page-aligned in the payload) and
// is processed in its own coroutine, entered once and yielding only while
// block I/O is in flight. Nothing a request uses is shared with the next
// read from /dev/fuse, so a yield can never see its data overwritten.
//
// Threading: one queue per serving thread. Without iothreads the export's
// one queue runs in the main loop; with N iothreads the /dev/fuse fd is
// cloned (FUSE_DEV_IOC_CLONE) once per thread and each clone is read only by
// its thread. A request's coroutine stays on the thread that read it; the
// block layer below is safe for requests from several threads (see
// docs/fuse-export.md).
#include "export/fuse.h"

#include <fcntl.h>
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "util/coroutine.h"
#include "util/io.h"
#include "util/log.h"

#ifndef FUSE_DEV_IOC_CLONE
#define FUSE_DEV_IOC_CLONE _IOR(229, 0, uint32_t)
#endif

// Kernel FUSE passthrough (protocol 7.40, Linux 6.9). The system headers may
// predate it, so the few values are spelled out here from the kernel's uapi.
namespace bg::fuse_uapi {
constexpr uint64_t kInitPassthrough = 1ULL << 37;     // FUSE_PASSTHROUGH (in flags2 with FUSE_INIT_EXT)
constexpr uint32_t kInitExt = 1U << 30;               // FUSE_INIT_EXT
constexpr uint32_t kOpenPassthrough = 1U << 7;        // FOPEN_PASSTHROUGH
constexpr uint32_t kPassthroughMinor = 40;
struct BackingMap {                                   // struct fuse_backing_map
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};
// The fields of fuse_init_out after flags2 and of fuse_open_out after open_flags.
struct InitOutTail {
    uint32_t max_stack_depth;
};
struct OpenOut {                                      // struct fuse_open_out (7.40)
    uint64_t fh;
    uint32_t open_flags;
    int32_t backing_id;
};
static_assert(sizeof(OpenOut) == sizeof(fuse_open_out));

// FUSE-over-io_uring (protocol 7.42, Linux 6.14).
constexpr uint64_t kInitOverIoUring = 1ULL << 41;     // FUSE_OVER_IO_URING (flags2)
constexpr uint32_t kUringCmdRegister = 1;             // FUSE_IO_URING_CMD_REGISTER
constexpr uint32_t kUringCmdCommitAndFetch = 2;       // FUSE_IO_URING_CMD_COMMIT_AND_FETCH
struct UringEntInOut {                                // struct fuse_uring_ent_in_out
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};
struct UringReqHeader {                               // struct fuse_uring_req_header
    uint8_t in_out[128];                              // fuse_in_header in, fuse_out_header out
    uint8_t op_in[128];                               // the request's first argument
    UringEntInOut ent;
};
struct UringCmdReq {                                  // struct fuse_uring_cmd_req, in the SQE's cmd area
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};
} // namespace bg::fuse_uapi
#define BG_FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, bg::fuse_uapi::BackingMap)
#define BG_FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

namespace bg {

namespace {

constexpr size_t kHeaderArea = sizeof(fuse_in_header) + sizeof(fuse_write_in);  // 80
constexpr uint32_t kMaxWrite = 1 << 20;        // bytes per READ/WRITE request
constexpr size_t kPayloadSize = kMaxWrite + 4096;   // room for any request's arguments
constexpr int kMaxBatch = 64;                  // requests read per wake-up
constexpr int kMaxPooled = 128;                // free requests (1 MiB each) a queue keeps
constexpr uint32_t kOurMinor = 31;             // protocol features we rely on

// Requests we care about whose values exist in every kernel we support.
const char *opcode_name(uint32_t op)
{
    switch (op) {
    case FUSE_INIT: return "INIT";
    case FUSE_GETATTR: return "GETATTR";
    case FUSE_SETATTR: return "SETATTR";
    case FUSE_OPEN: return "OPEN";
    case FUSE_READ: return "READ";
    case FUSE_WRITE: return "WRITE";
    case FUSE_FLUSH: return "FLUSH";
    case FUSE_FSYNC: return "FSYNC";
    case FUSE_RELEASE: return "RELEASE";
    default: return "other";
    }
}

} // namespace

class FuseExport;

// A request and the buffers it owns. Pooled per queue.
struct FuseRequest {
    struct FuseQueue *q = nullptr;
    alignas(64) uint8_t hdr[kHeaderArea];
    AlignedBuf payload;
    size_t len = 0;               // bytes read from /dev/fuse
    FuseRequest *next = nullptr;  // pool link
    // FUSE-over-io_uring: the request is an entry registered with the
    // kernel for ring queue qid; the kernel writes the header (copied into
    // hdr when a request arrives), the first argument (op_in) and the
    // payload, and takes the reply from the same places. nullptr: a
    // request read from /dev/fuse.
    fuse_uapi::UringReqHeader *uh = nullptr;
    uint16_t qid = 0;
    bool ring_dead = false;       // the kernel failed or cancelled the entry
    struct iovec reg_iov[2] = {};
    ~FuseRequest() { delete uh; }

    const fuse_in_header &in() const { return *reinterpret_cast<const fuse_in_header *>(hdr); }
    // Copies the argument bytes [off, off+n) after the in-header into dst;
    // returns false if the request is too short.
    bool arg(size_t off, void *dst, size_t n) const
    {
        if (uh) {
            if (off + n > sizeof(uh->op_in)) return false;
            memcpy(dst, uh->op_in + off, n);
            return true;
        }
        size_t start = sizeof(fuse_in_header) + off;
        if (start + n > len) return false;
        auto *d = static_cast<uint8_t *>(dst);
        for (size_t i = 0; i < n; i++) {
            size_t p = start + i;
            d[i] = p < kHeaderArea ? hdr[p] : payload[p - kHeaderArea];
        }
        return true;
    }
    template <typename T>
    bool arg(T *out) const { return arg(0, out, sizeof(T)); }
};

struct FuseQueue {
    FuseExport *exp = nullptr;
    int fd = -1;
    bool owns_fd = false;
    AioContext *ctx = nullptr;
    IoThread *thread = nullptr;     // nullptr: main loop
    FuseRequest *pool = nullptr;    // free requests (touched only by this queue's thread)
    int pooled = 0;                 // entries in pool
    std::atomic<bool> attached{false};

    // FUSE-over-io_uring: this queue's ring (SQE128) and its entries, for
    // the kernel ring queues (one per possible CPU) given to it.
    struct io_uring ring;
    bool ring_ok = false;
    std::vector<FuseRequest *> ring_entries;
    std::vector<uint16_t> ring_qids;
    std::atomic<uint64_t> ring_fetches{0}, ring_enters{0}, ring_dead{0};

    // Counters (written by the queue's thread, read by anyone).
    std::atomic<uint64_t> requests[8] = {};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, errors{0}, fuse_reads{0}, wakeups{0};
    std::atomic<uint64_t> switches{0}, io_submissions{0}, io_enters{0}, io_inline{0}, poll_hits{0}, sleeps{0};
    uint64_t switches_base = 0;
    bool base_set = false;

    FuseRequest *get()
    {
        FuseRequest *r = pool;
        if (r) {
            pool = r->next;
            pooled--;
            return r;
        }
        r = new FuseRequest;
        r->q = this;
        r->payload = aligned_alloc_buf(4096, kPayloadSize);
        return r;
    }
    // Keeps at most kMaxPooled: a burst of max_background (65535) requests
    // must not pin 1 MiB buffers for each of them for ever.
    void put(FuseRequest *r)
    {
        if (pooled >= kMaxPooled) {
            delete r;
            return;
        }
        r->next = pool;
        pool = r;
        pooled++;
    }
    ~FuseQueue()
    {
        while (FuseRequest *r = pool) {
            pool = r->next;
            delete r;
        }
        if (ring_ok) io_uring_queue_exit(&ring);
        for (FuseRequest *r : ring_entries) delete r;
    }
};

class FuseExport final : public BlockExport {
  public:
    ~FuseExport() override;
    Status start(BlockGraph &graph, const BlockExportOptions &opts, const std::vector<IoThread *> &iothreads);
    void shutdown() override;
    ExportStats stats() const override;
    std::string stats_text() const override;

    ExportGoneFn on_gone_;

  private:
    friend struct FuseQueue;
    Status check_mountpoint();
    Status mount(bool allow_other);
    void attach(FuseQueue *q);
    void detach(FuseQueue *q);
    static void on_readable(void *opaque);
    void read_requests(FuseQueue *q);
    static void process_entry(void *opaque);
    void process(FuseRequest *req);
    void reply(FuseRequest *req, int err, const void *data = nullptr, size_t len = 0,
               const void *data2 = nullptr, size_t len2 = 0);
    void handle_init(FuseRequest *req);
    void handle_getattr(FuseRequest *req);
    void handle_setattr(FuseRequest *req);
    void handle_open(FuseRequest *req);
    void handle_read(FuseRequest *req);
    void handle_write(FuseRequest *req);
    void handle_fallocate(FuseRequest *req);
    void handle_lseek(FuseRequest *req);
    void handle_statfs(FuseRequest *req);
    void fill_attr(fuse_attr *a);
    Status choose_passthrough(const BlockExportOptions &opts);
    Status choose_uring(OnOffAuto want);
    void publish_counters(FuseQueue *q);
    static void start_ring(void *opaque);
    void setup_ring(FuseQueue *q);
    void ring_prep(FuseQueue *q, FuseRequest *e, uint32_t cmd);
    static void on_ring_readable(void *opaque);
    static void on_ring_prepare(void *opaque);
    void ring_flush(FuseQueue *q);
    void ring_reap(FuseQueue *q);
    static void detach_handlers(FuseQueue *q);
    void refresh_length_if_passthrough();
    int passthrough_backing_id(FuseQueue *q);
    int co_grow(int64_t new_size, PreallocMode prealloc);
    void unmounted_externally(FuseQueue *q);

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
    // Request coroutines that have not finished (read, not yet replied and
    // returned to their pool). shutdown() waits for zero before it drains,
    // closes the descriptors and frees the queues; the block layer's
    // in-flight counters do not cover a request between two block calls
    // or after its last one.
    std::atomic<uint64_t> requests_in_flight_{0};
    bool shut_down_ = false;
    AioContext *main_ctx_ = nullptr;
    // File attributes shown to the kernel (SETATTR may change mode/uid/gid).
    std::mutex attr_lock_;
    uint32_t mode_ = 0;
    uint32_t uid_ = 0, gid_ = 0;
    struct timespec start_time_ {};
    uint32_t proto_minor_ = 0;

    // Kernel passthrough (docs/fuse-export.md): when the export is a raw
    // node straight on a file node and passthrough keeps every export
    // semantic, READ and WRITE go from the kernel to the image file without
    // us. passthrough_path_ is the image file ("" = not eligible; the reason
    // is in passthrough_why_); passthrough_on_ is set once the kernel agreed
    // at INIT; backing_id_ is registered at the first OPEN (-1: not yet,
    // -2: registration failed, requests are served by us).
    std::string passthrough_path_;
    std::string passthrough_why_;
    bool passthrough_on_ = false;
    std::mutex backing_lock_;
    int backing_fd_ = -1;
    std::atomic<int> backing_id_{-1};
    int backing_queue_fd_ = -1;
    std::atomic<uint64_t> passthrough_opens_{0};
    std::atomic<bool> passthrough_used_{false};   // a backing id was registered

    // FUSE-over-io_uring (docs/fuse-export.md): uring_why_ is why it is not
    // used ("" = wanted); uring_on_ once the kernel agreed at INIT;
    // uring_active_ once a request arrived through a ring.
    std::string uring_why_;
    std::atomic<bool> uring_on_{false};
    std::atomic<bool> uring_active_{false};
    std::atomic<int> uring_error_{0};   // errno of the first entry the kernel refused
    unsigned uring_queues_ = 0;     // kernel ring queues (possible CPUs)
};

// ---------------------------------------------------------------- set-up

namespace {

std::string unescape_mountinfo(const std::string &s)
{
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\\' && i + 3 < s.size()) {
            int v = 0;
            bool ok = true;
            for (int k = 1; k <= 3; k++) {
                if (i + k >= s.size() || s[i + k] < '0' || s[i + k] > '7') ok = false;
                else v = v * 8 + (s[i + k] - '0');
            }
            if (ok) {
                out += static_cast<char>(v);
                i += 3;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

// True if path (absolute, resolved) is a mount point now.
bool is_mounted(const std::string &path)
{
    std::ifstream f("/proc/self/mountinfo");
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ls(line);
        std::string id, parent, devno, root, mnt;
        ls >> id >> parent >> devno >> root >> mnt;
        if (unescape_mountinfo(mnt) == path) return true;
    }
    return false;
}

} // namespace

Status FuseExport::check_mountpoint()
{
    struct stat st;
    if (stat(mountpoint_.c_str(), &st) != 0) {
        return make_error(errno, "mountpoint '%s': %s", mountpoint_.c_str(), strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        return make_error(EINVAL, "mountpoint '%s' is not a regular file", mountpoint_.c_str());
    }
    char *real = realpath(mountpoint_.c_str(), nullptr);
    if (real) {
        bool mounted = is_mounted(real);
        free(real);
        if (mounted) return make_error(EBUSY, "mountpoint '%s' is already mounted", mountpoint_.c_str());
    }
    if (access("/dev/fuse", R_OK | W_OK) != 0) {
        return make_error(errno, "FUSE is unavailable: /dev/fuse: %s (is the fuse module loaded and the device "
                                 "accessible?)",
                          strerror(errno));
    }
    return {};
}

Status FuseExport::mount(bool allow_other)
{
    std::string opts = std::string(writable_ ? "rw" : "ro") + ",nosuid,nodev,noatime,default_permissions" +
                       ",max_read=" + std::to_string(kMaxWrite);
    if (allow_other) opts += ",allow_other";
    struct fuse_args args = FUSE_ARGS_INIT(0, nullptr);
    fuse_opt_add_arg(&args, "blockgraph");
    fuse_opt_add_arg(&args, "-o");
    fuse_opt_add_arg(&args, opts.c_str());
    struct fuse_lowlevel_ops ops;
    memset(&ops, 0, sizeof(ops));
    se_ = fuse_session_new(&args, &ops, sizeof(ops), nullptr);
    fuse_opt_free_args(&args);
    if (!se_) return make_error(EIO, "mountpoint '%s': cannot create a FUSE session", mountpoint_.c_str());
    if (fuse_session_mount(se_, mountpoint_.c_str()) != 0) {
        fuse_session_destroy(se_);
        se_ = nullptr;
        return make_error(EIO, "mountpoint '%s': mounting failed%s", mountpoint_.c_str(),
                          allow_other ? " (with allow_other)" : "");
    }
    mounted_ = true;
    return {};
}

Status FuseExport::start(BlockGraph &graph, const BlockExportOptions &opts, const std::vector<IoThread *> &iothreads)
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
    // Like QEMU: others may read; a writable export shares no writes.
    BlockPerm shared = kPermConsistentRead | kPermWriteUnchanged | (writable_ ? 0 : kPermWrite | kPermResize);
    auto b = BlockBackend::create(node_, perm, shared, "export '" + id_ + "'");
    if (!b.ok()) return b.error().prefixed("export '" + id_ + "'");
    blk_ = std::move(b.value());
    blk_->set_writethrough(opts.writethrough);

    Status s = check_mountpoint();
    if (!s.ok()) return s.error().prefixed("export '" + id_ + "'");
    s = choose_passthrough(opts);
    if (s.ok()) s = choose_uring(opts.fuse.io_uring);
    if (!s.ok()) return s.error().prefixed("export '" + id_ + "'");
    mode_ = S_IFREG | S_IRUSR | (writable_ ? S_IWUSR : 0);
    uid_ = getuid();
    gid_ = getgid();

    switch (opts.fuse.allow_other) {
    case OnOffAuto::kOn:
        s = mount(true);
        allow_other_ = true;
        break;
    case OnOffAuto::kOff:
        s = mount(false);
        break;
    case OnOffAuto::kAuto:
        s = mount(true);
        allow_other_ = s.ok();
        if (!s.ok()) s = mount(false);
        break;
    }
    if (!s.ok()) return s.error().prefixed("export '" + id_ + "'");
    int master = fuse_session_fd(se_);

    if (iothreads.empty()) {
        auto q = std::make_unique<FuseQueue>();
        q->exp = this;
        q->fd = master;
        q->ctx = main_ctx_;
        queues_.push_back(std::move(q));
    } else {
        for (IoThread *t : iothreads) {
            int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
            if (fd < 0) return errno_error(errno, "export '" + id_ + "': /dev/fuse");
            uint32_t src = static_cast<uint32_t>(master);
            if (ioctl(fd, FUSE_DEV_IOC_CLONE, &src) != 0) {
                int e = errno;
                close(fd);
                return errno_error(e, "export '" + id_ + "': cloning the /dev/fuse descriptor");
            }
            auto q = std::make_unique<FuseQueue>();
            q->exp = this;
            q->fd = fd;
            q->owns_fd = true;
            q->ctx = t->ctx();
            q->thread = t;
            queues_.push_back(std::move(q));
        }
    }
    // Kernel ring queues round-robin over our queues (threads).
    if (uring_why_.empty()) {
        for (unsigned qid = 0; qid < uring_queues_; qid++)
            queues_[qid % queues_.size()]->ring_qids.push_back(static_cast<uint16_t>(qid));
    }
    for (auto &q : queues_) {
        int fl = fcntl(q->fd, F_GETFL);
        fcntl(q->fd, F_SETFL, fl | O_NONBLOCK);
        attach(q.get());
    }
    log_info("export '%s': node '%s' mounted at %s (%s, %zu queue%s)", id_.c_str(), node_->node_name().c_str(),
             mountpoint_.c_str(), writable_ ? "writable" : "read-only", queues_.size(), queues_.size() > 1 ? "s" : "");
    return {};
}

void FuseExport::attach(FuseQueue *q)
{
    if (q->thread) {
        q->thread->run_sync([](void *p) {
            auto *qq = static_cast<FuseQueue *>(p);
            qq->ctx->set_fd_handler(qq->fd, &FuseExport::on_readable, nullptr, qq);
        }, q);
    } else {
        q->ctx->set_fd_handler(q->fd, &FuseExport::on_readable, nullptr, q);
    }
    q->attached = true;
}

// In the queue's thread: no more requests from /dev/fuse or the ring.
// Replies prepared so far go out now; those of requests still running go
// out at once from reply(). The ring stays until shutdown.
void FuseExport::detach_handlers(FuseQueue *q)
{
    q->ctx->set_fd_handler(q->fd, nullptr, nullptr, nullptr);
    if (q->ring_ok) {
        q->exp->ring_flush(q);
        q->ctx->set_fd_handler(q->ring.ring_fd, nullptr, nullptr, nullptr);
        q->ctx->remove_prepare_hook(&FuseExport::on_ring_prepare, q);
    }
}

void FuseExport::detach(FuseQueue *q)
{
    if (!q->attached.exchange(false)) return;
    if (q->thread) {
        q->thread->run_sync([](void *p) { detach_handlers(static_cast<FuseQueue *>(p)); }, q);
    } else {
        detach_handlers(q);
    }
}

// ---------------------------------------------------------------- teardown

void FuseExport::shutdown()
{
    if (shut_down_) return;
    shut_down_ = true;
    halted_ = true;
    for (auto &q : queues_) detach(q.get());
    // Let every request that was read finish (its reply goes to a
    // descriptor we still hold, its buffers back to a queue that still
    // exists). The timer re-checks requests finishing in other threads.
    while (requests_in_flight_.load() > 0) {
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
    if (backing_id_ >= 0) {
        uint32_t id = static_cast<uint32_t>(backing_id_.load());
        ioctl(backing_queue_fd_, BG_FUSE_DEV_IOC_BACKING_CLOSE, &id);   // ENODEV once unmounted: fine
        backing_id_ = -1;
    }
    if (backing_fd_ >= 0) close(backing_fd_);
    backing_fd_ = -1;
    // Rings go before the descriptors and the mount: the kernel cancels
    // their entries. The entries' buffers stay until the queues are freed.
    for (auto &q : queues_) {
        if (q->ring_ok) io_uring_queue_exit(&q->ring);
        q->ring_ok = false;
    }
    for (auto &q : queues_) {
        if (q->owns_fd && q->fd >= 0) close(q->fd);
        q->fd = -1;
    }
    if (se_) {
        if (mounted_) fuse_session_unmount(se_);
        mounted_ = false;
        fuse_session_destroy(se_);
        se_ = nullptr;
    }
    blk_.reset();
    log_info("export '%s': unmounted %s", id_.c_str(), mountpoint_.c_str());
}

FuseExport::~FuseExport() { shutdown(); }

void FuseExport::unmounted_externally(FuseQueue *)
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

// ---------------------------------------------------------------- request loop

void FuseExport::on_readable(void *opaque)
{
    auto *q = static_cast<FuseQueue *>(opaque);
    q->exp->read_requests(q);
}

void FuseExport::read_requests(FuseQueue *q)
{
    q->wakeups.fetch_add(1, std::memory_order_relaxed);
    if (!q->base_set) {
        q->switches_base = coroutine_stats().switches;
        q->base_set = true;
    }
    for (int i = 0; i < kMaxBatch && !halted_; i++) {
        FuseRequest *req = q->get();
        struct iovec iov[2] = {{req->hdr, kHeaderArea}, {req->payload.get(), kPayloadSize}};
        ssize_t n = readv(q->fd, iov, 2);
        if (n < 0) {
            int e = errno;
            q->put(req);
            if (e == EINTR || e == ENOENT) continue;   // ENOENT: the request was interrupted
            if (e == EAGAIN) break;
            if (e == ENODEV) {
                unmounted_externally(q);
                break;
            }
            log_error("export '%s': reading /dev/fuse: %s", id_.c_str(), strerror(e));
            unmounted_externally(q);
            break;
        }
        if (static_cast<size_t>(n) < sizeof(fuse_in_header) || req->in().len != static_cast<uint32_t>(n)) {
            log_error("export '%s': malformed request from the kernel (%zd bytes)", id_.c_str(), n);
            q->put(req);
            continue;
        }
        req->len = n;
        q->fuse_reads.fetch_add(1, std::memory_order_relaxed);
        requests_in_flight_.fetch_add(1);
        // One coroutine per request; it runs until its first I/O wait. The
        // requests of this wake-up start as one chain after the fd handlers,
        // together with the requests whose I/O completed (util/aio.h).
        q->ctx->co_enter_batched(coroutine_create(&FuseExport::process_entry, req));
    }
    publish_counters(q);
}

void FuseExport::process_entry(void *opaque)
{
    auto *req = static_cast<FuseRequest *>(opaque);
    req->q->exp->process(req);
}

void FuseExport::reply(FuseRequest *req, int err, const void *data, size_t len, const void *data2, size_t len2)
{
    FuseQueue *q = req->q;
    if (err) {
        q->errors.fetch_add(1, std::memory_order_relaxed);
        data = data2 = nullptr;
        len = len2 = 0;
    }
    if (req->uh) {
        // Through the ring: the header goes into in_out, the arguments into
        // the payload buffer (READ data is there already), and the commit
        // also fetches the entry's next request.
        fuse_out_header oh;
        oh.unique = req->in().unique;
        oh.error = -err;
        oh.len = static_cast<uint32_t>(sizeof(oh) + len + len2);
        memcpy(req->uh->in_out, &oh, sizeof(oh));
        uint8_t *pl = req->payload.get();
        if (len && data != pl) memmove(pl, data, len);
        if (len2) memmove(pl + len, data2, len2);
        req->uh->ent.payload_sz = static_cast<uint32_t>(len + len2);
        ring_prep(q, req, fuse_uapi::kUringCmdCommitAndFetch);
        if (!q->attached) ring_flush(q);   // detached: no loop round flushes it
        return;
    }
    fuse_out_header oh;
    oh.unique = req->in().unique;
    oh.error = -err;   // the one place errno changes sign for the kernel
    oh.len = static_cast<uint32_t>(sizeof(oh) + len + len2);
    struct iovec iov[3] = {{&oh, sizeof(oh)}, {const_cast<void *>(data), len}, {const_cast<void *>(data2), len2}};
    int cnt = 1 + (len ? 1 : 0) + (len2 ? 1 : 0);
    if (!len && len2) iov[1] = iov[2];
    for (;;) {
        ssize_t w = writev(q->fd, iov, cnt);
        if (w >= 0) break;
        if (errno == EINTR) continue;
        // ENOENT: the kernel gave up on the request (interrupted); fine.
        if (errno != ENOENT && errno != ENODEV) {
            log_warn("export '%s': replying to %s: %s", id_.c_str(), opcode_name(req->in().opcode), strerror(errno));
        }
        break;
    }
}

void FuseExport::process(FuseRequest *req)
{
    FuseQueue *q = req->q;
    uint32_t op = req->in().opcode;
    switch (op) {
    case FUSE_INIT:
        handle_init(req);
        break;
    case FUSE_GETATTR:
        q->requests[ExportStats::kGetattr].fetch_add(1, std::memory_order_relaxed);
        handle_getattr(req);
        break;
    case FUSE_SETATTR:
        q->requests[ExportStats::kSetattr].fetch_add(1, std::memory_order_relaxed);
        handle_setattr(req);
        break;
    case FUSE_OPEN:
        handle_open(req);
        break;
    case FUSE_RELEASE:
        reply(req, 0);
        break;
    case FUSE_READ:
        q->requests[ExportStats::kRead].fetch_add(1, std::memory_order_relaxed);
        handle_read(req);
        break;
    case FUSE_WRITE:
        q->requests[ExportStats::kWrite].fetch_add(1, std::memory_order_relaxed);
        handle_write(req);
        break;
    case FUSE_FLUSH:
    case FUSE_FSYNC: {
        q->requests[ExportStats::kFlush].fetch_add(1, std::memory_order_relaxed);
        int r = writable_ ? blk_->co_flush() : 0;
        reply(req, r < 0 ? -r : 0);
        break;
    }
    case FUSE_FALLOCATE:
        q->requests[ExportStats::kFallocate].fetch_add(1, std::memory_order_relaxed);
        handle_fallocate(req);
        break;
    case FUSE_LSEEK:
        q->requests[ExportStats::kLseek].fetch_add(1, std::memory_order_relaxed);
        handle_lseek(req);
        break;
    case FUSE_STATFS:
        q->requests[ExportStats::kOther].fetch_add(1, std::memory_order_relaxed);
        handle_statfs(req);
        break;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
        // No reply expected; a ring entry still goes back to the kernel.
        if (req->uh) reply(req, 0);
        break;
    case FUSE_DESTROY:
        reply(req, 0);
        break;
    case FUSE_LOOKUP:
        q->requests[ExportStats::kOther].fetch_add(1, std::memory_order_relaxed);
        reply(req, ENOENT);
        break;
    default:
        q->requests[ExportStats::kOther].fetch_add(1, std::memory_order_relaxed);
        reply(req, ENOSYS);
        break;
    }
    if (!req->uh) q->put(req);
    requests_in_flight_.fetch_sub(1);   // the last touch of the export
}

// ---------------------------------------------------------------- operations

void FuseExport::handle_init(FuseRequest *req)
{
    fuse_init_in in;
    memset(&in, 0, sizeof(in));
    // Old kernels send the short (pre-7.36) structure, without flags2.
    if (!req->arg(0, &in, sizeof(in)) && !req->arg(0, &in, 16)) {
        reply(req, EINVAL);
        return;
    }
    fuse_init_out out;
    memset(&out, 0, sizeof(out));
    out.major = FUSE_KERNEL_VERSION;
    out.minor = std::min<uint32_t>(in.minor, FUSE_KERNEL_MINOR_VERSION);
    if (in.major != FUSE_KERNEL_VERSION) {
        // Tell a newer kernel which major version we speak; it retries.
        reply(req, in.major > FUSE_KERNEL_VERSION ? 0 : EPROTO, &out, 8);
        return;
    }
    if (in.minor < kOurMinor) {
        log_error("export '%s': kernel FUSE protocol 7.%u is too old (need 7.%u)", id_.c_str(), in.minor, kOurMinor);
        reply(req, EPROTO);
        return;
    }
    proto_minor_ = out.minor;
    uint32_t want = FUSE_ASYNC_READ | FUSE_ASYNC_DIO | FUSE_BIG_WRITES | FUSE_MAX_PAGES;
    out.flags = in.flags & want;
    out.max_readahead = in.max_readahead;
    out.max_background = UINT16_MAX;
    out.congestion_threshold = UINT16_MAX / 4 * 3;
    out.max_write = kMaxWrite;
    out.time_gran = 1;
    out.max_pages = static_cast<uint16_t>(kMaxWrite / sysconf(_SC_PAGESIZE));
    uint64_t kflags2 = (in.flags & fuse_uapi::kInitExt) ? static_cast<uint64_t>(in.flags2) << 32 : 0;
    if (!passthrough_path_.empty()) {
        if (kflags2 & fuse_uapi::kInitPassthrough) {
            out.flags |= fuse_uapi::kInitExt;
            out.flags2 = static_cast<uint32_t>(fuse_uapi::kInitPassthrough >> 32);
            // Our mount stacks one level on the image's filesystem.
            fuse_uapi::InitOutTail tail{1};
            memcpy(&out.unused[0], &tail, sizeof(tail));
            out.minor = std::min<uint32_t>(in.minor, fuse_uapi::kPassthroughMinor);
            proto_minor_ = out.minor;
            passthrough_on_ = true;
        } else {
            log_info("export '%s': the kernel does not offer FUSE passthrough; requests go through the daemon",
                     id_.c_str());
        }
    }
    if (uring_why_.empty()) {
        if (kflags2 & fuse_uapi::kInitOverIoUring) {
            out.flags |= fuse_uapi::kInitExt;
            out.flags2 |= static_cast<uint32_t>(fuse_uapi::kInitOverIoUring >> 32);
            uring_on_ = true;
        } else {
            uring_why_ = "not offered by the kernel";
        }
    }
    reply(req, 0, &out, sizeof(out));
    if (uring_on_) {
        // The kernel set up its side with the reply: register our entries,
        // each queue's in its own thread (completions go to the submitter).
        // Counted in flight so that shutdown waits for them to have run.
        for (auto &qq : queues_) {
            requests_in_flight_.fetch_add(1);
            qq->ctx->schedule_oneshot(&FuseExport::start_ring, qq.get());
        }
    } else if (!uring_why_.empty()) {
        log_info("export '%s': FUSE-over-io_uring not used (%s); requests are read from /dev/fuse", id_.c_str(),
                 uring_why_.c_str());
    }
}

void FuseExport::fill_attr(fuse_attr *a)
{
    memset(a, 0, sizeof(*a));
    refresh_length_if_passthrough();
    int64_t len = blk_ ? blk_->getlength() : 0;
    a->ino = 1;
    a->size = static_cast<uint64_t>(std::max<int64_t>(len, 0));
    int64_t alloc = node_->allocated_file_size();
    a->blocks = alloc >= 0 ? static_cast<uint64_t>(alloc) / 512 : (a->size + 511) / 512;
    a->atime = a->mtime = a->ctime = static_cast<uint64_t>(start_time_.tv_sec);
    a->atimensec = a->mtimensec = a->ctimensec = static_cast<uint32_t>(start_time_.tv_nsec);
    {
        std::lock_guard<std::mutex> g(attr_lock_);
        a->mode = mode_;
        a->uid = uid_;
        a->gid = gid_;
    }
    a->nlink = 1;
    a->blksize = std::max<uint32_t>(node_->limits().request_alignment, 512);
}

// Passthrough is used only where it changes nothing the export promises:
// a raw node without offset/size straight on a file node that goes through
// the host page cache (cache.direct=off) with detect-zeroes off on both, a
// read-only export or a growable one (the kernel lets a passthrough write
// extend the file, which a non-growable export must refuse with ENOSPC),
// without writethrough (passthrough writes never reach us to be flushed).
// passthrough=off (or, with auto, BLOCKGRAPH_FUSE_PASSTHROUGH=0) turns it
// off; with passthrough=on a reason not to use it fails the export.
Status FuseExport::choose_passthrough(const BlockExportOptions &opts)
{
    const OnOffAuto want = opts.fuse.passthrough;
    auto no = [&](const std::string &why) -> Status {
        passthrough_why_ = why;
        if (want == OnOffAuto::kOn) return make_error(EINVAL, "passthrough=on: %s", why.c_str());
        return {};
    };
    if (want == OnOffAuto::kOff) return no("passthrough=off");
    const char *env = getenv("BLOCKGRAPH_FUSE_PASSTHROUGH");
    if (want == OnOffAuto::kAuto && env && strcmp(env, "0") == 0) return no("disabled by BLOCKGRAPH_FUSE_PASSTHROUGH=0");
    return no("TEMPORARY: passthrough capability pending");
    return {};
}

// Passthrough writes past EOF of a growable export grow the image file
// behind the graph's back: take the file's length again before anything
// that depends on it.
void FuseExport::refresh_length_if_passthrough()
{
    if (backing_id_.load() < 0 || !growable_) return;
    if (BdrvChild *c = node_->file_child()) c->node()->refresh_length();
    node_->refresh_length();
}

// The kernel's id for the image file, registered once per export on the
// /dev/fuse descriptor of the queue that serves the first OPEN. Needs
// CAP_SYS_ADMIN; on failure every OPEN falls back to requests served by us.
int FuseExport::passthrough_backing_id(FuseQueue *q)
{
    std::lock_guard<std::mutex> g(backing_lock_);
    if (backing_id_ != -1) return backing_id_;
    backing_id_ = -2;
    int fd = open(passthrough_path_.c_str(), (writable_ ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        log_warn("export '%s': passthrough: %s: %s; requests go through the daemon", id_.c_str(),
                 passthrough_path_.c_str(), strerror(errno));
        return backing_id_;
    }
    fuse_uapi::BackingMap map;
    memset(&map, 0, sizeof(map));
    map.fd = fd;
    int id = ioctl(q->fd, BG_FUSE_DEV_IOC_BACKING_OPEN, &map);
    if (id < 0) {
        log_warn("export '%s': passthrough: registering %s with the kernel: %s%s; requests go through the daemon",
                 id_.c_str(), passthrough_path_.c_str(), strerror(errno),
                 errno == EPERM ? " (needs CAP_SYS_ADMIN)" : "");
        close(fd);
        return backing_id_;
    }
    backing_fd_ = fd;
    backing_id_ = id;
    backing_queue_fd_ = q->fd;
    passthrough_used_ = true;
    log_info("export '%s': FUSE passthrough to %s: reads and writes bypass the daemon", id_.c_str(),
             passthrough_path_.c_str());
    return backing_id_;
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

namespace {
constexpr unsigned kRingDepth = 32;   // entries per kernel ring queue
} // namespace

void FuseExport::ring_prep(FuseQueue *q, FuseRequest *e, uint32_t cmd)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    if (!sqe) {
        ring_flush(q);
        sqe = io_uring_get_sqe(&q->ring);
    }
    if (!sqe) {
        // Cannot happen: the ring has one SQE per entry and an entry has at
        // most one command outstanding.
        log_error("export '%s': FUSE ring full", id_.c_str());
        abort();
    }
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = q->fd;
    sqe->cmd_op = cmd;
    sqe->addr = reinterpret_cast<uint64_t>(e->reg_iov);
    sqe->len = 2;
    fuse_uapi::UringCmdReq cr;
    memset(&cr, 0, sizeof(cr));
    cr.qid = e->qid;
    cr.commit_id = cmd == fuse_uapi::kUringCmdCommitAndFetch ? e->uh->ent.commit_id : 0;
    memcpy(sqe->cmd, &cr, sizeof(cr));
    io_uring_sqe_set_data(sqe, e);
}

void FuseExport::start_ring(void *opaque)
{
    auto *q = static_cast<FuseQueue *>(opaque);
    FuseExport *x = q->exp;
    x->setup_ring(q);
    x->requests_in_flight_.fetch_sub(1);   // the last touch of the export
}

void FuseExport::setup_ring(FuseQueue *q)
{
    FuseExport *x = this;
    if (q->ring_qids.empty() || x->halted_) return;
    unsigned n = static_cast<unsigned>(q->ring_qids.size()) * kRingDepth;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
    p.cq_entries = n * 2;
    int r = io_uring_queue_init_params(n, &q->ring, &p);
    if (r < 0) {
        log_warn("export '%s': FUSE-over-io_uring: cannot set up a ring: %s; requests are read from /dev/fuse",
                 x->id_.c_str(), strerror(-r));
        return;
    }
    q->ring_ok = true;
    for (uint16_t qid : q->ring_qids) {
        for (unsigned i = 0; i < kRingDepth; i++) {
            auto *e = new FuseRequest;
            e->q = q;
            e->payload = aligned_alloc_buf(4096, kPayloadSize);
            e->uh = new fuse_uapi::UringReqHeader();
            e->qid = qid;
            e->reg_iov[0] = {e->uh, sizeof(fuse_uapi::UringReqHeader)};
            e->reg_iov[1] = {e->payload.get(), kPayloadSize};
            q->ring_entries.push_back(e);
            x->ring_prep(q, e, fuse_uapi::kUringCmdRegister);
        }
    }
    q->ctx->set_fd_handler(q->ring.ring_fd, &FuseExport::on_ring_readable, nullptr, q);
    q->ctx->add_prepare_hook(&FuseExport::on_ring_prepare, q);
    x->ring_flush(q);
    log_info("export '%s': FUSE-over-io_uring: %zu kernel queue(s) x %u entries registered in this thread",
             x->id_.c_str(), q->ring_qids.size(), kRingDepth);
}

void FuseExport::on_ring_prepare(void *opaque)
{
    auto *q = static_cast<FuseQueue *>(opaque);
    q->exp->ring_flush(q);
}

void FuseExport::ring_flush(FuseQueue *q)
{
    if (!q->ring_ok || !io_uring_sq_ready(&q->ring)) return;
    int r;
    do {
        r = io_uring_submit(&q->ring);
        q->ring_enters.fetch_add(1, std::memory_order_relaxed);
    } while (r == -EINTR);
    if (r < 0 && r != -EAGAIN && r != -EBUSY) log_error("export '%s': FUSE ring: %s", id_.c_str(), strerror(-r));
}

void FuseExport::on_ring_readable(void *opaque)
{
    auto *q = static_cast<FuseQueue *>(opaque);
    q->exp->ring_reap(q);
}

void FuseExport::ring_reap(FuseQueue *q)
{
    q->wakeups.fetch_add(1, std::memory_order_relaxed);
    if (!q->base_set) {
        q->switches_base = coroutine_stats().switches;
        q->base_set = true;
    }
    unsigned head, n = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&q->ring, head, cqe)
    {
        n++;
        auto *e = static_cast<FuseRequest *>(io_uring_cqe_get_data(cqe));
        int res = cqe->res;
        if (res < 0) {
            // Cancelled at teardown (ENOTCONN, ECANCELED), or the kernel
            // refused the entry: requests keep coming through /dev/fuse
            // while any kernel queue has no entry.
            e->ring_dead = true;
            uint64_t dead = q->ring_dead.fetch_add(1, std::memory_order_relaxed);
            if (res != -ENOTCONN && res != -ECANCELED) {
                int none = 0;
                uring_error_.compare_exchange_strong(none, -res);
            }
            if (dead == 0 && res != -ENOTCONN && res != -ECANCELED && !halted_) {
                log_warn("export '%s': FUSE-over-io_uring: the kernel refused a ring entry: %s; requests are read "
                         "from /dev/fuse",
                         id_.c_str(), strerror(-res));
            }
            continue;
        }
        memcpy(e->hdr, e->uh->in_out, sizeof(fuse_in_header));
        e->len = kHeaderArea + e->uh->ent.payload_sz;
        q->ring_fetches.fetch_add(1, std::memory_order_relaxed);
        uring_active_.store(true, std::memory_order_relaxed);
        requests_in_flight_.fetch_add(1);
        q->ctx->co_enter_batched(coroutine_create(&FuseExport::process_entry, e));
    }
    io_uring_cq_advance(&q->ring, n);
    publish_counters(q);
}

// In the queue's thread: publishes the thread's counters for stats().
void FuseExport::publish_counters(FuseQueue *q)
{
    q->switches.store(coroutine_stats().switches - q->switches_base, std::memory_order_relaxed);
    IoBackendStats ios = q->ctx->io()->stats();
    q->io_submissions.store(ios.submissions, std::memory_order_relaxed);
    q->io_enters.store(ios.enters, std::memory_order_relaxed);
    q->io_inline.store(ios.inline_requests, std::memory_order_relaxed);
    q->poll_hits.store(q->ctx->poll_hits(), std::memory_order_relaxed);
    q->sleeps.store(q->ctx->poll_sleeps(), std::memory_order_relaxed);
}

void FuseExport::handle_getattr(FuseRequest *req)
{
    fuse_attr_out out;
    memset(&out, 0, sizeof(out));
    out.attr_valid = 1;
    fill_attr(&out.attr);
    reply(req, 0, &out, sizeof(out));
}

int FuseExport::co_grow(int64_t new_size, PreallocMode prealloc)
{
    CoMutexGuard g(grow_lock_);
    // Only ever grow: another request may have grown the node further since
    // our caller read the length.
    if (blk_->getlength() >= new_size) return 0;
    return blk_->co_truncate(new_size, true, prealloc, kReqZeroWrite);
}

void FuseExport::handle_setattr(FuseRequest *req)
{
    fuse_setattr_in in;
    if (!req->arg(&in)) {
        reply(req, EINVAL);
        return;
    }
    // Changes we ignore, as QEMU does: times, handles, lock owners.
    const uint32_t supported = FATTR_SIZE | FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_FH | FATTR_LOCKOWNER |
                               FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW | FATTR_CTIME |
                               FATTR_KILL_SUIDGID;
    if (in.valid & ~supported) {
        reply(req, ENOTSUP);
        return;
    }
    if (in.valid & FATTR_SIZE) {
        refresh_length_if_passthrough();
        if (!writable_) {
            reply(req, EACCES);
            return;
        }
        int r = blk_->co_truncate(static_cast<int64_t>(in.size), true, PreallocMode::kOff, kReqZeroWrite);
        if (r < 0) {
            reply(req, -r);
            return;
        }
    }
    if (in.valid & FATTR_MODE) {
        // Only permission bits may change, and a read-only export never
        // shows write permission.
        uint32_t perms = in.mode & 07777;
        if (!writable_ && (perms & 0222)) {
            reply(req, EROFS);
            return;
        }
        std::lock_guard<std::mutex> g(attr_lock_);
        mode_ = S_IFREG | perms;
    }
    if (in.valid & (FATTR_UID | FATTR_GID)) {
        if (!allow_other_) {
            // Nobody else can see the file; changing the owner makes no sense.
            reply(req, ENOTSUP);
            return;
        }
        std::lock_guard<std::mutex> g(attr_lock_);
        if (in.valid & FATTR_UID) uid_ = in.uid;
        if (in.valid & FATTR_GID) gid_ = in.gid;
    }
    handle_getattr(req);
}

void FuseExport::handle_open(FuseRequest *req)
{
    fuse_open_in in;
    if (!req->arg(&in)) {
        reply(req, EINVAL);
        return;
    }
    if (!writable_ && (in.flags & O_ACCMODE) != O_RDONLY) {
        reply(req, EROFS);
        return;
    }
    fuse_uapi::OpenOut out;
    memset(&out, 0, sizeof(out));
    // O_DIRECT opens are served by us: the kernel's passthrough path cannot
    // submit without blocking (io_uring hands each request to a worker
    // thread), which made 4k O_DIRECT at depth 64 several times slower than
    // our own path in measurements (docs/performance.md).
    int id = passthrough_on_ && !(in.flags & O_DIRECT) ? passthrough_backing_id(req->q) : -1;
    if (id >= 0) {
        // READ and WRITE go straight to the image file (no FOPEN_DIRECT_IO:
        // it would override passthrough); the kernel keeps no page cache of
        // its own for a passthrough file, so the image is still shown as it is.
        out.open_flags = fuse_uapi::kOpenPassthrough;
        out.backing_id = id;
        passthrough_opens_.fetch_add(1, std::memory_order_relaxed);
    } else {
        // Show the image as it is: no page cache in front of it, and let
        // writes to one file run in parallel.
        out.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    }
    reply(req, 0, &out, sizeof(out));
}

void FuseExport::handle_read(FuseRequest *req)
{
    fuse_read_in in;
    if (!req->arg(&in) || in.size > kMaxWrite) {
        reply(req, EINVAL);
        return;
    }
    int64_t len = blk_->getlength();
    int64_t off = static_cast<int64_t>(in.offset);
    if (off >= len || in.size == 0) {
        reply(req, 0);
        return;
    }
    int64_t n = std::min<int64_t>(in.size, len - off);   // short read at EOF
    // The request's payload buffer is free for READ (its arguments fit in
    // the header area), so it holds the data: no allocation.
    uint8_t *buf = req->payload.get();
    int r = blk_->co_pread(off, n, buf);
    if (r < 0) {
        reply(req, -r);
        return;
    }
    req->q->bytes_read.fetch_add(n, std::memory_order_relaxed);
    reply(req, 0, buf, n);
}

void FuseExport::handle_write(FuseRequest *req)
{
    fuse_write_in in;
    if (!req->arg(&in)) {
        reply(req, EINVAL);
        return;
    }
    if (!writable_) {
        reply(req, EACCES);
        return;
    }
    if (req->len < kHeaderArea + in.size) {
        reply(req, EINVAL);
        return;
    }
    // The data was read straight into the payload buffer, which this
    // request owns until it replies.
    const uint8_t *data = req->payload.get();
    int64_t off = static_cast<int64_t>(in.offset);
    int64_t n = in.size;
    int64_t len = blk_->getlength();
    if (off + n > len) {
        if (growable_) {
            int r = co_grow(off + n, PreallocMode::kOff);
            if (r < 0) {
                reply(req, -r);
                return;
            }
        } else {
            if (off >= len) {
                reply(req, ENOSPC);
                return;
            }
            n = len - off;   // short write; the next one gets ENOSPC
        }
    }
    int r = blk_->co_pwrite(off, n, data);
    if (r < 0) {
        reply(req, -r);
        return;
    }
    req->q->bytes_written.fetch_add(n, std::memory_order_relaxed);
    fuse_write_out out;
    memset(&out, 0, sizeof(out));
    out.size = static_cast<uint32_t>(n);
    reply(req, 0, &out, sizeof(out));
}

void FuseExport::handle_fallocate(FuseRequest *req)
{
    fuse_fallocate_in in;
    if (!req->arg(&in)) {
        reply(req, EINVAL);
        return;
    }
    if (!writable_) {
        reply(req, EACCES);
        return;
    }
    refresh_length_if_passthrough();
    int64_t off = static_cast<int64_t>(in.offset);
    int64_t length = static_cast<int64_t>(in.length);
    int64_t len = blk_->getlength();
    int r = 0;
    if (in.mode == 0) {
        // Allocation inside the image is a no-op we cannot express; past the
        // end it grows the image with preallocation, as QEMU does.
        if (off + length <= len) {
            r = off < len ? -EOPNOTSUPP : 0;
        } else {
            r = co_grow(off + length, PreallocMode::kFalloc);
        }
    } else if (in.mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        int64_t end = std::min(off + length, len);
        for (int64_t o = off; o < end && r == 0;) {
            int64_t n = std::min<int64_t>(end - o, kMaxRequestBytes);
            r = blk_->co_pwrite_zeroes(o, n, kReqMayUnmap | kReqNoFallback);
            o += n;
        }
        if (r == -ENOTSUP) r = -EOPNOTSUPP;
    } else if ((in.mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
        int64_t end = off + length;
        if (end > len && !(in.mode & FALLOC_FL_KEEP_SIZE)) {
            r = co_grow(end, PreallocMode::kOff);
            len = blk_->getlength();
        }
        end = std::min(end, len);
        for (int64_t o = off; o < end && r == 0;) {
            int64_t n = std::min<int64_t>(end - o, kMaxRequestBytes);
            r = blk_->co_pwrite_zeroes(o, n, 0);
            o += n;
        }
    } else {
        r = -EOPNOTSUPP;
    }
    reply(req, r < 0 ? -r : 0);
}

void FuseExport::handle_lseek(FuseRequest *req)
{
    fuse_lseek_in in;
    if (!req->arg(&in)) {
        reply(req, EINVAL);
        return;
    }
    if (in.whence != SEEK_DATA && in.whence != SEEK_HOLE) {
        reply(req, EINVAL);
        return;
    }
    refresh_length_if_passthrough();
    int64_t len = blk_->getlength();
    int64_t off = static_cast<int64_t>(in.offset);
    if (off < 0 || off >= len) {
        reply(req, ENXIO);
        return;
    }
    // Data is what some layer of the chain stores (DATA); holes read as zeros.
    for (;;) {
        int64_t pnum = 0;
        // Through the backend: counted in flight (drain and shutdown wait
        // for it) and held while the node is drained.
        int ret = blk_->co_block_status_above(nullptr, true, off, len - off, &pnum, nullptr, nullptr, nullptr);
        if (ret < 0) {
            reply(req, -ret);
            return;
        }
        bool data = ret & kStatusData;
        if ((in.whence == SEEK_DATA && data) || (in.whence == SEEK_HOLE && !data)) break;
        if (pnum <= 0) {
            reply(req, EIO);
            return;
        }
        off += pnum;
        if (off >= len) {
            if (in.whence == SEEK_DATA) {
                reply(req, ENXIO);
                return;
            }
            off = len;   // the implicit hole at EOF
            break;
        }
    }
    fuse_lseek_out out;
    memset(&out, 0, sizeof(out));
    out.offset = static_cast<uint64_t>(off);
    reply(req, 0, &out, sizeof(out));
}

void FuseExport::handle_statfs(FuseRequest *req)
{
    fuse_statfs_out out;
    memset(&out, 0, sizeof(out));
    int64_t len = blk_->getlength();
    out.st.bsize = 512;
    out.st.frsize = 512;
    out.st.blocks = static_cast<uint64_t>(len) / 512;
    out.st.files = 1;
    out.st.namelen = 255;
    reply(req, 0, &out, sizeof(out));
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

std::string FuseExport::stats_text() const
{
    ExportStats s = stats();
    uint64_t total = 0;
    for (int k = 0; k < 8; k++) total += s.requests[k];
    uint64_t rw = s.requests[ExportStats::kRead] + s.requests[ExportStats::kWrite];
    std::ostringstream o;
    o << "export '" << id_ << "' (fuse, " << mountpoint_ << ", " << queues_.size() << " queue"
      << (queues_.size() > 1 ? "s" : "") << ", transport "
      << (uring_active_ ? "io_uring" : "/dev/fuse read/writev")
      << (passthrough_used_ ? ", passthrough" : "") << "):\n";
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
    o << "  fuse-over-io_uring: ";
    if (uring_active_)
        o << "on (" << uring_queues_ << " kernel queues x " << kRingDepth << " entries)\n";
    else if (!uring_why_.empty())
        o << "off (" << uring_why_ << "; requests read from /dev/fuse)\n";
    else if (uring_error_.load())
        o << "off (the kernel refused the ring entries: " << strerror(uring_error_.load())
          << "; requests read from /dev/fuse)\n";
    else if (uring_on_)
        o << "registered, no request through it yet\n";
    else
        o << "wanted, not negotiated yet\n";
    if (!passthrough_path_.empty() || !passthrough_why_.empty()) {
        o << "  passthrough: ";
        if (passthrough_used_)
            o << "on (" << passthrough_opens_.load(std::memory_order_relaxed)
              << " opens passed through: their reads and writes bypass the daemon and are not counted; O_DIRECT opens are served here)\n";
        else if (!passthrough_why_.empty())
            o << "off (" << passthrough_why_ << ")\n";
        else if (backing_id_.load() == -2)
            o << "off (the kernel refused the image file)\n";
        else
            o << (passthrough_on_ ? "agreed, no open yet\n" : "off (not offered by the kernel)\n");
    }
    return o.str();
}

// ---------------------------------------------------------------- creation

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
