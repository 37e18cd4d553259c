// The graph: nodes, edges, permissions, opening and teardown.
#include <algorithm>
#include <cstdio>

#include "block/block-driver.h"
#include "qapi/block-parse.h"
#include "util/log.h"

namespace bg {

// ---------------------------------------------------------------- names

const char *perm_name(int bit)
{
    static const char *const names[kPermCount] = {"consistent read", "write", "write unchanged", "resize"};
    return bit >= 0 && bit < kPermCount ? names[bit] : "?";
}

std::string perm_names(BlockPerm perm)
{
    std::string s;
    for (int i = 0; i < kPermCount; i++) {
        if (!(perm & (1ULL << i))) continue;
        if (!s.empty()) s += ", ";
        s += perm_name(i);
    }
    return s;
}

bool node_name_valid(const std::string &name)
{
    if (name.empty() || name.size() > 31) return false;
    if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'))) return false;
    for (char c : name) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                  c == '.' || c == '_';
        if (!ok) return false;
    }
    return true;
}

std::string BdrvChild::parent_desc() const
{
    if (parent_node_) return "node '" + parent_node_->node_name() + "'";
    if (parent_backend_) return parent_backend_->desc();
    return "nobody";
}

// ---------------------------------------------------------------- BlockNode basics

BlockNode::BlockNode() = default;

BlockNode::~BlockNode()
{
    for (BdrvChild *c : children_) delete c;
}

const char *BlockNode::driver_name() const { return drv_ ? drv_->name : "?"; }

std::string BlockNode::filename() const
{
    BdrvChild *c = file_child();
    return c ? c->node()->filename() : std::string();
}

int BlockNode::refresh_length()
{
    int64_t len = do_getlength();
    if (len < 0) return static_cast<int>(len);
    total_bytes_.store(len, std::memory_order_relaxed);
    return 0;
}

int64_t BlockNode::allocated_file_size()
{
    BdrvChild *c = file_child();
    return c ? c->node()->allocated_file_size() : -ENOTSUP;
}

BdrvChild *BlockNode::child(const std::string &name) const
{
    for (BdrvChild *c : children_) {
        if (c->name() == name) return c;
    }
    return nullptr;
}

BdrvChild *BlockNode::file_child() const
{
    for (BdrvChild *c : children_) {
        if (c->role() & kRolePrimary) return c;
    }
    return nullptr;
}

BdrvChild *BlockNode::backing_child() const
{
    for (BdrvChild *c : children_) {
        if (c->role() & kRoleCow) return c;
    }
    return nullptr;
}

BdrvChild *BlockNode::filtered_child() const { return nullptr; }

BlockPerm BlockNode::cumulative_perm() const
{
    BlockPerm p = 0;
    for (BdrvChild *c : parents_) p |= c->perm();
    return p;
}

BlockPerm BlockNode::cumulative_shared() const
{
    BlockPerm s = kPermAll;
    for (BdrvChild *c : parents_) s &= c->shared();
    return s;
}

// ---------------------------------------------------------------- DriverHooks helpers


Error DriverHooks::node_error(int err, const std::string &msg) const { return Error{err, msg}; }


Result<BdrvChild *> DriverHooks::open_child(const std::string &name, const BlockdevRef &ref, ChildRole role,
                                           bool required)
{
    return self()->graph_open_child(name, ref, role, required);
}

Result<BdrvChild *> DriverHooks::attach_child(BlockNode *child, const std::string &name, ChildRole role)
{
    return self()->graph_attach_child(child, name, role);
}

void DriverHooks::detach_child(BdrvChild *c) { self()->graph_detach_child(c); }

BlockdevOptions BlockNode::dump_options() const
{
    BlockdevOptions o = opts_;
    o.node_name = node_name_;
    // Replace every child reference by the name of the node now attached.
    auto fix = [this](BlockdevRef &ref, const char *edge) {
        if (ref.kind == BlockdevRef::Kind::kNull) return;
        BdrvChild *c = child(edge);
        if (!c) return;
        ref.kind = BlockdevRef::Kind::kReference;
        ref.reference = c->node()->node_name();
        ref.def.reset();
    };
    if (o.drv) {
        o.drv->for_each_child([&fix](const char *key, BlockdevRef &ref) { fix(ref, key); });
    }
    return o;
}

