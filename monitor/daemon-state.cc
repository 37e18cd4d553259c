// monitor/daemon-state.cc -- see daemon-state.h.
#include "monitor/daemon-state.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "export/nbd.h"
#include "qapi/user-object.h"
#include "util/user-objects.h"
#include "monitor/qmp.h"
#include "util/aio.h"
#include "util/log.h"

namespace bg {


std::string canonical_mountpoint(const std::string &mountpoint)
{
    std::string dir, base;
    size_t slash = mountpoint.find_last_of('/');
    if (slash == std::string::npos) {
        dir = ".";
        base = mountpoint;
    } else {
        dir = slash == 0 ? "/" : mountpoint.substr(0, slash);
        base = mountpoint.substr(slash + 1);
    }
    if (base.empty() || base == "." || base == "..") {
        // Not a file name: resolve all of it (never one of our FUSE files).
        char *real = realpath(mountpoint.c_str(), nullptr);
        if (real) {
            std::string r = real;
            free(real);
            return r;
        }
        dir = mountpoint;
        base.clear();
    }
    std::string rdir;
    if (char *real = realpath(dir.c_str(), nullptr)) {
        rdir = real;
        free(real);
    } else if (dir[0] == '/') {
        rdir = dir;
    } else {
        char cwd[PATH_MAX];
        rdir = getcwd(cwd, sizeof(cwd)) ? std::string(cwd) + "/" + dir : dir;
    }
    if (base.empty()) return rdir;
    return rdir == "/" ? "/" + base : rdir + "/" + base;
}

// ---------------------------------------------------------------- Daemon

Daemon::Daemon(const DaemonConfig &cfg, GMainLoop *loop)
    : cfg_(cfg), loop_(loop), graph_(std::make_unique<BlockGraph>())
{
    reap_bh_ = AioContext::current()->bh_new(&Daemon::reap_gone, this);
    jobs_ = std::make_unique<JobManager>(
        [this](const std::string &name, const nlohmann::json &data) { emit_event(name, data); });
}

Daemon::~Daemon()
{
    teardown();
    delete reap_bh_;
}

void Daemon::use_graph(std::unique_ptr<BlockGraph> graph)
{
    assert(!graph_used_ && graph);
    graph_ = std::move(graph);
    graph_used_ = true;
}

Status Daemon::add_blockdev(const BlockdevOptions &opts)
{
    if (opts.node_name.empty()) return make_error(EINVAL, "'node-name' must be specified for the root node");
    graph_used_ = true;
    Result<BlockNode *> n = graph_->add_node(opts);
    if (!n) return n.error();
    log_info("blockdev '%s' (%s) opened", n.value()->node_name().c_str(), n.value()->driver_name());
    return {};
}

Status Daemon::del_blockdev(const std::string &node_name)
{
    BlockNode *n = graph_->find(node_name);
    if (!n) return make_error(ENOENT, "Failed to find node with node-name='%s'", node_name.c_str());
    if (n->implicit()) return make_error(EPERM, "Node %s is not owned by the monitor", node_name.c_str());
    for (BdrvChild *p : n->parents()) {
        if (p->parent_backend()) return make_error(EBUSY, "Node %s is in use", node_name.c_str());
    }
    if (!n->parents().empty()) return make_error(EBUSY, "Block device %s is in use", node_name.c_str());
    BG_TRY(graph_->remove_node(node_name));
    log_info("blockdev '%s' closed", node_name.c_str());
    return {};
}

IoThread *Daemon::find_iothread(const std::string &id) const
{
    for (auto &t : iothreads_) {
        if (t.thread->id() == id) return t.thread.get();
    }
    return nullptr;
}

Status Daemon::add_iothread(const IoThreadOptions &opts)
{
    if (find_iothread(opts.id) || tls_object_exists(opts.id)) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')",
                          opts.id.c_str());
    }
    auto t = IoThread::create(opts.id);
    if (!t) return t.error();
    struct Init {
        const IoThreadOptions::Poll *poll;
        int64_t tid;
    } init{&opts.poll, 0};
    t.value()->run_sync(
        [](void *o) {
            auto *in = static_cast<Init *>(o);
            AioContext *ctx = AioContext::current();
            const int64_t max = in->poll->max_ns ? static_cast<int64_t>(*in->poll->max_ns) : ctx->poll_max_ns();
            ctx->set_poll_params(max, static_cast<int64_t>(in->poll->grow), static_cast<int64_t>(in->poll->shrink));
            in->tid = static_cast<int64_t>(syscall(SYS_gettid));
        },
        &init);
    Thread entry;
    entry.thread = std::move(t.value());
    entry.opts = opts;
    entry.tid = init.tid;
    iothreads_.push_back(std::move(entry));
    return {};
}

