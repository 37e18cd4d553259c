// The process-wide NBD server: the listening socket, accepting within
// max-connections, the connections and the table of exports by name.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "export/nbd/internal.h"
#include "util/log.h"
#include "util/tls.h"

namespace bg {

namespace {
NbdServer *g_server = nullptr;
NbdClientHook g_client_hook;
} // namespace

NbdServer *NbdServer::instance() { return g_server; }

Status NbdServer::start(const NbdServerOptions &opts)
{
    if (g_server) return make_error(EBUSY, "NBD server already running");
    std::shared_ptr<TlsCreds> creds;
    if (!opts.tls_creds.empty()) {
        creds = tls_creds_find(opts.tls_creds);
        if (!creds) return make_error(ENOENT, "No TLS credentials with id '%s'", opts.tls_creds.c_str());
        if (!creds->is_server()) return make_error(EINVAL, "Expecting TLS credentials with a server endpoint");
    }
    std::string unix_path;
    if (opts.addr.type == SocketAddress::Type::kUnix) {
        // A socket file left by an earlier server is replaced (as QEMU
        // does); any other file is not touched and bind fails on it.
        struct stat st;
        if (lstat(opts.addr.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(opts.addr.path.c_str());
        unix_path = opts.addr.path;
    }
    Result<int> fd = socket_listen(opts.addr, 128);
    if (!fd) return fd.error();
    auto *s = new NbdServer();
    s->opts_ = opts;
    s->tls_creds_ = std::move(creds);
    s->ctx_ = AioContext::current();
    s->listen_fd_ = fd.value();
    s->unix_path_ = unix_path;
    s->client_hook_ = g_client_hook;
    g_server = s;
    s->update_accepting();
    if (opts.addr.type == SocketAddress::Type::kInet && opts.tls_creds.empty()) {
        log_msg(LogLevel::kWarn,
                "NBD server listening on %s without TLS (no tls-creds): export names and data travel "
                "unencrypted and anyone who can reach the port can connect",
                opts.addr.to_string().c_str());
    }
    log_info("NBD server listening on %s", opts.addr.to_string().c_str());
    return {};
}

Status NbdServer::stop()
{
    NbdServer *s = g_server;
    if (!s) return make_error(ENOENT, "NBD server not running");
    if (s->accepting_) s->ctx_->set_fd_handler(s->listen_fd_, nullptr, nullptr, nullptr);
    s->accepting_ = false;
    ::close(s->listen_fd_);
    s->listen_fd_ = -1;
    if (!s->unix_path_.empty()) unlink(s->unix_path_.c_str());
    for (NbdConn *c : std::vector<NbdConn *>(s->conns_)) c->close();
    while (!s->conns_.empty()) {
        if (in_coroutine()) {
            co_sleep_ns(1000 * 1000);
            continue;
        }
        Timer t(s->ctx_, [](void *) {}, nullptr);
        t.mod_in(1000 * 1000);
        s->ctx_->iterate(true);
    }
    g_server = nullptr;
    delete s;
    log_info("NBD server stopped");
    return {};
}

NbdServer::~NbdServer()
{
    if (listen_fd_ >= 0) {
        if (accepting_) ctx_->set_fd_handler(listen_fd_, nullptr, nullptr, nullptr);
        ::close(listen_fd_);
    }
}

void NbdServer::update_accepting()
{
    if (listen_fd_ < 0) return;
    bool want = opts_.max_connections == 0 || conns_.size() < opts_.max_connections;
    if (want == accepting_) return;
    accepting_ = want;
    ctx_->set_fd_handler(listen_fd_, want ? &NbdServer::on_accept : nullptr, nullptr, want ? this : nullptr);
}

void NbdServer::on_accept(void *opaque)
{
    auto *s = static_cast<NbdServer *>(opaque);
    while (s->listen_fd_ >= 0 && (s->opts_.max_connections == 0 || s->conns_.size() < s->opts_.max_connections)) {
        int fd = socket_accept(s->listen_fd_);
        if (fd == -EAGAIN || fd == -EINTR) break;
        if (fd < 0) {
            log_warn("NBD server: accept failed: %s", strerror(-fd));
            break;
        }
        s->serve_fd(fd);
    }
    s->update_accepting();
}

NbdConn *NbdServer::serve_fd(int fd)
{
    // A unix socket's send buffer bounds what one sendmsg() queues
    // (208 KiB by default): a larger one (as far as net.core.wmem_max
    // allows) lets a 1 MiB read reply leave in one call instead of five
    // partial sends, each a wait for the peer. TCP keeps its autotuning.
    sockaddr_storage sa;
    socklen_t sl = sizeof(sa);
    if (getsockname(fd, reinterpret_cast<sockaddr *>(&sa), &sl) == 0 && sa.ss_family == AF_UNIX) {
        int sz = kNbdUnixSndBuf;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    auto *c = new NbdConn(this, fd);
    conns_.push_back(c);
    log_debug("NBD server: client connected (%zu open)", conns_.size());
    c->start();
    return c;
}

void NbdServer::conn_ended(NbdConn *c)
{
    for (size_t i = 0; i < conns_.size(); i++) {
        if (conns_[i] == c) {
            conns_.erase(conns_.begin() + static_cast<long>(i));
            break;
        }
    }
    log_debug("NBD server: client gone (%zu open)", conns_.size());
    update_accepting();
    if (client_hook_) {
        // Not from the connection's own stack: the hook may stop the server.
        struct Call {
            NbdClientHook hook;
            size_t open;
            bool negotiated;
        };
        ctx_->schedule_oneshot(
            [](void *p) {
                auto *f = static_cast<Call *>(p);
                f->hook(f->open, f->negotiated);
                delete f;
            },
            new Call{client_hook_, conns_.size(), c->negotiated_});
    }
}

namespace {
// In the order the exports were added (LIST answers in that order, as QEMU).
std::vector<std::pair<std::string, NbdExport *>> &export_table()
{
    static std::vector<std::pair<std::string, NbdExport *>> table;
    return table;
}
} // namespace

const std::vector<std::pair<std::string, NbdExport *>> &NbdServer::exports() { return export_table(); }

NbdExport *NbdServer::find_export(const std::string &name)
{
    for (auto &[n, e] : export_table()) {
        if (n == name) return e;
    }
    return nullptr;
}

Status NbdServer::register_export(const std::string &name, NbdExport *exp)
{
    if (find_export(name)) return make_error(EEXIST, "NBD server already has export named '%s'", name.c_str());
    export_table().emplace_back(name, exp);
    return {};
}

void NbdServer::unregister_export(const std::string &name, NbdExport *exp)
{
    auto &t = export_table();
    for (size_t i = 0; i < t.size(); i++) {
        if (t[i].first == name && t[i].second == exp) {
            t.erase(t.begin() + static_cast<long>(i));
            return;
        }
    }
}

// ---------------------------------------------------------------- public API

Status nbd_server_start(const NbdServerOptions &opts) { return NbdServer::start(opts); }
bool nbd_server_running() { return g_server != nullptr; }
Status nbd_server_stop() { return NbdServer::stop(); }
size_t nbd_server_client_count() { return g_server ? g_server->conn_count() : 0; }

void nbd_server_set_client_hook(NbdClientHook fn)
{
    g_client_hook = fn;
    if (g_server) g_server->set_client_hook(std::move(fn));
}

void nbd_server_serve_fd(int fd)
{
    assert(g_server);
    g_server->serve_fd(fd);
}

Result<std::unique_ptr<BlockExport>> nbd_export_create(BlockGraph &graph, const BlockExportOptions &opts)
{
    return NbdExport::create(graph, opts);
}

} // namespace bg