// ---------------------------------------------------------------- default hooks

int DriverHooks::do_co_pwritev(int64_t, int64_t, IOVector &, ReqFlags) { return -ENOTSUP; }
int DriverHooks::do_co_pwrite_zeroes(int64_t, int64_t, ReqFlags) { return -ENOTSUP; }
int DriverHooks::do_co_pdiscard(int64_t, int64_t) { return -ENOTSUP; }
int DriverHooks::do_co_flush_to_os() { return 0; }
int DriverHooks::do_co_flush_to_disk() { return 0; }
int DriverHooks::do_co_truncate(int64_t, bool, PreallocMode, ReqFlags) { return -ENOTSUP; }

int DriverHooks::do_co_block_status(bool, int64_t offset, int64_t bytes, int64_t *pnum, int64_t *map, BlockNode **file)
{
    *pnum = bytes;
    *map = offset;
    if (BdrvChild *f = self()->filtered_child()) {
        *file = f->node();
        return kStatusRaw | kStatusOffsetValid;
    }
    *file = self();
    return kStatusData | kStatusOffsetValid;
}

void DriverHooks::child_perm(ChildRole role, BlockPerm parent_perm, BlockPerm parent_shared, BlockPerm *nperm,
                           BlockPerm *nshared)
{
    if (role & kRoleFiltered) {
        // A filter needs what its parents need and shares what they share.
        *nperm = parent_perm;
        *nshared = parent_shared;
        return;
    }
    if (role & kRoleCow) {
        // Backing data is only read; others may read and write-unchanged it,
        // and write/resize it only if all our parents tolerate writes.
        *nperm = kPermConsistentRead;
        *nshared = kPermConsistentRead | kPermWriteUnchanged;
        if (parent_shared & kPermWrite) *nshared |= kPermWrite | kPermResize;
        return;
    }
    BlockPerm perm = parent_perm;
    BlockPerm shared = parent_shared;
    if (role & kRoleMetadata) {
        // Metadata is always read, written whenever the node is writable,
        // and must not change under us.
        perm |= kPermConsistentRead;
        if (!read_only_) perm |= kPermWrite | kPermResize;
        shared &= ~(kPermWrite | kPermResize);
    } else if (role & kRoleData) {
        if (parent_perm & kPermWrite) perm |= kPermWrite;
        perm |= kPermConsistentRead & parent_perm;
    }
    shared |= kPermWriteUnchanged;
    *nperm = perm;
    *nshared = shared;
}

Status DriverHooks::check_perm(BlockPerm, BlockPerm) { return {}; }
void DriverHooks::set_perm(BlockPerm, BlockPerm) {}
void DriverHooks::abort_perm() {}

void DriverHooks::debug_event(const char *event)
{
    for (BdrvChild *c : self()->children_) c->node()->debug_event(event);
}

void BdrvChild::debug_event(const char *event) { bs_->debug_event(event); }

// ---------------------------------------------------------------- permissions

// Recomputes this node's cumulative permissions from its parents, checks
// them against each other and against the driver, and pushes the derived
// permissions down to the children. Records changed edges in undo and every
// node whose check_perm ran in checked.
Status BlockNode::update_perms(std::vector<std::pair<BdrvChild *, std::pair<BlockPerm, BlockPerm>>> *undo,
                               std::vector<BlockNode *> *checked)
{
    BlockPerm cum = cumulative_perm();
    BlockPerm cum_shared = cumulative_shared();
    if (read_only_ && (cum & (kPermWrite | kPermResize))) {
        return make_error(EPERM, "node '%s' is read-only", node_name_.c_str());
    }
    for (BdrvChild *a : parents_) {
        for (BdrvChild *b : parents_) {
            if (a == b) continue;
            BlockPerm clash = a->perm() & ~b->shared();
            if (!clash) continue;
            int bit = __builtin_ctzll(clash);
            return make_error(EPERM,
                              "%s cannot use node '%s' as '%s': it conflicts with use by %s as '%s', "
                              "which does not allow '%s'",
                              a->parent_desc().c_str(), node_name_.c_str(), a->name().c_str(),
                              b->parent_desc().c_str(), b->name().c_str(), perm_name(bit));
        }
    }
    checked->push_back(this);
    Status s = check_perm(cum, cum_shared);
    if (!s.ok()) return s;
    for (BdrvChild *c : children_) {
        BlockPerm np, ns;
        child_perm(c->role(), cum, cum_shared, &np, &ns);
        // QEMU's bdrv_child_perm(): the *child's* force-share makes the
        // edge to it share everything (inline children inherit the flag).
        if (c->node()->force_share_) ns = kPermAll;
        if (np == c->perm_ && ns == c->shared_) continue;
        undo->push_back({c, {c->perm_, c->shared_}});
        c->perm_ = np;
        c->shared_ = ns;
        Status cs = c->node()->update_perms(undo, checked);
        if (!cs.ok()) return cs;
    }
    return {};
}

