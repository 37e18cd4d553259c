// An NBD export: a BlockBackend on the node, its name in the server's
// table, the dirty bitmaps it offers (busy while exported), its clients.
#include <sstream>

#include "export/nbd/internal.h"
#include "util/log.h"

namespace bg {

namespace {

// The node holding bitmap `name` for a string entry of "bitmaps": n or a
// node below it through filters and backing files, as QEMU searches.
BlockNode *find_bitmap_node(BlockNode *n, const std::string &name)
{
    while (n) {
        for (const DirtyBitmapInfo &b : n->dirty_bitmaps()) {
            if (b.name == name) return n;
        }
        BdrvChild *c = n->filtered_child();
        if (!c) c = n->backing_child();
        n = c ? c->node() : nullptr;
    }
    return nullptr;
}

const DirtyBitmapInfo *bitmap_info(const std::vector<DirtyBitmapInfo> &list, const std::string &name)
{
    for (const DirtyBitmapInfo &b : list) {
        if (b.name == name) return &b;
    }
    return nullptr;
}

} // namespace

Result<std::unique_ptr<BlockExport>> NbdExport::create(BlockGraph &graph, const BlockExportOptions &opts)
{
    if (!NbdServer::instance()) return make_error(ENOENT, "NBD server not running");
    std::unique_ptr<NbdExport> e(new NbdExport());
    Status st = e->start(graph, opts);
    if (!st.ok()) {
        e->shutdown();
        return st.error();
    }
    return std::unique_ptr<BlockExport>(std::move(e));
}

Status NbdExport::start(BlockGraph &graph, const BlockExportOptions &opts)
{
    id_ = opts.id;
    type_ = "nbd";
    name_ = opts.nbd.name ? *opts.nbd.name : opts.node_name;
    description_ = opts.nbd.description;
    writable_ = opts.writable;
    allocation_depth_ = opts.nbd.allocation_depth;
    if (name_.size() > nbd::kMaxStringSize) return make_error(EINVAL, "export name '%s' too long", name_.c_str());
    if (description_.size() > nbd::kMaxStringSize) {
        return make_error(EINVAL, "description '%s' too long", description_.c_str());
    }
    if (NbdServer::find_export(name_)) {
        return make_error(EEXIST, "NBD server already has export named '%s'", name_.c_str());
    }
    BlockNode *node = graph.find(opts.node_name);
    if (!node) return make_error(ENOENT, "export '%s': no node named '%s'", id_.c_str(), opts.node_name.c_str());
    // An export keeps the size it announced: nobody may resize the node.
    // Conflict messages name it as QEMU does its export backends.
    BlockPerm perm = kPermConsistentRead | (writable_ ? kPermWrite : 0);
    BlockPerm shared = kPermAll & ~kPermResize;
    auto b = BlockBackend::create(node, perm, shared, "an unnamed block device");
    if (!b.ok()) return b.error();
    blk_ = std::move(b.value());
    blk_->set_writethrough(opts.writethrough);

    for (const BlockExportOptionsNbd::Bitmap &bm : opts.nbd.bitmaps) {
        BlockNode *holder = nullptr;
        if (bm.pair) {
            holder = graph.find(bm.node);
            if (!holder) {
                return make_error(ENOENT, "Cannot find device='' nor node-name='%s'", bm.node.c_str());
            }
            if (!bitmap_info(holder->dirty_bitmaps(), bm.name)) {
                return make_error(ENOENT, "Dirty bitmap '%s' not found", bm.name.c_str());
            }
        } else {
            holder = find_bitmap_node(node, bm.name);
            if (!holder) return make_error(ENOENT, "Bitmap '%s' is not found", bm.name.c_str());
        }
        std::vector<DirtyBitmapInfo> infos = holder->dirty_bitmaps();
        const DirtyBitmapInfo *info = bitmap_info(infos, bm.name);
        if (info->busy) {
            return make_error(EBUSY, "Bitmap '%s' is currently in use by another operation and cannot be used",
                              bm.name.c_str());
        }
        if (info->inconsistent) {
            return make_error(EINVAL, "Bitmap '%s' is inconsistent and cannot be used", bm.name.c_str());
        }
        if (!writable_ && !holder->read_only() && info->recording) {
            return make_error(EINVAL, "Enabled bitmap '%s' incompatible with readonly export", bm.name.c_str());
        }
        for (size_t i = 0; i < bitmaps_.size(); i++) {
            if (bitmaps_[i] == bm.name) return make_error(EINVAL, "Bitmap '%s' is listed twice", bm.name.c_str());
        }
        BG_TRY(holder->dirty_bitmap_set_busy(bm.name, true));
        bitmaps_.push_back(bm.name);
        bitmap_nodes_.push_back(holder);
    }
    BG_TRY(NbdServer::register_export(name_, this));
    registered_ = true;
    log_info("export '%s': NBD export '%s' of node '%s'%s", id_.c_str(), name_.c_str(), opts.node_name.c_str(),
             writable_ ? " (writable)" : "");
    return {};
}

NbdExport::~NbdExport() { shutdown(); }

Status NbdExport::check_safe_delete() const
{
    if (!clients_.empty()) return make_error(EBUSY, "export '%s' still in use", id_.c_str());
    return {};
}

void NbdExport::drop_clients()
{
    for (NbdConn *c : std::vector<NbdConn *>(clients_)) c->close();
}

void NbdExport::detach(NbdConn *c)
{
    for (size_t i = 0; i < clients_.size(); i++) {
        if (clients_[i] == c) {
            clients_.erase(clients_.begin() + static_cast<long>(i));
            return;
        }
    }
}

void NbdExport::shutdown()
{
    if (shut_down_) return;
    shut_down_ = true;
    // No new client finds the export; those connected are cut off and
    // finish the requests they have in flight.
    if (registered_) NbdServer::unregister_export(name_, this);
    registered_ = false;
    drop_clients();
    AioContext *ctx = AioContext::current();
    while (!clients_.empty()) {
        if (in_coroutine()) {
            co_sleep_ns(1000 * 1000);
            continue;
        }
        Timer t(ctx, [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        ctx->iterate(true);
    }
    for (size_t i = 0; i < bitmaps_.size(); i++) {
        Status st = bitmap_nodes_[i]->dirty_bitmap_set_busy(bitmaps_[i], false);
        (void)st;   // the bitmap may have gone with its node
    }
    bitmaps_.clear();
    bitmap_nodes_.clear();
    if (blk_) {
        blk_->drain();
        if (writable_) {
            int r = run_in_coroutine([this] { return blk_->co_flush(); });
            if (r < 0) log_error("export '%s': flush failed: %s", id_.c_str(), strerror(-r));
        }
        blk_.reset();
    }
}

uint16_t NbdExport::tx_flags(bool structured) const
{
    uint16_t f = nbd::kTxHasFlags | nbd::kTxSendFlush | nbd::kTxSendFua | nbd::kTxSendCache;
    if (writable_) f |= nbd::kTxSendTrim | nbd::kTxSendWriteZeroes | nbd::kTxSendFastZero;
    else f |= nbd::kTxReadOnly;
    NbdServer *s = NbdServer::instance();
    if (!s || s->options().max_connections != 1) f |= nbd::kTxCanMultiConn;
    if (structured) f |= nbd::kTxSendDf;
    return f;
}

uint32_t NbdExport::request_alignment() const
{
    BlockNode *n = node();
    uint32_t a = n ? static_cast<uint32_t>(n->limits().request_alignment) : 1;
    return a ? a : 1;
}

uint32_t NbdExport::max_block() const
{
    BlockNode *n = node();
    uint64_t m = n ? n->limits().max_transfer : 0;
    if (m == 0 || m > nbd::kMaxPayload) m = nbd::kMaxPayload;
    uint32_t align = request_alignment();
    m -= m % align;
    return static_cast<uint32_t>(m ? m : align);
}

std::string NbdExport::stats_text() const
{
    std::ostringstream o;
    size_t extended = 0, structured = 0;
    for (const NbdConn *c : clients_) {
        extended += c->extended_;
        structured += !c->extended_ && c->structured_;
    }
    o << "export '" << id_ << "' (nbd, name '" << name_ << "', " << clients_.size() << " client"
      << (clients_.size() == 1 ? "" : "s") << ": " << extended << " with extended headers, " << structured
      << " with structured replies):\n";
    o << "  requests:";
    for (int k = 0; k < 8; k++) o << " " << ExportStats::kind_name(k) << "=" << stats_.requests[k];
    o << "\n  bytes read=" << stats_.bytes_read << " written=" << stats_.bytes_written << " errors=" << stats_.errors
      << "\n";
    // Connections are served in the main loop: how its waits ended.
    if (AioContext *ctx = AioContext::current()) {
        o << "  main loop: waits ended while polling=" << ctx->poll_hits() << " slept=" << ctx->poll_sleeps()
          << "\n";
    }
    return o.str();
}

} // namespace bg
