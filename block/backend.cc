// BlockBackend: the consumer handle.
#include <algorithm>

#include "block/block-driver.h"
#include "util/log.h"

namespace bg {

Result<std::unique_ptr<BlockBackend>> BlockBackend::create(BlockNode *root, BlockPerm perm, BlockPerm shared,
                                                            const std::string &desc)
{
    std::unique_ptr<BlockBackend> blk(new BlockBackend);
    blk->desc_ = desc;
    auto *c = new BdrvChild;
    c->name_ = "root";
    c->bs_ = root;
    c->parent_backend_ = blk.get();
    c->role_ = kRoleData | kRoleMetadata | kRolePrimary;
    c->perm_ = perm;
    c->shared_ = shared;
    root->parents_.push_back(c);
    blk->root_ = c;
    // A consumer attaching to a drained node starts drained too.
    blk->quiesce_counter_.store(root->quiesce_counter_.load());
    Status s = root->graph()->refresh_perms(root);
    if (!s.ok()) {
        root->parents_.erase(std::find(root->parents_.begin(), root->parents_.end(), c));
        delete c;
        blk->root_ = nullptr;
        Status again = root->graph()->refresh_perms(root);
        (void)again;
        return s.error();
    }
    return blk;
}

BlockBackend::~BlockBackend()
{
    if (!root_) return;
    if (in_flight_.load() > 0) drain();
    BlockNode *root = root_->node();
    root->parents_.erase(std::find(root->parents_.begin(), root->parents_.end(), root_));
    delete root_;
    root_ = nullptr;
    Status s = root->graph()->refresh_perms(root);
    if (!s.ok()) log_warn("node '%s': %s", root->node_name().c_str(), s.msg().c_str());
}

Status BlockBackend::set_perm(BlockPerm perm, BlockPerm shared)
{
    BlockPerm old_perm = root_->perm_, old_shared = root_->shared_;
    root_->perm_ = perm;
    root_->shared_ = shared;
    Status s = root_->node()->graph()->refresh_perms(root_->node());
    if (!s.ok()) {
        root_->perm_ = old_perm;
        root_->shared_ = old_shared;
        Status again = root_->node()->graph()->refresh_perms(root_->node());
        (void)again;
    }
    return s;
}

void BlockBackend::drain()
{
    BlockNode *n = node();
    if (!n) return;
    n->drained_begin();
    n->drained_end();
}

// A request waiting for drained_end(); lives on the waiting coroutine's stack.
struct BlockBackend::QueuedRequest {
    Coroutine *co;
    QueuedRequest *next;
};

void BlockBackend::drained_end()
{
    QueuedRequest *list;
    {
        std::lock_guard<std::mutex> g(queue_lock_);
        if (quiesce_counter_.fetch_sub(1) != 1) return;
        list = queue_head_;
        queue_head_ = queue_tail_ = nullptr;
    }
    while (QueuedRequest *w = list) {
        list = w->next;   // read before the wake: w dies with the waiter's frame
        aio_co_wake(w->co);
    }
}

void BlockBackend::dec_in_flight() { in_flight_.fetch_sub(1); }

// Counts the request in, or waits (uncounted) while the node is drained.
// The in-flight count is taken before the check so that drained_begin()
// either sees the request or the request sees the drain; the second check,
// under queue_lock_, closes the window in which drained_end() could run
// between our check and our enqueue and never wake us.
void BlockBackend::wait_while_quiesced()
{
    for (;;) {
        inc_in_flight();
        if (quiesce_counter_.load() == 0) return;
        dec_in_flight();
        QueuedRequest w{coroutine_self(), nullptr};
        {
            std::lock_guard<std::mutex> g(queue_lock_);
            if (quiesce_counter_.load() == 0) continue;
            if (!coroutine_context(w.co)) coroutine_set_context(w.co, AioContext::current());
            if (queue_tail_) queue_tail_->next = &w;
            else queue_head_ = &w;
            queue_tail_ = &w;
        }
        coroutine_yield();   // woken (in our own thread) by drained_end()
    }
}

int BlockBackend::check_range(int64_t offset, int64_t bytes) const
{
    if (!root_) return -ENOMEDIUM;
    if (offset < 0 || bytes < 0) return -EIO;
    int64_t len = root_->node()->getlength();
    if (offset > len || bytes > len - offset) return -EIO;
    return 0;
}

int64_t BlockBackend::getlength() const { return root_ ? root_->node()->getlength() : -ENOMEDIUM; }

// A request of this backend for its scope: counted in flight, after
// waiting out any drain (the constructor may yield).
struct BlockBackend::RequestScope {
    BlockBackend *blk;
    explicit RequestScope(BlockBackend *b) : blk(b) { blk->wait_while_quiesced(); }
    ~RequestScope() { blk->dec_in_flight(); }
    RequestScope(const RequestScope &) = delete;
    RequestScope &operator=(const RequestScope &) = delete;
};

// Each I/O method below checks the range, opens a RequestScope and calls
// the root edge, which runs the generic request and the driver's hook: no
// layer in between (docs/architecture.md, "A 4k read, step by step").

int BlockBackend::co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    int r = check_range(offset, bytes);
    if (r < 0) return r;
    RequestScope s(this);
    return root_->co_preadv(offset, bytes, qiov, flags);
}