Status BlockGraph::refresh_perms(BlockNode *node)
{
    std::vector<std::pair<BdrvChild *, std::pair<BlockPerm, BlockPerm>>> undo;
    std::vector<BlockNode *> checked;
    Status s = node->update_perms(&undo, &checked);
    std::sort(checked.begin(), checked.end());
    checked.erase(std::unique(checked.begin(), checked.end()), checked.end());
    if (s.ok()) {
        for (BlockNode *n : checked) n->set_perm(n->cumulative_perm(), n->cumulative_shared());
        return s;
    }
    for (auto it = undo.rbegin(); it != undo.rend(); ++it) {
        it->first->perm_ = it->second.first;
        it->first->shared_ = it->second.second;
    }
    for (BlockNode *n : checked) n->abort_perm();
    return s;
}

// ---------------------------------------------------------------- edges

Result<BdrvChild *> BlockNode::graph_attach_child(BlockNode *child, const std::string &name, ChildRole role)
{
    auto *c = new BdrvChild;
    c->name_ = name;
    c->bs_ = child;
    c->parent_node_ = this;
    c->role_ = role;
    child_perm(role, cumulative_perm(), cumulative_shared(), &c->perm_, &c->shared_);
    if (child->force_share_) c->shared_ = kPermAll;
    child->parents_.push_back(c);
    children_.push_back(c);
    Status s = graph_->refresh_perms(child);
    if (!s.ok()) {
        children_.erase(std::find(children_.begin(), children_.end(), c));
        child->parents_.erase(std::find(child->parents_.begin(), child->parents_.end(), c));
        delete c;
        Status again = graph_->refresh_perms(child);
        (void)again;
        return s.error();
    }
    // A parent of a drained node is drained too (what drained_begin() would
    // have done had the edge existed): the child's drained_end() will end
    // one drain on every parent it has by then.
    for (int i = child->quiesce_counter_.load(); i > 0; i--) drained_begin_no_poll();
    refresh_limits_all();
    return c;
}

void BlockNode::graph_detach_child(BdrvChild *c)
{
    BlockNode *child = c->node();
    // Leaving a drained node: end the drains it imposed on us, or we stay
    // quiesced for good once the child's drained_end() no longer sees us.
    for (int i = child->quiesce_counter_.load(); i > 0; i--) drained_end();
    children_.erase(std::find(children_.begin(), children_.end(), c));
    child->parents_.erase(std::find(child->parents_.begin(), child->parents_.end(), c));
    delete c;
    // Dropping a user only loosens permissions; a failure here would be a
    // driver bug, so log it.
    Status s = graph_->refresh_perms(child);
    if (!s.ok()) log_warn("node '%s': %s", child->node_name().c_str(), s.msg().c_str());
    if (child->implicit() && child->parents().empty()) graph_->destroy_node(child);
}