Status Daemon::del_iothread(const std::string &id)
{
    for (size_t i = 0; i < iothreads_.size(); i++) {
        if (iothreads_[i].thread->id() != id) continue;
        for (auto &e : exports_) {
            for (auto &name : e.iothreads) {
                if (name == id) return make_error(EBUSY, "object '%s' is in use, can not be deleted", id.c_str());
            }
        }
        iothreads_[i].thread->stop();
        iothreads_.erase(iothreads_.begin() + static_cast<long>(i));
        return {};
    }
    return make_error(ENOENT, "object '%s' not found", id.c_str());
}

Status Daemon::add_tls_object(const TlsObjectOptions &opts)
{
    if (find_iothread(opts.id())) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')",
                          opts.id().c_str());
    }
    return tls_object_add(opts);
}

Status Daemon::add_user_object(const nlohmann::json &tree, bool from_keyval)
{
    const std::string id = tree["id"].get<std::string>();
    if (find_iothread(id)) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')", id.c_str());
    }
    return user_object_add_tree(tree, from_keyval);
}

Status Daemon::del_object(const std::string &id)
{
    if (user_object_find(id)) return user_object_del(id);
    if (tls_object_exists(id)) return tls_object_del(id);
    return del_iothread(id);
}

std::vector<Daemon::IoThreadInfo> Daemon::iothreads() const
{
    std::vector<IoThreadInfo> out;
    for (auto &t : iothreads_) out.push_back({t.thread->id(), t.tid, t.opts});
    return out;
}

Status Daemon::add_export(const BlockExportOptions &opts)
{
    const bool fuse = opts.type == "fuse";
    std::string key = fuse ? canonical_mountpoint(opts.fuse.mountpoint) : std::string();
    for (auto &e : exports_) {
        if (e.id == opts.id) return make_error(EEXIST, "Block export id '%s' is already in use", opts.id.c_str());
    }
    for (auto &e : exports_) {
        if (!fuse) break;
        // Checked here: the export itself would stat() the mountpoint, which
        // we serve ourselves.
        if (e.mount_key == key) {
            return make_error(EBUSY, "mountpoint '%s' is used by export '%s' already", opts.fuse.mountpoint.c_str(),
                              e.id.c_str());
        }
    }
    std::vector<IoThread *> threads;
    for (const std::string &name : opts.iothreads) {
        IoThread *found = find_iothread(name);
        if (!found) {
            return make_error(ENOENT, "export '%s': iothread '%s' does not exist", opts.id.c_str(), name.c_str());
        }
        threads.push_back(found);
    }
    auto exp = block_export_create(*graph_, opts, threads, [this](BlockExport *e) { on_export_gone(e); });
    if (!exp) return exp.error();
    Entry entry;
    entry.exp = std::move(exp.value());
    entry.id = opts.id;
    entry.mount_key = std::move(key);
    entry.mountpoint = opts.fuse.mountpoint;
    entry.node_name = opts.node_name;
    entry.iothreads = opts.iothreads;
    exports_.push_back(std::move(entry));
    return {};
}

Status Daemon::del_export(const std::string &id, bool hard)
{
    for (auto &e : exports_) {
        if (e.id != id || e.deleting || !e.exp) continue;
        if (hard) e.exp->drop_clients();
        else BG_TRY(e.exp->check_safe_delete());
        e.deleting = true;
        log_info("export '%s': deleted by the monitor", id.c_str());
        // shutdown() may yield; the entry stays in the list (marked) until
        // it has finished, so that its id is not reused meanwhile.
        BlockExport *exp = e.exp.get();
        exp->shutdown();
        for (size_t j = 0; j < exports_.size(); j++) {
            if (exports_[j].exp.get() == exp) {
                finish_export(exports_[j]);
                exports_.erase(exports_.begin() + static_cast<long>(j));
                break;
            }
        }
        emit_event("BLOCK_EXPORT_DELETED", {{"id", id}});
        return {};
    }
    return make_error(ENOENT, "Export '%s' is not found", id.c_str());
}

Status Daemon::nbd_server_start(const NbdServerOptions &opts) { return bg::nbd_server_start(opts); }

bool Daemon::nbd_server_running() const { return bg::nbd_server_running(); }

