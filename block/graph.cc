// The graph: nodes, edges, permissions, opening and teardown.
#include <algorithm>
#include <cstdio>
#include <deque>

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

int DriverHooks::do_co_vmstate(bool write, int64_t pos, int64_t bytes, IOVector &qiov)
{
    BdrvChild *c = self()->file_child();
    return c ? c->node()->co_vmstate(write, pos, bytes, qiov) : -ENOTSUP;
}

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

std::optional<std::string> DriverHooks::changed_driver_option(const BlockdevOptions &next,
                                                              const std::vector<std::string> &changeable) const
{
    // Both encoded without their children: encode() writes exactly the
    // members that differ from their defaults, so equal objects mean
    // equal options.
    auto encoded = [](const BlockdevOptions &o) {
        nlohmann::json j = nlohmann::json::object();
        if (!o.drv) return j;
        DriverOptionsPtr d(o.drv->clone());
        d->for_each_child([](const char *, BlockdevRef &ref) { ref = BlockdevRef{}; });
        d->encode(j);
        return j;
    };
    nlohmann::json now = encoded(self()->options()), want = encoded(next);
    auto ignored = [&changeable](const std::string &k) {
        return std::find(changeable.begin(), changeable.end(), k) != changeable.end();
    };
    for (auto &[k, v] : want.items()) {
        if (ignored(k)) continue;
        if (!now.contains(k) || now[k] != v) return k;
    }
    for (auto &[k, v] : now.items()) {
        if (!ignored(k) && !want.contains(k)) return k;
    }
    return std::nullopt;
}

Status DriverHooks::reopen_prepare(const BlockdevOptions &opts)
{
    if (auto k = changed_driver_option(opts)) return make_error(EINVAL, "Cannot change the option '%s'", k->c_str());
    return {};
}

Status DriverHooks::check_perm(BlockPerm, BlockPerm) { return {}; }
void DriverHooks::set_perm(BlockPerm, BlockPerm) {}
void DriverHooks::abort_perm() {}

void DriverHooks::debug_event(const char *event)
{
    for (BdrvChild *c : self()->children_) c->node()->debug_event(event);
}

void BdrvChild::debug_event(const char *event) { bs_->debug_event(event); }

int DriverHooks::do_debug_set_breakpoint(const std::string &event, const std::string &tag)
{
    BdrvChild *c = self()->file_child();
    return c ? c->node()->debug_set_breakpoint(event, tag) : -ENOTSUP;
}

int DriverHooks::do_debug_remove_breakpoint(const std::string &tag)
{
    BdrvChild *c = self()->file_child();
    return c ? c->node()->debug_remove_breakpoint(tag) : -ENOTSUP;
}

int DriverHooks::do_debug_resume_request(const std::string &tag)
{
    BdrvChild *c = self()->file_child();
    return c ? c->node()->debug_resume_request(tag) : -ENOTSUP;
}

bool DriverHooks::do_debug_is_suspended(const std::string &tag)
{
    BdrvChild *c = self()->file_child();
    return c ? c->node()->debug_is_suspended(tag) : false;
}

