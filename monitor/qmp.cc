// monitor/qmp.cc -- chardevs, connections and the QMP protocol (qmp.h).
#include "monitor/qmp.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"
#include "qapi/keyval.h"
#include "util/aio.h"
#include "util/log.h"
#include "util/version.h"

namespace bg {

// ---------------------------------------------------------------- options

namespace {

// A keyval boolean (on/off, true/false, yes/no).
bool parse_bool(const std::string &v, bool *out)
{
    if (v == "on" || v == "true" || v == "yes") *out = true;
    else if (v == "off" || v == "false" || v == "no") *out = false;
    else return false;
    return true;
}

} // namespace

Result<ChardevOptions> parse_chardev_arg(const std::string &arg)
{
    Result<nlohmann::json> t = keyval_parse(arg, "backend");
    if (!t) return make_error(EINVAL, "chardev: %s", t.msg().c_str());
    ChardevOptions o;
    const nlohmann::json &j = t.value();
    for (auto &[k, v] : j.items()) {
        if (!v.is_string()) return make_error(EINVAL, "chardev: '%s' is not a plain value", k.c_str());
    }
    if (!j.contains("id")) return make_error(EINVAL, "chardev: missing required key 'id'");
    o.id = j["id"].get<std::string>();
    const std::string where = "chardev '" + o.id + "'";
    if (!j.contains("backend")) return make_error(EINVAL, "%s: missing required key 'backend'", where.c_str());
    o.backend = j["backend"].get<std::string>();
    if (o.backend != "socket" && o.backend != "stdio") {
        return make_error(EINVAL, "%s: backend '%s' is not supported (socket, stdio)", where.c_str(),
                          o.backend.c_str());
    }
    bool wait_given = false;
    for (auto &[k, v] : j.items()) {
        const std::string s = v.get<std::string>();
        if (k == "id" || k == "backend") continue;
        bool ok = true;
        if (o.backend == "stdio" && (k == "signal" || k == "logfile" || k == "logappend")) {
            continue;   // accepted, as QEMU does; nothing to do for a monitor
        } else if (o.backend == "socket" && k == "path") {
            o.path = s;
        } else if (o.backend == "socket" && k == "host") {
            o.host = s;
        } else if (o.backend == "socket" && k == "port") {
            o.port = s;
        } else if (o.backend == "socket" && k == "server") {
            ok = parse_bool(s, &o.server);
        } else if (o.backend == "socket" && k == "wait") {
            ok = parse_bool(s, &o.wait);
            wait_given = true;
        } else if (o.backend == "socket" && (k == "nodelay" || k == "ipv4" || k == "ipv6")) {
            bool b;
            ok = parse_bool(s, &b);
        } else {
            return make_error(EINVAL, "%s: unknown key '%s'", where.c_str(), k.c_str());
        }
        if (!ok) return make_error(EINVAL, "%s: %s: '%s' is not a valid boolean (on, off)", where.c_str(), k.c_str(), s.c_str());
    }
    if (o.backend == "socket") {
        if (o.path.empty() == o.host.empty() && o.port.empty() == o.path.empty()) {
            return make_error(EINVAL, "%s: give either path or host and port", where.c_str());
        }
        if (!o.path.empty() && (!o.host.empty() || !o.port.empty())) {
            return make_error(EINVAL, "%s: path cannot be combined with host or port", where.c_str());
        }
        if (o.path.empty() && o.port.empty()) return make_error(EINVAL, "%s: missing required key 'port'", where.c_str());
        if (!o.server && wait_given) {
            return make_error(EINVAL, "%s: 'wait' option is incompatible with socket in client connect mode",
                              where.c_str());
        }
    }
    return o;
}

Result<MonitorOptions> parse_monitor_arg(const std::string &arg)
{
    Result<nlohmann::json> t = keyval_parse(arg, "chardev");
    if (!t) return make_error(EINVAL, "monitor: %s", t.msg().c_str());
    MonitorOptions o;
    for (auto &[k, v] : t.value().items()) {
        if (!v.is_string()) return make_error(EINVAL, "monitor: '%s' is not a plain value", k.c_str());
        const std::string s = v.get<std::string>();
        if (k == "chardev") {
            o.chardev = s;
        } else if (k == "mode") {
            if (s == "readline") return make_error(EINVAL, "monitor: Only QMP is supported");
            if (s != "control") return make_error(EINVAL, "monitor: mode: '%s' is not one of: control, readline", s.c_str());
        } else if (k == "pretty") {
            if (!parse_bool(s, &o.pretty)) {
                return make_error(EINVAL, "monitor: pretty: '%s' is not a valid boolean (on, off)", s.c_str());
            }
        } else if (k == "id") {
            continue;
        } else {
            return make_error(EINVAL, "monitor: unknown key '%s'", k.c_str());
        }
    }
    if (o.chardev.empty()) return make_error(EINVAL, "monitor: missing required key 'chardev'");
    return o;
}

// ---------------------------------------------------------------- formatting

QmpResult qmp_ok(nlohmann::json ret)
{
    QmpResult r;
    r.ret = std::move(ret);
    return r;
}

QmpResult qmp_error(const std::string &desc, const char *cls)
{
    QmpResult r;
    r.error_class = cls;
    r.desc = desc;
    return r;
}

QmpResult qmp_error(const Status &st) { return qmp_error(st.msg()); }

namespace {

void format_into(std::string &out, const nlohmann::json &v, bool pretty, int level)
{
    // Pretty output as QEMU writes it: CR LF line ends (a monitor's "\n"
    // is sent as "\r\n"), empty containers opened and closed on two lines.
    auto newline = [&](int lvl) {
        out += "\r\n";
        out.append(static_cast<size_t>(lvl) * 4, ' ');
    };
    if (v.is_object()) {
        if (v.empty()) {
            out += '{';
            if (pretty) newline(level);
            out += '}';
            return;
        }
        out += '{';
        bool first = true;
        for (auto it = v.begin(); it != v.end(); ++it) {
            if (!first) out += pretty ? "," : ", ";
            first = false;
            if (pretty) newline(level + 1);
            out += nlohmann::json(it.key()).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
            out += ": ";
            format_into(out, it.value(), pretty, level + 1);
        }
        if (pretty) newline(level);
        out += '}';
    } else if (v.is_array()) {
        if (v.empty()) {
            out += '[';
            if (pretty) newline(level);
            out += ']';
            return;
        }
        out += '[';
        bool first = true;
        for (const auto &e : v) {
            if (!first) out += pretty ? "," : ", ";
            first = false;
            if (pretty) newline(level + 1);
            format_into(out, e, pretty, level + 1);
        }
        if (pretty) newline(level);
        out += ']';
    } else {
        out += v.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
    }
}

// {"k1": v1, "k2": v2} with the members in the given order (the envelope of
// replies and events: QEMU writes "return"/"error" before "id"). Each value
// is already formatted for nesting level + 1 (fmt()).
using Member = std::pair<const char *, std::string>;

std::string envelope(const std::vector<Member> &members, bool pretty, int level = 0)
{
    const std::string indent(static_cast<size_t>(level) * 4, ' ');
    std::string out = "{";
    bool first = true;
    for (auto &[k, v] : members) {
        if (!first) out += pretty ? "," : ", ";
        first = false;
        if (pretty) out += "\r\n    " + indent;
        out += '"';
        out += k;
        out += "\": ";
        out += v;
    }
    if (pretty) out += "\r\n" + indent;
    out += "}";
    return out;
}

std::string fmt(const nlohmann::json &v, bool pretty, int level = 1)
{
    std::string out;
    format_into(out, v, pretty, level);
    return out;
}

} // namespace

std::string qmp_format(const nlohmann::json &v, bool pretty)
{
    std::string out;
    format_into(out, v, pretty, 0);
    return out;
}

nlohmann::json qmp_version()
{
    // The QMP dialect spoken: qemu-storage-daemon 7.2's. Clients that
    // check versions for features get the set this answers to.
    return {{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 0}}}, {"package", "blockgraph " BG_VERSION}};
}