Status Daemon::nbd_server_stop()
{
    if (!bg::nbd_server_running()) return make_error(ENOENT, "NBD server not running");
    std::vector<std::string> ids;
    for (auto &e : exports_) {
        if (e.exp && e.exp->type() == "nbd" && !e.deleting) ids.push_back(e.id);
    }
    // Oldest first, as QEMU deletes them.
    for (size_t i = 0; i < ids.size(); i++) {
        Status st = del_export(ids[i], true);
        (void)st;   // gone meanwhile
    }
    return bg::nbd_server_stop();
}

std::vector<Daemon::ExportInfo> Daemon::exports() const
{
    std::vector<ExportInfo> out;
    for (auto &e : exports_) {
        if (!e.exp) continue;
        BlockNode *n = e.exp->node();
        out.push_back({e.id, e.exp->type(), n ? n->node_name() : e.node_name, e.deleting || e.gone});
    }
    return out;
}

Status Daemon::check_no_bypass(BlockNode *n) const
{
    for (auto &e : exports_) {
        if (!e.exp || !e.exp->bypasses_graph()) continue;
        BlockNode *top = e.exp->node();
        if (top && (top == n || top->reaches(n))) {
            return make_error(EBUSY,
                              "Node '%s' is busy: export '%s' uses FUSE passthrough (the kernel writes the host file "
                              "directly); add it with passthrough=off to change the graph under it",
                              n->node_name().c_str(), e.id.c_str());
        }
    }
    return {};
}

QmpServer &Daemon::qmp()
{
    if (!qmp_) qmp_ = std::make_unique<QmpServer>(*this);
    return *qmp_;
}

bool Daemon::has_monitors() const { return qmp_ && qmp_->monitor_count() > 0; }

void Daemon::emit_event(const std::string &name, const nlohmann::json &data)
{
    if (qmp_) qmp_->broadcast_event(name, data);
}

void Daemon::print_stats() const
{
    std::string text;
    for (auto &e : exports_) {
        if (e.exp) text += e.exp->stats_text();
    }
    if (text.empty()) text = "no exports\n";
    if (text.back() != '\n') text += '\n';
    ssize_t r = write(STDERR_FILENO, text.data(), text.size());
    (void)r;
}

void Daemon::request_stop()
{
    stop_requested_ = true;
    if (g_main_loop_is_running(loop_)) g_main_loop_quit(loop_);
}

void Daemon::on_export_gone(BlockExport *e)
{
    for (auto &entry : exports_) {
        if (entry.exp.get() == e) entry.gone = true;
    }
    // Not here: the export is still on the stack that called us.
    reap_bh_->schedule();
}

void Daemon::reap_gone(void *opaque)
{
    auto *d = static_cast<Daemon *>(opaque);
    if (d->tearing_down_) return;   // teardown() finishes every export itself
    for (size_t i = 0; i < d->exports_.size();) {
        if (d->exports_[i].gone && !d->exports_[i].deleting) {
            const std::string id = d->exports_[i].id;
            log_info("export '%s' went away", id.c_str());
            d->finish_export(d->exports_[i]);
            d->exports_.erase(d->exports_.begin() + static_cast<long>(i));
            d->emit_event("BLOCK_EXPORT_DELETED", {{"id", id}});
        } else {
            i++;
        }
    }
    // With a monitor the daemon serves on (QEMU's behaviour): exports can
    // be added again.
    if (d->exports_.empty() && !d->has_monitors()) {
        log_info("no exports left, shutting down");
        d->request_stop();
    }
}

void Daemon::finish_export(Entry &e)
{
    if (!e.exp) return;
    e.exp->shutdown();
    if (cfg_.stats) {
        std::string text = e.exp->stats_text();
        if (text.empty() || text.back() != '\n') text += '\n';
        ssize_t r = write(STDERR_FILENO, text.data(), text.size());
        (void)r;
    }
    e.exp.reset();
}

void Daemon::teardown()
{
    if (tearing_down_) return;
    tearing_down_ = true;
    // The monitors first: no command may start while the graph goes away.
    if (qmp_) qmp_->close_all();
    // Jobs next, as QEMU's quit: each is cancelled (its filters leave the
    // graph, its images stay consistent) before the exports go.
    if (jobs_) jobs_->cancel_all_sync();
    // shutdown() may run the loop (drain); an export going away meanwhile
    // only marks its entry.
    for (size_t i = 0; i < exports_.size(); i++) {
        if (exports_[i].exp) exports_[i].exp->drop_clients();
        finish_export(exports_[i]);
    }
    exports_.clear();
    if (bg::nbd_server_running()) {
        Status st = bg::nbd_server_stop();
        (void)st;
    }
    for (auto &t : iothreads_) t.thread->stop();
    iothreads_.clear();
    if (graph_) graph_->close_all();
    graph_.reset();
    qmp_.reset();
}

} // namespace bg