Result<BdrvChild *> BlockNode::graph_open_child(const std::string &name, const BlockdevRef &ref, ChildRole role,
                                          bool required)
{
    switch (ref.kind) {
    case BlockdevRef::Kind::kNone:
        if (required) return make_error(EINVAL, "missing required child '%s'", name.c_str());
        return static_cast<BdrvChild *>(nullptr);
    case BlockdevRef::Kind::kNull:
        return static_cast<BdrvChild *>(nullptr);
    case BlockdevRef::Kind::kReference: {
        BlockNode *n = graph_->find(ref.reference);
        if (!n) return make_error(ENOENT, "%s: no node named '%s'", name.c_str(), ref.reference.c_str());
        auto r = attach_child(n, name, role);
        if (!r.ok()) return r.error().prefixed(name);
        return r;
    }
    case BlockdevRef::Kind::kInline: {
        // What QEMU's bdrv_inherited_options() gives an inline child: the
        // parent's read-only (backing children: read-only), force-share and
        // cache modes, and discard=unmap (the top node applies the unmap
        // policy; lower layers must not drop what it lets through). An
        // explicit setting on the child cannot be told from the default
        // here, so inheritance only ever tightens read-only/force-share.
        BlockdevOptions copts = *ref.def;
        if ((role & kRoleCow) || read_only_) copts.read_only = true;
        if (force_share_ && copts.read_only) copts.force_share = true;
        if (opts_.cache_direct) copts.cache_direct = true;
        if (no_flush_) copts.cache_no_flush = true;
        if (copts.discard == BlockdevDiscardOptions::kIgnore) copts.discard = BlockdevDiscardOptions::kUnmap;
        auto nr = graph_->open_node(copts, true);
        if (!nr.ok()) return nr.error().prefixed(name);
        auto r = attach_child(nr.value(), name, role);
        if (!r.ok()) {
            graph_->destroy_node(nr.value());
            return r.error().prefixed(name);
        }
        return r;
    }
    }
    return make_error(EINVAL, "bad child reference");
}

void BlockNode::refresh_limits_all()
{
    BlockLimits bl;
    for (BdrvChild *c : children_) {
        if (c->role() & kRoleCow) continue;
        const BlockLimits &cl = c->node()->limits();
        if (cl.max_transfer && (!bl.max_transfer || cl.max_transfer < bl.max_transfer)) bl.max_transfer = cl.max_transfer;
        bl.opt_transfer = std::max(bl.opt_transfer, cl.opt_transfer);
        bl.min_mem_alignment = std::max(bl.min_mem_alignment, cl.min_mem_alignment);
        bl.opt_mem_alignment = std::max(bl.opt_mem_alignment, cl.opt_mem_alignment);
        bl.max_iov = std::min(bl.max_iov, cl.max_iov);
    }
    refresh_limits(&bl);
    if (bl.request_alignment == 0) bl.request_alignment = 1;
    if (bl.max_transfer) bl.max_transfer &= ~static_cast<uint64_t>(bl.request_alignment - 1);
    bl_ = bl;
}

// ---------------------------------------------------------------- the graph

BlockGraph::BlockGraph(const DriverRegistry *registry) : registry_(registry ? registry : &builtin_drivers()) {}

BlockGraph::~BlockGraph() { close_all(); }

BlockNode *BlockGraph::find(const std::string &name) const
{
    for (auto &n : nodes_) {
        if (n->node_name() == name) return n.get();
    }
    return nullptr;
}

std::vector<BlockNode *> BlockGraph::nodes() const
{
    std::vector<BlockNode *> v;
    for (auto &n : nodes_) v.push_back(n.get());
    return v;
}

std::string BlockGraph::generate_node_name()
{
    // '#' cannot start a user-chosen name, so these never collide.
    for (;;) {
        std::string name = "#block" + std::to_string(auto_name_seq_++);
        if (!find(name)) return name;
    }
}

Result<BlockNode *> BlockGraph::add_node(const BlockdevOptions &opts)
{
    auto r = open_node(opts, false);
    if (!r.ok()) {
        std::string who = opts.node_name.empty() ? "blockdev" : "blockdev '" + opts.node_name + "'";
        return r.error().prefixed(who);
    }
    return r;
}

Result<BlockNode *> BlockGraph::add_node_json(const nlohmann::json &tree)
{
    auto o = blockdev_options_from_tree(*registry_, tree, false);
    if (!o) return o.error();
    return add_node(o.value());
}