// ---------------------------------------------------------------- sessions

QmpSession::QmpSession(QmpServer &server, QmpListener *listener, int in_fd, int out_fd, bool pretty)
    : server_(server),
      listener_(listener),
      in_fd_(in_fd),
      out_fd_(out_fd),
      pretty_(pretty),
      streamer_([this](Result<nlohmann::json> &&m) { on_message(std::move(m)); })
{
    proto_.pretty_ = pretty;
}

QmpSession::~QmpSession()
{
    AioContext *ctx = AioContext::current();
    if (reading_ || writing_) ctx->set_fd_handler(in_fd_, nullptr, nullptr, nullptr);
    if (out_fd_ != in_fd_ && writing_) ctx->set_fd_handler(out_fd_, nullptr, nullptr, nullptr);
    if (in_fd_ > STDERR_FILENO) close(in_fd_);
    if (out_fd_ != in_fd_ && out_fd_ > STDERR_FILENO) close(out_fd_);
}

void QmpSession::start()
{
    nlohmann::json greeting = {{"version", qmp_version()}, {"capabilities", nlohmann::json::array({"oob"})}};
    send_text(envelope({{"QMP", fmt(greeting, pretty_)}}, pretty_));
    update_handlers();
}

void QmpSession::update_handlers()
{
    AioContext *ctx = AioContext::current();
    const bool want_read = !stopped_ && queue_.size() < QmpServer::kMaxQueued;
    const bool want_write = !out_dead_ && !out_.empty();
    if (in_fd_ == out_fd_) {
        if (want_read != reading_ || want_write != writing_) {
            ctx->set_fd_handler(in_fd_, want_read ? on_readable : nullptr, want_write ? on_writable : nullptr,
                                this);
        }
    } else {
        if (want_read != reading_) ctx->set_fd_handler(in_fd_, want_read ? on_readable : nullptr, nullptr, this);
        if (want_write != writing_) ctx->set_fd_handler(out_fd_, nullptr, want_write ? on_writable : nullptr, this);
    }
    reading_ = want_read;
    writing_ = want_write;
}