int BlockNode::debug_set_breakpoint(const std::string &event, const std::string &tag)
{
    return do_debug_set_breakpoint(event, tag);
}
int BlockNode::debug_remove_breakpoint(const std::string &tag) { return do_debug_remove_breakpoint(tag); }
int BlockNode::debug_resume_request(const std::string &tag) { return do_debug_resume_request(tag); }
bool BlockNode::debug_is_suspended(const std::string &tag) { return do_debug_is_suspended(tag); }

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
    if (read_only_ && (cum & (kPermWrite | kPermWriteUnchanged | kPermResize))) {
        if (reopen_dropping_write_) {
            return make_error(EPERM, "Read-only block node '%s' cannot support read-write users",
                              node_name_.c_str());
        }
        if (graph_->change_texts_) return make_error(EPERM, "Block node is read-only");
        return make_error(EPERM, "node '%s' is read-only", node_name_.c_str());
    }
    for (BdrvChild *a : parents_) {
        for (BdrvChild *b : parents_) {
            if (a == b) continue;
            BlockPerm clash = a->perm() & ~b->shared();
            if (!clash) continue;
            // QEMU's text.
            auto user = [this](BdrvChild *c) {
                return c->parent_desc() + " (uses node '" + node_name_ + "' as '" + c->name() + "' child)";
            };
            return make_error(EPERM, "Permission conflict on node '%s': permissions '%s' are both required by %s "
                                     "and unshared by %s.",
                              node_name_.c_str(), perm_names(clash).c_str(), user(a).c_str(), user(b).c_str());
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

Status BlockGraph::refresh_perms(BlockNode *node) { return refresh_perms(std::vector<BlockNode *>{node}); }

Status BlockGraph::refresh_perms(const std::vector<BlockNode *> &nodes)
{
    std::vector<std::pair<BdrvChild *, std::pair<BlockPerm, BlockPerm>>> undo;
    std::vector<BlockNode *> checked;
    Status s;
    for (BlockNode *node : nodes) {
        s = node->update_perms(&undo, &checked);
        if (!s.ok()) break;
    }
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
        // policy; lower layers must not drop what it lets through) unless
        // the child names its own discard. Inheritance only ever tightens
        // read-only/force-share.
        BlockdevOptions copts = *ref.def;
        if ((role & kRoleCow) || read_only_) copts.read_only = true;
        if (force_share_ && copts.read_only) copts.force_share = true;
        if (opts_.cache_direct) copts.cache_direct = true;
        if (no_flush_) copts.cache_no_flush = true;
        if (!copts.discard_set) copts.discard = BlockdevDiscardOptions::kUnmap;
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

// ---------------------------------------------------------------- graph changes: edges

void BlockNode::shift_parent_drain(BdrvChild *c, int delta)
{
    for (; delta > 0; delta--) {
        if (BlockBackend *b = c->parent_backend_) b->quiesce_counter_.fetch_add(1);
        if (BlockNode *n = c->parent_node_) n->drained_begin_no_poll();
    }
    for (; delta < 0; delta++) {
        if (BlockBackend *b = c->parent_backend_) b->drained_end();
        if (BlockNode *n = c->parent_node_) n->drained_end();
    }
}

void BlockNode::graph_move_parent(BdrvChild *c)
{
    BlockNode *from = c->bs_;
    if (from == this) return;
    shift_parent_drain(c, quiesce_counter_.load() - from->quiesce_counter_.load());
    from->parents_.erase(std::find(from->parents_.begin(), from->parents_.end(), c));
    c->bs_ = this;
    parents_.push_back(c);
}

BdrvChild *BlockNode::graph_link_child(BlockNode *child, const std::string &name, ChildRole role)
{
    auto *c = new BdrvChild;
    c->name_ = name;
    c->bs_ = child;
    c->parent_node_ = this;
    c->role_ = role;
    child_perm(role, cumulative_perm(), cumulative_shared(), &c->perm_, &c->shared_);
    if (child->force_share_) c->shared_ = kPermAll;
    graph_relink_child(c, children_.size());
    return c;
}

size_t BlockNode::graph_unlink_child(BdrvChild *c)
{
    BlockNode *child = c->node();
    for (int i = child->quiesce_counter_.load(); i > 0; i--) drained_end();
    auto it = std::find(children_.begin(), children_.end(), c);
    size_t index = static_cast<size_t>(it - children_.begin());
    children_.erase(it);
    child->parents_.erase(std::find(child->parents_.begin(), child->parents_.end(), c));
    return index;
}

void BlockNode::graph_relink_child(BdrvChild *c, size_t index)
{
    c->bs_->parents_.push_back(c);
    children_.insert(children_.begin() + static_cast<std::ptrdiff_t>(std::min(index, children_.size())), c);
    for (int i = c->bs_->quiesce_counter_.load(); i > 0; i--) drained_begin_no_poll();
}

bool BlockNode::reaches(const BlockNode *n) const
{
    if (this == n) return true;
    for (BdrvChild *c : children_) {
        if (c->node()->reaches(n)) return true;
    }
    return false;
}

// ---------------------------------------------------------------- graph changes: snapshot, replace

namespace {

// Drains the given nodes (each once) for the lifetime of the guard.
class DrainGuard {
  public:
    explicit DrainGuard(std::vector<BlockNode *> nodes) : nodes_(std::move(nodes))
    {
        std::sort(nodes_.begin(), nodes_.end());
        nodes_.erase(std::unique(nodes_.begin(), nodes_.end()), nodes_.end());
        for (BlockNode *n : nodes_) n->drained_begin();
    }
    ~DrainGuard()
    {
        for (BlockNode *n : nodes_) n->drained_end();
    }
    DrainGuard(const DrainGuard &) = delete;
    DrainGuard &operator=(const DrainGuard &) = delete;

  private:
    std::vector<BlockNode *> nodes_;
};

// Sets a flag for the lifetime of the guard.
struct FlagGuard {
    bool &flag;
    explicit FlagGuard(bool &f) : flag(f) { flag = true; }
    ~FlagGuard() { flag = false; }
};

} // namespace

Status BlockGraph::snapshot_overlay(BlockNode *node, BlockNode *overlay)
{
    for (BdrvChild *p : node->parents()) {
        if (p->parent_node() && (p->role() & kRoleCow)) {
            return make_error(EBUSY, "Node '%s' is busy: node is used as backing hd of '%s'",
                              node->node_name().c_str(), p->parent_node()->node_name().c_str());
        }
    }
    if (overlay->cumulative_perm() & kPermConsistentRead) return make_error(EBUSY, "The overlay is already in use");
    if (overlay->driver()->kind == BlockDriverKind::kFilter) {
        return make_error(EINVAL, "Filters cannot be used as overlays");
    }
    if (overlay->backing_child()) return make_error(EINVAL, "The overlay already has a backing image");
    if (!(overlay->driver()->caps & kCapBacking)) {
        return make_error(EINVAL, "The overlay does not support backing images");
    }
    if (node->reaches(overlay)) {
        return make_error(EINVAL, "Making '%s' a backing child of '%s' would create a cycle",
                          node->node_name().c_str(), overlay->node_name().c_str());
    }
    DrainGuard drained({node, overlay});
    if (!node->read_only()) {
        int r = run_in_coroutine([node] { return node->co_flush_generic(); });
        if (r < 0) return make_error(-r, "An IO error has occurred");
    }
    FlagGuard texts(change_texts_);
    const std::vector<BdrvChild *> moved = node->parents();
    for (BdrvChild *c : moved) overlay->graph_move_parent(c);
    BdrvChild *b = overlay->graph_link_child(node, "backing", kRoleCow);
    Status s = refresh_perms({overlay, node});
    if (!s.ok()) {
        overlay->graph_unlink_child(b);
        delete b;
        for (BdrvChild *c : moved) node->graph_move_parent(c);
        return s;
    }
    overlay->refresh_limits_all();
    for (BdrvChild *c : moved) {
        if (c->parent_node()) c->parent_node()->refresh_limits_all();
    }
    return {};
}

void BlockGraph::snapshot_overlay_undo(BlockNode *node, BlockNode *overlay)
{
    BdrvChild *b = overlay->backing_child();
    if (!b || b->node() != node) {
        log_error("internal: undoing a snapshot: '%s' is not the backing child of '%s'", node->node_name().c_str(),
                  overlay->node_name().c_str());
        return;
    }
    DrainGuard drained({node, overlay});
    overlay->graph_unlink_child(b);
    const std::vector<BdrvChild *> moved = overlay->parents();
    for (BdrvChild *c : moved) node->graph_move_parent(c);
    delete b;
    // Every edge is back where it was, with the permissions it had then:
    // the check cannot find a conflict that was not there before.
    Status s = refresh_perms({node, overlay});
    if (!s.ok()) log_error("undoing a snapshot of '%s': %s", node->node_name().c_str(), s.msg().c_str());
    overlay->refresh_limits_all();
    for (BdrvChild *c : moved) {
        if (c->parent_node()) c->parent_node()->refresh_limits_all();
    }
}

Status BlockGraph::replace_node(BlockNode *from, BlockNode *to)
{
    if (from == to) return {};
    DrainGuard drained({from, to});
    FlagGuard texts(change_texts_);
    std::vector<BdrvChild *> moved;
    for (BdrvChild *c : from->parents()) {
        if (c->parent_node() && to->reaches(c->parent_node())) continue;
        moved.push_back(c);
    }
    for (BdrvChild *c : moved) to->graph_move_parent(c);
    // from first: it lost parents, so what it needs of its children (to,
    // when from is a filter above to) is released before to's new parents
    // are checked.
    Status s = refresh_perms({from, to});
    if (!s.ok()) {
        for (BdrvChild *c : moved) from->graph_move_parent(c);
        return s;
    }
    for (BdrvChild *c : moved) {
        if (c->parent_node()) c->parent_node()->refresh_limits_all();
    }
    return {};
}

// ---------------------------------------------------------------- graph changes: reopen

// One node of a reopen: named in the list, or an implicit child following
// its parent's read-only.
struct BlockGraph::ReopenEntry {
    BlockNode *node = nullptr;
    BlockdevOptions opts;     // the complete new options
    bool old_ro = false;
    bool prepared = false;
};

struct BlockGraph::ReopenTxn {
    // A child edge that changes: retarget (file/backing to another node),
    // attach (a backing where there was none), detach (backing null).
    struct Edge {
        enum class Kind { kRetarget, kAttach, kDetach } kind;
        BlockNode *parent = nullptr;
        std::string name;
        BdrvChild *edge = nullptr;       // the existing edge; kAttach: the new one once applied
        BlockNode *target = nullptr;     // kRetarget, kAttach: the new child
        BlockNode *old_child = nullptr;  // kRetarget, kDetach
        size_t index = 0;                // kDetach: its place among the parent's children
    };
    std::deque<ReopenEntry> entries;   // a deque: references stay valid while it grows
    std::vector<Edge> edges;
    bool has(const BlockNode *n) const
    {
        return std::any_of(entries.begin(), entries.end(), [n](const ReopenEntry &e) { return e.node == n; });
    }
};

namespace {

// nodes ordered so that a node comes before every node below it
// (parents_first) or after it.
std::vector<BlockNode *> graph_order(std::vector<BlockNode *> nodes, bool parents_first)
{
    std::sort(nodes.begin(), nodes.end());
    nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
    std::vector<BlockNode *> out;
    while (!nodes.empty()) {
        // A node no other remaining node is below of.
        for (size_t i = 0; i < nodes.size(); i++) {
            bool top = std::none_of(nodes.begin(), nodes.end(),
                                    [&](BlockNode *o) { return o != nodes[i] && o->reaches(nodes[i]); });
            if (!top) continue;
            out.push_back(nodes[i]);
            nodes.erase(nodes.begin() + static_cast<std::ptrdiff_t>(i));
            break;
        }
    }
    if (!parents_first) std::reverse(out.begin(), out.end());
    return out;
}

Error cannot_change(const char *key) { return make_error(EINVAL, "Cannot change the option '%s'", key); }

} // namespace

Status BlockGraph::reopen_plan(const std::vector<BlockdevOptions> &opts, ReopenTxn *t)
{
    for (const BlockdevOptions &o : opts) {
        BlockNode *n = find(o.node_name);
        if (!n) return make_error(ENOENT, "Failed to find node with node-name='%s'", o.node_name.c_str());
        auto it = std::find_if(t->entries.begin(), t->entries.end(), [n](const ReopenEntry &e) { return e.node == n; });
        if (it != t->entries.end()) {
            it->opts = o;   // named twice: the later options win
            continue;
        }
        t->entries.push_back(ReopenEntry{n, o});
    }
    // Implicit children are appended while planning their parents.
    for (size_t i = 0; i < t->entries.size(); i++) BG_TRY(reopen_plan_entry(i, t));
    return {};
}

Status BlockGraph::reopen_plan_entry(size_t i, ReopenTxn *t)
{
    ReopenEntry &e = t->entries[i];
    BlockNode *n = e.node;
    const BlockdevOptions &cur = n->options();
    BlockdevOptions &o = e.opts;
    if (o.driver != n->driver_name()) return cannot_change("driver");
    if (o.force_share != cur.force_share) return cannot_change("force-share");
    if (o.force_share && !o.read_only) {
        return make_error(EINVAL, "force-share=on can only be used with read-only images");
    }
    if (!o.drv) return make_error(EINVAL, "the options of driver '%s' were not decoded", o.driver.c_str());
    o.node_name = n->node_name();
    o.check_repair = cur.check_repair;
    o.probed = cur.probed;
    e.old_ro = n->read_only();
    std::vector<std::pair<std::string, BlockdevRef *>> refs;
    o.drv->for_each_child([&refs](const char *key, BlockdevRef &ref) { refs.push_back({key, &ref}); });
    for (auto &[key, ref] : refs) BG_TRY(reopen_plan_child(i, key.c_str(), *ref, t));
    return {};
}

Status BlockGraph::reopen_plan_child(size_t i, const char *key, BlockdevRef &ref, ReopenTxn *t)
{
    BlockNode *n = t->entries[i].node;
    const bool new_ro = t->entries[i].opts.read_only;
    BdrvChild *cur = n->child(key);
    const bool is_backing = cur ? (cur->role() & kRoleCow) != 0 : std::string(key) == "backing";
    // An implicit (inline) child follows its parent's read-only, with its
    // current options or the inline definition given now.
    auto follow = [&](const BlockdevOptions *def) {
        BlockNode *c = cur->node();
        if (!c->implicit() || (cur->role() & kRoleCow) || t->has(c)) return;
        ReopenEntry ce{c, def ? *def : c->options()};
        const BlockdevOptions &po = t->entries[i].opts;
        ce.opts.read_only = def ? (def->read_only || new_ro) : new_ro;
        if (!def) ce.opts.cache_direct = po.cache_direct;
        if (def) {
            // What an inline child inherits at open (graph_open_child).
            if (po.cache_direct) ce.opts.cache_direct = true;
            if (po.cache_no_flush) ce.opts.cache_no_flush = true;
            if (po.force_share && ce.opts.read_only) ce.opts.force_share = true;
            if (!ce.opts.discard_set) ce.opts.discard = BlockdevDiscardOptions::kUnmap;
        }
        t->entries.push_back(std::move(ce));
    };
    using Edge = ReopenTxn::Edge;
    switch (ref.kind) {
    case BlockdevRef::Kind::kNone:
        if (cur && is_backing) return make_error(EINVAL, "backing is missing for '%s'", n->node_name().c_str());
        if (cur) follow(nullptr);
        return {};
    case BlockdevRef::Kind::kNull:
        if (!is_backing) return cannot_change(key);
        if (cur) t->edges.push_back(Edge{Edge::Kind::kDetach, n, key, cur, nullptr, cur->node()});
        return {};
    case BlockdevRef::Kind::kReference: {
        BlockNode *target = find(ref.reference);
        if (!target) return make_error(ENOENT, "Cannot find device='' nor node-name='%s'", ref.reference.c_str());
        if (cur && cur->node() == target) {
            follow(nullptr);
            return {};
        }
        if (!is_backing && (!cur || std::string(key) != "file")) return cannot_change(key);
        if (target->reaches(n)) {
            return make_error(EINVAL, "Making '%s' a %s child of '%s' would create a cycle", target->node_name().c_str(),
                              is_backing ? "backing" : "file", n->node_name().c_str());
        }
        if (cur) {
            t->edges.push_back(Edge{Edge::Kind::kRetarget, n, key, cur, target, cur->node()});
        } else {
            t->edges.push_back(Edge{Edge::Kind::kAttach, n, key, nullptr, target, nullptr});
        }
        return {};
    }
    case BlockdevRef::Kind::kInline:
        if (!cur || !cur->node()->implicit()) return cannot_change(key);
        follow(ref.def.get());
        return {};
    }
    return cannot_change(key);
}

void BlockGraph::reopen_undo_edges(ReopenTxn *t)
{
    using Kind = ReopenTxn::Edge::Kind;
    for (auto it = t->edges.rbegin(); it != t->edges.rend(); ++it) {
        switch (it->kind) {
        case Kind::kRetarget: it->old_child->graph_move_parent(it->edge); break;
        case Kind::kAttach:
            if (!it->edge) break;
            it->parent->graph_unlink_child(it->edge);
            delete it->edge;
            it->edge = nullptr;
            break;
        case Kind::kDetach: it->parent->graph_relink_child(it->edge, it->index); break;
        }
    }
}

// Prepares every node, then puts the new read-only states and edges in
// place and checks the permissions; on failure everything is put back.
Status BlockGraph::reopen_apply(ReopenTxn *t)
{
    auto abort_prepared = [t] {
        for (auto it = t->entries.rbegin(); it != t->entries.rend(); ++it) {
            if (it->prepared) it->node->reopen_abort();
        }
    };
    for (ReopenEntry &e : t->entries) {
        if (!e.node->read_only()) {
            BlockNode *n = e.node;
            int r = run_in_coroutine([n] { return n->co_flush_generic(); });
            if (r < 0) {
                abort_prepared();
                return errno_error(-r, "Error flushing drive");
            }
        }
        e.prepared = true;   // reopen_abort is safe after a failed prepare
        Status s = e.node->reopen_prepare(e.opts);
        if (!s.ok()) {
            abort_prepared();
            return s;
        }
    }
    std::vector<BlockNode *> roots;
    for (ReopenEntry &e : t->entries) {
        e.node->read_only_ = e.opts.read_only;
        e.node->reopen_dropping_write_ = !e.old_ro && e.opts.read_only;
        roots.push_back(e.node);
    }
    using Kind = ReopenTxn::Edge::Kind;
    for (ReopenTxn::Edge &ed : t->edges) {
        switch (ed.kind) {
        case Kind::kRetarget: ed.target->graph_move_parent(ed.edge); break;
        case Kind::kAttach: ed.edge = ed.parent->graph_link_child(ed.target, ed.name, kRoleCow); break;
        case Kind::kDetach: ed.index = ed.parent->graph_unlink_child(ed.edge); break;
        }
        for (BlockNode *x : {ed.target, ed.old_child}) {
            if (x) roots.push_back(x);
        }
    }
    // Parents first: a child is checked against its parents' new needs.
    Status s = refresh_perms(graph_order(roots, true));
    for (ReopenEntry &e : t->entries) e.node->reopen_dropping_write_ = false;
    if (!s.ok()) {
        reopen_undo_edges(t);
        for (ReopenEntry &e : t->entries) e.node->read_only_ = e.old_ro;
        abort_prepared();
    }
    return s;
}

// Commits children before parents, then records the options. Implicit
// children left without a parent are destroyed by reopen() once the
// drains are over.
void BlockGraph::reopen_commit(ReopenTxn *t)
{
    std::vector<BlockNode *> nodes;
    for (ReopenEntry &e : t->entries) nodes.push_back(e.node);
    for (BlockNode *n : graph_order(nodes, false)) {
        n->reopen_commit();
        int r = n->refresh_length();   // e.g. a raw window moved
        if (r < 0) log_warn("node '%s': cannot get the length after reopening: %s", n->node_name().c_str(), strerror(-r));
    }
    for (ReopenEntry &e : t->entries) {
        BlockNode *n = e.node;
        n->opts_ = e.opts;
        n->no_flush_ = e.opts.cache_no_flush;
        n->unmap_ = e.opts.discard == BlockdevDiscardOptions::kUnmap;
        n->detect_zeroes_ = e.opts.detect_zeroes;
    }
    for (ReopenTxn::Edge &ed : t->edges) {
        if (ed.kind == ReopenTxn::Edge::Kind::kDetach) delete ed.edge;
    }
    // Limits may have changed (O_DIRECT alignment, a new child): every node
    // concerned and everything above it, children first.
    std::vector<BlockNode *> up;
    for (ReopenTxn::Edge &ed : t->edges) nodes.push_back(ed.parent);
    for (size_t k = 0; k < nodes.size(); k++) {
        up.push_back(nodes[k]);
        for (BdrvChild *p : nodes[k]->parents()) {
            if (p->parent_node()) nodes.push_back(p->parent_node());
        }
    }
    for (BlockNode *n : graph_order(up, false)) n->refresh_limits_all();
}

Status BlockGraph::reopen(const std::vector<BlockdevOptions> &opts)
{
    ReopenTxn t;
    BG_TRY(reopen_plan(opts, &t));
    {
        std::vector<BlockNode *> drain;
        for (ReopenEntry &e : t.entries) drain.push_back(e.node);
        for (ReopenTxn::Edge &ed : t.edges) {
            for (BlockNode *x : {ed.target, ed.old_child}) {
                if (x) drain.push_back(x);
            }
        }
        DrainGuard drained(drain);
        FlagGuard texts(change_texts_);
        BG_TRY(reopen_apply(&t));
        reopen_commit(&t);
    }
    std::vector<BlockNode *> orphans;
    for (ReopenTxn::Edge &ed : t.edges) {
        BlockNode *old = ed.old_child;
        if (old && old->implicit() && old->parents().empty()) orphans.push_back(old);
    }
    std::sort(orphans.begin(), orphans.end());
    orphans.erase(std::unique(orphans.begin(), orphans.end()), orphans.end());
    for (BlockNode *old : orphans) destroy_node(old);
    return {};
}

Status BlockGraph::set_read_only(BlockNode *node, bool read_only)
{
    BlockdevOptions o = node->dump_options();
    o.read_only = read_only;
    return reopen({o});
}

} // namespace bg
