// Kernel FUSE passthrough (Linux >= 6.9, docs/fuse-export.md): OPEN
// replies name a backing file registered with the kernel, and READ and
// WRITE then go from the kernel to that file without the daemon. The node
// says whether its bytes are a host file's (BlockNode::passthrough_fd);
// this file adds the export's own conditions and owns the registration.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "export/fuse/internal.h"
#include "util/log.h"

namespace bg {

// Passthrough is used only where it changes nothing the export promises:
// the node's bytes are a host file's 1:1 through the host page cache (the
// node answers that, see BlockNode::passthrough_fd), and the export is
// read-only or growable (the kernel lets a passthrough write extend the
// file, which a non-growable export must refuse with ENOSPC), without
// writethrough (passthrough writes never reach us to be flushed).
// passthrough=off (or, with auto, BLOCKGRAPH_FUSE_PASSTHROUGH=0) turns it
// off; with passthrough=on a reason not to use it fails the export. Main
// thread, before mounting.
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
    std::string why;
    int fd = node_->passthrough_fd(writable_, &why);
    if (fd < 0) return no(why);
    if (opts.writethrough) return no("writethrough=on");
    if (writable_ && !growable_) return no("a writable export that is not growable must refuse writes past its end");
    // Our own descriptor on the node's open file: registered at the first
    // OPEN, and closed by us whatever the node does meanwhile.
    backing_fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (backing_fd_ < 0) return no(std::string("duplicating the node's descriptor: ") + strerror(errno));
    passthrough_file_ = node_->filename();
    return {};
}

// The kernel's id for the backing file, registered once per export on the
// /dev/fuse descriptor of the queue that serves the first OPEN. Needs
// CAP_SYS_ADMIN; on failure every OPEN falls back to requests served by us.
// Any queue's thread.
int FuseExport::passthrough_backing_id(FuseQueue *q)
{
    std::lock_guard<std::mutex> g(backing_lock_);
    if (backing_id_ != -1) return backing_id_;
    backing_id_ = -2;
    fuse_uapi::BackingMap map;
    memset(&map, 0, sizeof(map));
    map.fd = backing_fd_;
    int id = ioctl(q->fd, BG_FUSE_DEV_IOC_BACKING_OPEN, &map);
    if (id < 0) {
        log_warn("export '%s': passthrough: registering %s with the kernel: %s%s; requests go through the daemon",
                 id_.c_str(), passthrough_file_.c_str(), strerror(errno),
                 errno == EPERM ? " (needs CAP_SYS_ADMIN)" : "");
        return backing_id_;
    }
    backing_id_ = id;
    backing_queue_fd_ = q->fd;
    passthrough_used_ = true;
    log_info("export '%s': FUSE passthrough to %s: reads and writes bypass the daemon", id_.c_str(),
             passthrough_file_.c_str());
    return backing_id_;
}

// Unregisters the backing file and closes our descriptor. Main thread, at
// shutdown, once no request is in flight.
void FuseExport::close_backing()
{
    if (backing_id_ >= 0) {
        uint32_t id = static_cast<uint32_t>(backing_id_.load());
        ioctl(backing_queue_fd_, BG_FUSE_DEV_IOC_BACKING_CLOSE, &id);   // ENODEV once unmounted: fine
        backing_id_ = -1;
    }
    if (backing_fd_ >= 0) close(backing_fd_);
    backing_fd_ = -1;
}

// Passthrough writes past EOF of a growable export grow the backing file
// behind the graph's back: take the length again, from the bottom of the
// node's filter chain up, before anything that depends on it.
void FuseExport::refresh_length_if_passthrough()
{
    if (backing_id_.load() < 0 || !growable_) return;
    std::vector<BlockNode *> chain;
    for (BlockNode *n = node_; n;) {
        chain.push_back(n);
        BdrvChild *c = n->filtered_child();
        n = c ? c->node() : nullptr;
    }
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) (*it)->refresh_length();
}

// The "passthrough:" line of stats_text() ("" when it was never a question).
std::string FuseExport::passthrough_text() const
{
    if (passthrough_file_.empty() && passthrough_why_.empty()) return "";
    std::ostringstream o;
    o << "  passthrough: ";
    if (passthrough_used_)
        o << "on (" << passthrough_opens_.load(std::memory_order_relaxed)
          << " opens passed through: their reads and writes bypass the daemon and are not counted; O_DIRECT "
             "opens are served here)\n";
    else if (!passthrough_why_.empty())
        o << "off (" << passthrough_why_ << ")\n";
    else if (backing_id_.load() == -2)
        o << "off (the kernel refused the image file)\n";
    else
        o << (passthrough_on_ ? "agreed, no open yet\n" : "off (not offered by the kernel)\n");
    return o.str();
}

} // namespace bg