void QmpSession::on_readable(void *opaque)
{
    auto *s = static_cast<QmpSession *>(opaque);
    char buf[65536];
    ssize_t n = read(s->in_fd_, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        s->streamer_.finish();
        s->stopped_ = true;
        s->update_handlers();
        if (!s->running_) s->server_.session_gone(s);
        return;
    }
    s->streamer_.feed(buf, static_cast<size_t>(n));
    s->update_handlers();
}

void QmpSession::on_writable(void *opaque)
{
    auto *s = static_cast<QmpSession *>(opaque);
    s->try_write();
    s->update_handlers();
}

void QmpSession::try_write()
{
    while (!out_.empty() && !out_dead_) {
        ssize_t n = write(out_fd_, out_.data(), out_.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {
            // The client went away; its input will end too.
            out_dead_ = true;
            out_.clear();
            return;
        }
        out_.erase(0, static_cast<size_t>(n));
    }
}

void QmpSession::send_text(const std::string &text)
{
    if (out_dead_) return;
    out_ += text;
    out_ += "\r\n";
    try_write();
    update_handlers();
}

void QmpSession::send_event(const std::string &name, const nlohmann::json &data)
{
    if (!proto_.command_mode_) return;
    struct timeval tv;
    int64_t sec = -1, usec = -1;
    if (gettimeofday(&tv, nullptr) == 0) {
        sec = static_cast<int64_t>(tv.tv_sec);
        usec = static_cast<int64_t>(tv.tv_usec);
    }
    std::vector<Member> members = {
        {"timestamp", envelope({{"seconds", std::to_string(sec)}, {"microseconds", std::to_string(usec)}}, pretty_, 1)},
        {"event", fmt(name, pretty_)}};
    if (data.is_object() && !data.empty()) members.push_back({"data", fmt(data, pretty_)});
    send_text(envelope(members, pretty_));
}

void QmpSession::stop()
{
    stopped_ = true;
    queue_.clear();
    update_handlers();
}

void QmpSession::on_message(Result<nlohmann::json> &&m)
{
    if (stopped_) return;
    queue_.push_back(std::move(m));
    pump();
}

void QmpSession::pump()
{
    if (running_ || queue_.empty()) return;
    running_ = true;
    AioContext::current()->co_enter(coroutine_create(&QmpSession::process_entry, this));
}

void QmpSession::process_entry(void *opaque) { static_cast<QmpSession *>(opaque)->process(); }

void QmpSession::process()
{
    while (!queue_.empty() && !server_.closing()) {
        Result<nlohmann::json> m = std::move(queue_.front());
        queue_.pop_front();
        update_handlers();   // room in the queue again: read on
        std::string reply = handle(std::move(m));
        if (!reply.empty()) send_text(reply);
    }
    running_ = false;
    if (stopped_) server_.session_gone(this);
}

std::string QmpSession::handle(Result<nlohmann::json> &&m) { return proto_.handle(server_, std::move(m)); }

std::string QmpProtocol::handle(QmpServer &server_, Result<nlohmann::json> &&m)
{
    auto reply_error = [&](const std::string &cls, const std::string &desc, const nlohmann::json *id) {
        std::vector<Member> members = {
            {"error", envelope({{"class", fmt(cls, pretty_, 2)}, {"desc", fmt(desc, pretty_, 2)}}, pretty_, 1)}};
        if (id) members.push_back({"id", fmt(*id, pretty_)});
        return envelope(members, pretty_);
    };
    auto reply_ok = [&](const nlohmann::json &ret, const nlohmann::json *id, const std::string &raw = "") {
        std::vector<Member> members = {{"return", !raw.empty() && !pretty_ ? raw : fmt(ret, pretty_)}};
        if (id) members.push_back({"id", fmt(*id, pretty_)});
        return envelope(members, pretty_);
    };
    if (!m) return reply_error("GenericError", m.msg(), nullptr);
    const nlohmann::json &req = m.value();
    if (!req.is_object()) return reply_error("GenericError", "QMP input must be a JSON object", nullptr);
    const nlohmann::json *id = req.contains("id") ? &req["id"] : nullptr;

    // Structure: the members QEMU allows and their types.
    bool has_exec = req.contains("execute"), has_oob = req.contains("exec-oob");
    for (auto it = req.begin(); it != req.end(); ++it) {
        const std::string &k = it.key();
        if (k == "execute" || k == "arguments" || k == "id" || (k == "exec-oob" && oob_enabled_)) continue;
        return reply_error("GenericError", "QMP input member '" + k + "' is unexpected", id);
    }
    if (has_exec && has_oob) return reply_error("GenericError", "QMP input member 'execute' clashes with 'exec-oob'", id);
    if (!has_exec && !has_oob) return reply_error("GenericError", "QMP input lacks member 'execute'", id);
    const nlohmann::json &ex = has_exec ? req["execute"] : req["exec-oob"];
    if (!ex.is_string()) {
        return reply_error("GenericError",
                           std::string("QMP input member '") + (has_exec ? "execute" : "exec-oob") + "' must be a string",
                           id);
    }
    const std::string name = ex.get<std::string>();
    static const nlohmann::json empty = nlohmann::json::object();
    const nlohmann::json *args = &empty;
    if (req.contains("arguments")) {
        args = &req["arguments"];
        if (!args->is_object()) return reply_error("GenericError", "QMP input member 'arguments' must be an object", id);
    }

    // Negotiation.
    if (name == "qmp_capabilities") {
        if (command_mode_) {
            return reply_error("CommandNotFound", "Capabilities negotiation is already complete, command ignored", id);
        }
        Status st = qmp_check_args({{"enable", "[str]", true}}, false, *args);
        if (!st.ok()) return reply_error("GenericError", st.msg(), id);
        bool oob = false;
        if (args->contains("enable")) {
            for (const auto &c : (*args)["enable"]) {
                const std::string cap = c.get<std::string>();
                if (cap != "oob") {
                    return reply_error("GenericError", "Parameter 'enable' does not accept value '" + cap + "'", id);
                }
                oob = true;
            }
        }
        oob_enabled_ = oob;
        command_mode_ = true;
        return reply_ok(nlohmann::json::object(), id);
    }
    if (!command_mode_) {
        return reply_error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'", id);
    }
    if (has_oob) {
        if (!qmp_find_command(name)) return reply_error("CommandNotFound", "The command " + name + " has not been found", id);
        return reply_error("GenericError", "The command " + name + " does not support OOB", id);
    }

    QmpResult r = qmp_dispatch(server_, name, *args);
    if (!r.ok()) return reply_error(r.error_class, r.desc, id);
    return reply_ok(r.ret, id, r.raw);
}

// ---------------------------------------------------------------- chardevs

struct QmpServer::Chardev {
    ChardevOptions opts;
    int listen_fd = -1;          // server socket
    int conn_fd = -1;            // connected client socket (server=off, or the accepted wait=on client)
    bool used = false;           // a monitor is on it
};

QmpServer::QmpServer(Daemon &daemon) : daemon_(daemon) {}

QmpServer::~QmpServer() { close_all(); }

QmpServer::Chardev *QmpServer::find_chardev(const std::string &id)
{
    for (auto &c : chardevs_) {
        if (c->opts.id == id) return c.get();
    }
    return nullptr;
}

namespace {

void set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
}

// Opens the socket of a socket chardev: listening (server) or connected.
Result<int> open_socket(const ChardevOptions &o)
{
    const std::string where = "chardev '" + o.id + "'";
    if (!o.path.empty()) {
        struct sockaddr_un sa = {};
        sa.sun_family = AF_UNIX;
        if (o.path.size() >= sizeof(sa.sun_path)) {
            return make_error(ENAMETOOLONG, "%s: UNIX socket path '%s' is too long", where.c_str(), o.path.c_str());
        }
        memcpy(sa.sun_path, o.path.c_str(), o.path.size() + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return errno_error(errno, where + ": socket");
        if (o.server) {
            struct stat st;
            if (lstat(o.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(o.path.c_str());
            if (bind(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0 || listen(fd, 1) != 0) {
                int e = errno;
                close(fd);
                return make_error(e, "%s: Failed to bind socket to %s: %s", where.c_str(), o.path.c_str(), strerror(e));
            }
        } else if (connect(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) != 0) {
            int e = errno;
            close(fd);
            return make_error(e, "%s: Failed to connect to '%s': %s", where.c_str(), o.path.c_str(), strerror(e));
        }
        return fd;
    }
    struct addrinfo hints = {}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = o.server ? AI_PASSIVE : 0;
    const char *host = o.host.empty() ? nullptr : o.host.c_str();
    int gai = getaddrinfo(host, o.port.c_str(), &hints, &res);
    if (gai != 0) {
        return make_error(EINVAL, "%s: address resolution failed for %s:%s: %s", where.c_str(), o.host.c_str(),
                          o.port.c_str(), gai_strerror(gai));
    }
    int err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (o.server) {
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1) == 0) {
                freeaddrinfo(res);
                return fd;
            }
        } else if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            freeaddrinfo(res);
            return fd;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return make_error(err ? err : EINVAL, "%s: Failed to %s %s:%s: %s", where.c_str(), o.server ? "listen on" : "connect to",
                      o.host.c_str(), o.port.c_str(), strerror(err ? err : EINVAL));
}

} // namespace

Status QmpServer::add_chardev(const ChardevOptions &opts)
{
    if (find_chardev(opts.id)) {
        return make_error(EEXIST, "attempt to add duplicate property '%s' to object (type 'container')",
                          opts.id.c_str());
    }
    auto c = std::make_unique<Chardev>();
    c->opts = opts;
    if (opts.backend == "socket") {
        Result<int> fd = open_socket(opts);
        if (!fd) return fd.error();
        if (opts.server) {
            c->listen_fd = fd.value();
            if (opts.wait) {
                // QEMU's server=on,wait=on: start-up waits for the first client.
                std::fprintf(stderr, "%s: waiting for connection on: %s\n",
                             log_get_program() ? log_get_program() : "blockgraph daemon",
                             opts.path.empty() ? (opts.host + ":" + opts.port).c_str() : opts.path.c_str());
                int cfd;
                do {
                    cfd = accept4(c->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
                } while (cfd < 0 && errno == EINTR);
                if (cfd < 0) {
                    int e = errno;
                    close(c->listen_fd);
                    return errno_error(e, "chardev '" + opts.id + "': accept");
                }
                c->conn_fd = cfd;
            }
        } else {
            c->conn_fd = fd.value();
        }
    }
    chardevs_.push_back(std::move(c));
    return {};
}

Status QmpServer::add_monitor(const MonitorOptions &opts)
{
    Chardev *c = find_chardev(opts.chardev);
    if (!c) return make_error(ENOENT, "chardev \"%s\" not found", opts.chardev.c_str());
    if (c->used) return make_error(EBUSY, "chardev '%s' is already in use", opts.chardev.c_str());
    c->used = true;
    auto l = std::make_unique<QmpListener>();
    l->server = this;
    l->chardev = opts.chardev;
    l->pretty = opts.pretty;
    l->listen_fd = c->listen_fd;
    QmpListener *lp = l.get();
    listeners_.push_back(std::move(l));
    if (c->opts.backend == "stdio") {
        start_session(lp, STDIN_FILENO, STDOUT_FILENO);
    } else if (c->conn_fd >= 0) {
        int fd = c->conn_fd;
        c->conn_fd = -1;
        start_session(lp, fd, fd);
    } else {
        set_nonblock_cloexec(lp->listen_fd);
        AioContext::current()->set_fd_handler(lp->listen_fd, &QmpServer::on_accept, nullptr, lp);
    }
    return {};
}

void QmpServer::on_accept(void *opaque)
{
    auto *l = static_cast<QmpListener *>(opaque);
    int fd = accept4(l->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;   // EAGAIN, or the client gave up already
    l->server->start_session(l, fd, fd);
}

void QmpServer::start_session(QmpListener *l, int in_fd, int out_fd)
{
    if (in_fd > STDERR_FILENO) set_nonblock_cloexec(in_fd);
    auto s = std::make_unique<QmpSession>(*this, l, in_fd, out_fd, l->pretty);
    QmpSession *sp = s.get();
    sessions_.push_back(std::move(s));
    l->active = sp;
    // One client at a time: the next is accepted when this one leaves.
    if (l->listen_fd >= 0) AioContext::current()->set_fd_handler(l->listen_fd, nullptr, nullptr, nullptr);
    log_info("monitor on chardev '%s': client connected", l->chardev.c_str());
    sp->start();
}

void QmpServer::session_gone(QmpSession *s)
{
    // Freed in a bottom half: we may be on the session's own stack.
    AioContext::current()->schedule_oneshot(&QmpServer::reap, this);
    (void)s;
}

void QmpServer::reap(void *opaque)
{
    auto *server = static_cast<QmpServer *>(opaque);
    for (size_t i = 0; i < server->sessions_.size();) {
        QmpSession *s = server->sessions_[i].get();
        if (!s->finished()) {
            i++;
            continue;
        }
        QmpListener *l = s->listener();
        server->sessions_.erase(server->sessions_.begin() + static_cast<long>(i));
        l->active = nullptr;
        log_info("monitor on chardev '%s': client disconnected", l->chardev.c_str());
        if (l->listen_fd >= 0 && !server->closing_) {
            AioContext::current()->set_fd_handler(l->listen_fd, &QmpServer::on_accept, nullptr, l);
        }
    }
}

void QmpServer::broadcast_event(const std::string &name, const nlohmann::json &data)
{
    for (auto &s : sessions_) s->send_event(name, data);
}

void QmpServer::close_all()
{
    if (closing_ && sessions_.empty() && listeners_.empty()) return;
    closing_ = true;
    AioContext *ctx = AioContext::current();
    for (auto &l : listeners_) {
        if (l->listen_fd >= 0 && !l->active) ctx->set_fd_handler(l->listen_fd, nullptr, nullptr, nullptr);
    }
    for (auto &s : sessions_) s->stop();
    // A running command finishes first (it may hold a drain).
    for (;;) {
        bool busy = false;
        for (auto &s : sessions_) busy = busy || s->running();
        if (!busy) break;
        ctx->iterate(true);
    }
    sessions_.clear();
    for (auto &c : chardevs_) {
        if (c->listen_fd >= 0) {
            close(c->listen_fd);
            if (!c->opts.path.empty() && c->opts.server) unlink(c->opts.path.c_str());
        }
        if (c->conn_fd >= 0) close(c->conn_fd);
    }
    chardevs_.clear();
    listeners_.clear();
}

} // namespace bg
