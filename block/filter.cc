// FilterNode: the base class of filters. Every hook forwards to the one
// FILTERED|PRIMARY child through the BdrvChild I/O methods, so a new
// operation cannot be forgotten in a filter. Flushes need
// no forwarding: the generic layer flushes children itself; block status
// needs none either: BlockNode's default answers RAW on filtered_child().
#include "block/block-driver.h"

#include <cerrno>

namespace bg {

std::string FilterNode::filename() const
{
    return filtered_ ? filtered_->node()->filename() : std::string();
}

Status FilterNode::open_filtered(const std::string &name, const BlockdevRef &ref)
{
    Result<BdrvChild *> c = open_child(name, ref, kRoleFiltered | kRolePrimary);
    if (!c) return c.error();
    filtered_ = c.value();
    // The child's own generic layer emulates what its driver lacks (FUA by
    // a flush, MAY_UNMAP by ignoring it), so a filter may pass all through.
    supports_fua_ = true;
    supported_zero_flags_ = kReqMayUnmap | kReqFua | kReqNoFallback;
    return {};
}

int coroutine_fn FilterNode::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    return filtered_->co_preadv(offset, bytes, qiov, flags);
}

int coroutine_fn FilterNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    return filtered_->co_pwritev(offset, bytes, qiov, flags);
}

int coroutine_fn FilterNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    return filtered_->co_pwrite_zeroes(offset, bytes, flags);
}

int coroutine_fn FilterNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    return filtered_->co_pdiscard(offset, bytes);
}

int coroutine_fn FilterNode::do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    return filtered_->co_truncate(offset, exact, prealloc, flags);
}

int64_t FilterNode::do_getlength()
{
    return filtered_ ? filtered_->getlength() : -ENOMEDIUM;
}

int64_t FilterNode::allocated_file_size()
{
    return filtered_ ? filtered_->node()->allocated_file_size() : -ENOMEDIUM;
}

int FilterNode::do_passthrough_fd(bool write, std::string *why)
{
    if (!filtered_) {
        *why = "node '" + node_name() + "' has no child";
        return -1;
    }
    return filtered_->node()->passthrough_fd(write, why);
}

} // namespace bg