int BlockBackend::co_pread(int64_t offset, int64_t bytes, void *buf, ReqFlags flags)
{
    int r = check_range(offset, bytes);
    if (r < 0) return r;
    IOVector v(buf, bytes);
    RequestScope s(this);
    return root_->co_preadv(offset, bytes, v, flags);
}

int BlockBackend::co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    int r = check_range(offset, bytes);
    if (r < 0) return r;
    RequestScope s(this);
    return root_->co_pwritev(offset, bytes, qiov, writethrough_ ? (flags | kReqFua) : flags);
}

int BlockBackend::co_pwrite(int64_t offset, int64_t bytes, const void *buf, ReqFlags flags)
{
    int r = check_range(offset, bytes);
    if (r < 0) return r;
    IOVector v(const_cast<void *>(buf), bytes);
    RequestScope s(this);
    return root_->co_pwritev(offset, bytes, v, writethrough_ ? (flags | kReqFua) : flags);
}

int BlockBackend::co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    int r = check_range(offset, bytes);
    if (r < 0) return r;
    RequestScope s(this);
    return root_->co_pwrite_zeroes(offset, bytes, writethrough_ ? (flags | kReqFua) : flags);
}

int BlockBackend::co_pdiscard(int64_t offset, int64_t bytes)
{
    int r = check_range(offset, bytes);
    if (r < 0) return r;
    RequestScope s(this);
    return root_->co_pdiscard(offset, bytes);
}

int BlockBackend::co_flush()
{
    if (!root_) return -ENOMEDIUM;
    RequestScope s(this);
    return root_->co_flush();
}

int BlockBackend::co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    if (!root_) return -ENOMEDIUM;
    RequestScope s(this);
    return root_->co_truncate(offset, exact, prealloc, flags);
}

int BlockBackend::co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum, int64_t *map,
                                  BlockNode **file)
{
    if (!root_) return -ENOMEDIUM;
    RequestScope s(this);
    return root_->co_block_status(want_zero, offset, bytes, pnum, map, file);
}

int BlockBackend::co_block_status_above(BlockNode *base, bool want_zero, int64_t offset, int64_t bytes,
                                        int64_t *pnum, int64_t *map, BlockNode **file, int *depth)
{
    if (!root_) return -ENOMEDIUM;
    RequestScope s(this);
    return root_->node()->co_block_status_above(base, want_zero, offset, bytes, pnum, map, file, depth);
}

} // namespace bg