Result<BlockNode *> BlockGraph::open_node(const BlockdevOptions &opts, bool implicit)
{
    const BlockDriver *drv = registry_->find(opts.driver);
    if (!drv) return make_error(EINVAL, "unknown driver '%s'", opts.driver.c_str());
    if (!opts.drv) return make_error(EINVAL, "the options of driver '%s' were not decoded", opts.driver.c_str());
    std::string name = opts.node_name;
    if (name.empty()) {
        name = generate_node_name();
    } else {
        if (!node_name_valid(name)) return make_error(EINVAL, "'%s' is not a valid node name", name.c_str());
        if (find(name)) return make_error(EEXIST, "Duplicate nodes with node-name='%s'", name.c_str());
    }
    if (opts.force_share && !opts.read_only) {
        return make_error(EINVAL, "force-share=on can only be used with read-only images");
    }
    std::unique_ptr<BlockNode> node = drv->create();
    node->drv_ = drv;
    node->graph_ = this;
    node->node_name_ = name;
    node->opts_ = opts;
    node->opts_.node_name = name;
    node->implicit_ = implicit;
    node->read_only_ = opts.read_only;
    node->no_flush_ = opts.cache_no_flush;
    node->unmap_ = opts.discard == BlockdevDiscardOptions::kUnmap;
    node->detect_zeroes_ = opts.detect_zeroes;
    node->force_share_ = opts.force_share;
    // Registered before open so that reference lookups during open and
    // destroy_node() on failure see a consistent list.
    BlockNode *n = node.get();
    nodes_.push_back(std::move(node));
    Status s = n->open(opts);
    if (s.ok()) {
        int r = n->refresh_length();
        if (r < 0) s = errno_error(-r, "cannot get the length of node '" + name + "'");
    }
    if (!s.ok()) {
        n->opened_ = false;
        while (!n->children_.empty()) n->detach_child(n->children_.back());
        nodes_.erase(std::find_if(nodes_.begin(), nodes_.end(), [n](auto &p) { return p.get() == n; }));
        return s.error();
    }
    n->opened_ = true;
    n->refresh_limits_all();
    // Permissions the node needs of its children may depend on state set
    // up by open (e.g. read-only decided there): recompute them.
    Status ps = refresh_perms(n);
    if (!ps.ok()) {
        destroy_node(n);
        return ps.error();
    }
    return n;
}

void BlockGraph::destroy_node(BlockNode *n)
{
    if (!n->parents().empty()) {
        log_error("internal: destroying node '%s' that is still in use", n->node_name().c_str());
        return;
    }
    if (n->opened_) {
        if (AioContext::current() && !n->read_only()) {
            int r = run_in_coroutine([n] { return n->co_flush_generic(); });
            if (r < 0) log_warn("node '%s': flush on close failed: %s", n->node_name().c_str(), strerror(-r));
        }
        n->close();
        n->opened_ = false;
    }
    while (!n->children_.empty()) n->detach_child(n->children_.back());
    auto it = std::find_if(nodes_.begin(), nodes_.end(), [n](auto &p) { return p.get() == n; });
    if (it != nodes_.end()) nodes_.erase(it);
}

Status BlockGraph::remove_node(const std::string &name)
{
    BlockNode *n = find(name);
    if (!n) return make_error(ENOENT, "Failed to find node with node-name='%s'", name.c_str());
    if (n->implicit()) return make_error(EBUSY, "Node '%s' is not owned by the user (it was created inline)", name.c_str());
    if (!n->parents().empty()) {
        BdrvChild *p = n->parents().front();
        return make_error(EBUSY, "Node '%s' is busy: it is used as '%s' by %s", name.c_str(), p->name().c_str(),
                          p->parent_desc().c_str());
    }
    destroy_node(n);
    return {};
}

void BlockGraph::close_all()
{
    // Parents before children: repeatedly close nodes nobody uses.
    for (;;) {
        BlockNode *victim = nullptr;
        for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) {
            if ((*it)->parents().empty()) {
                victim = it->get();
                break;
            }
        }
        if (!victim) break;
        destroy_node(victim);
    }
    if (!nodes_.empty()) {
        log_error("closing the graph with %zu nodes still in use by consumers", nodes_.size());
        // Consumers outlive the graph: leak rather than leave them dangling.
        for (auto &n : nodes_) (void)n.release();
        nodes_.clear();
    }
}

} // namespace bg
