// The `nbd` protocol driver (QEMU's block/nbd.c): a node whose bytes are
// an export of an NBD server, reached over TCP or a unix socket, with TLS
// when tls-creds name a client credentials object. The protocol work is
// util/nbd-client.h's: this file maps the block layer's requests onto it,
// parses the file names (nbd://, nbd+unix://, nbds://, the legacy nbd:...),
// and reconnects.
//
// Options (QEMU's BlockdevOptionsNbd): server (flat SocketAddress:
// server.type=inet|unix, server.host, server.port, server.path), export,
// tls-creds, tls-hostname, x-dirty-bitmap, reconnect-delay, open-timeout;
// or "filename" (then server/export must not be given).
//
// Reconnect: when the socket fails, requests wait while one of them
// reconnects (backing off from 100 ms to 2 s) for up to reconnect-delay
// seconds, then are re-sent on the new connection; requests the server had
// answered are never re-sent. After the delay, requests fail with EIO
// (each later request tries one reconnect). Protocol errors are fatal.
//
// Threading: the connection belongs to the AioContext the node was opened
// in (the graph's). A request from a coroutine of another thread (an
// iothread of a multi-queue export) moves to that context for the time of
// the request and back.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "block/block-driver.h"
#include "qapi/option-reader.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/coroutine-lock.h"
#include "util/log.h"
#include "util/nbd-client.h"
#include "util/nbd-proto.h"
#include "util/tls.h"

namespace bg {

namespace {

constexpr uint64_t kMaxDelaySeconds = 365ULL * 24 * 3600;
// Reads up to this size carry DF (the size every server must allow).
constexpr int64_t kDfMaxRead = 64 << 10;

struct NbdOptions : DriverOptionsOf<NbdOptions> {
    bool has_server = false;
    SocketAddress server;
    std::string export_name;       // "export"
    bool has_export = false;
    std::string tls_creds;         // "tls-creds"
    std::string tls_hostname;      // "tls-hostname"
    std::string x_dirty_bitmap;    // "x-dirty-bitmap"
    uint64_t reconnect_delay = 0;  // seconds
    uint64_t open_timeout = 0;     // seconds
    bool tls_uri = false;          // the name was nbds://: TLS is required

    void encode(nlohmann::json &j) const override
    {
        if (has_server) {
            nlohmann::json s;
            if (server.type == SocketAddress::Type::kUnix) {
                s["type"] = "unix";
                s["path"] = server.path;
            } else {
                s["type"] = "inet";
                s["host"] = server.host;
                s["port"] = server.port;
            }
            j["server"] = s;
        }
        if (has_export) j["export"] = export_name;
        if (!tls_creds.empty()) j["tls-creds"] = tls_creds;
        if (!tls_hostname.empty()) j["tls-hostname"] = tls_hostname;
        if (!x_dirty_bitmap.empty()) j["x-dirty-bitmap"] = x_dirty_bitmap;
        if (reconnect_delay) j["reconnect-delay"] = reconnect_delay;
        if (open_timeout) j["open-timeout"] = open_timeout;
    }
};

int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// URI percent-decoding; false on a malformed escape.
bool percent_decode(const std::string &in, std::string *out)
{
    out->clear();
    for (size_t i = 0; i < in.size(); i++) {
        if (in[i] != '%') {
            out->push_back(in[i]);
            continue;
        }
        int hi = i + 1 < in.size() ? hex_value(in[i + 1]) : -1;
        int lo = i + 2 < in.size() ? hex_value(in[i + 2]) : -1;
        if (hi < 0 || lo < 0) return false;
        out->push_back(static_cast<char>(hi << 4 | lo));
        i += 2;
    }
    return true;
}

// host[:port] of a URI authority ([v6]:port for IPv6). false if malformed.
bool parse_host_port(const std::string &auth, std::string *host, std::string *port)
{
    std::string rest;
    if (!auth.empty() && auth[0] == '[') {
        size_t close = auth.find(']');
        if (close == std::string::npos) return false;
        *host = auth.substr(1, close - 1);
        rest = auth.substr(close + 1);
    } else {
        size_t colon = auth.find(':');
        *host = auth.substr(0, colon);
        rest = colon == std::string::npos ? "" : auth.substr(colon);
    }
    if (rest.empty()) return true;
    if (rest[0] != ':' || rest.size() == 1) return false;
    *port = rest.substr(1);
    return std::all_of(port->begin(), port->end(), [](char c) { return c >= '0' && c <= '9'; });
}

// nbd[+tcp|+unix]://... and nbds[+unix]://... (libnbd's TLS schemes).
bool parse_nbd_uri(const std::string &name, NbdOptions *o)
{
    size_t sep = name.find("://");
    if (sep == std::string::npos) return false;
    std::string scheme = name.substr(0, sep);
    bool unix_sock = false;
    if (scheme == "nbd" || scheme == "nbd+tcp") {
    } else if (scheme == "nbd+unix") {
        unix_sock = true;
    } else if (scheme == "nbds" || scheme == "nbds+tcp") {
        o->tls_uri = true;
    } else if (scheme == "nbds+unix") {
        o->tls_uri = true;
        unix_sock = true;
    } else {
        return false;
    }
    std::string rest = name.substr(sep + 3);
    size_t q = rest.find('?');
    std::string query = q == std::string::npos ? "" : rest.substr(q + 1);
    bool has_query = q != std::string::npos;
    rest = rest.substr(0, q);
    size_t slash = rest.find('/');
    std::string auth = rest.substr(0, slash);
    std::string path = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (!percent_decode(path, &o->export_name)) return false;
    o->has_export = true;
    o->has_server = true;
    if (unix_sock) {
        // nbd+unix:///export?socket=PATH: no authority, one parameter.
        if (!auth.empty() || query.compare(0, 7, "socket=") != 0 || query.find('&') != std::string::npos) return false;
        o->server.type = SocketAddress::Type::kUnix;
        if (!percent_decode(query.substr(7), &o->server.path) || o->server.path.empty()) return false;
        return true;
    }
    if (has_query || auth.empty()) return false;
    o->server.type = SocketAddress::Type::kInet;
    std::string host, port = std::to_string(nbd::kDefaultPort);
    if (!parse_host_port(auth, &host, &port) || host.empty()) return false;
    o->server.host = host;
    o->server.port = port;
    return true;
}

// The legacy forms nbd:HOST:PORT[:exportname=NAME] and
// nbd:unix:PATH[:exportname=NAME].
bool parse_nbd_legacy(const std::string &name, NbdOptions *o)
{
    if (name.compare(0, 4, "nbd:") != 0) return false;
    std::string spec = name.substr(4);
    size_t ex = spec.find(":exportname=");
    if (ex != std::string::npos) {
        o->export_name = spec.substr(ex + 12);
        o->has_export = true;
        spec = spec.substr(0, ex);
    }
    o->has_server = true;
    if (spec.compare(0, 5, "unix:") == 0) {
        o->server.type = SocketAddress::Type::kUnix;
        o->server.path = spec.substr(5);
        return !o->server.path.empty();
    }
    o->server.type = SocketAddress::Type::kInet;
    std::string port;
    if (!parse_host_port(spec, &o->server.host, &port) || o->server.host.empty() || port.empty()) return false;
    o->server.port = port;
    return true;
}

Status decode_server(OptionReader &r, NbdOptions *o)
{
    return r.get_object("server", [o](OptionReader &s) -> Status {
        std::string type;
        BG_TRY(s.require("type", &type));
        if (type == "inet") {
            o->server.type = SocketAddress::Type::kInet;
            BG_TRY(s.require("host", &o->server.host));
            BG_TRY(s.require("port", &o->server.port));
        } else if (type == "unix") {
            o->server.type = SocketAddress::Type::kUnix;
            BG_TRY(s.require("path", &o->server.path));
        } else {
            return s.error("type", "'" + type + "' is not one of: inet, unix");
        }
        o->has_server = true;
        return {};
    });
}

Result<std::unique_ptr<DriverOptions>> decode_nbd_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<NbdOptions>();
    std::string filename;
    BG_TRY(r.get("filename", &filename));
    BG_TRY(decode_server(r, o.get()));
    if (r.has("export")) {
        BG_TRY(r.get("export", &o->export_name));
        o->has_export = true;
    }
    BG_TRY(r.get("tls-creds", &o->tls_creds));
    BG_TRY(r.get("tls-hostname", &o->tls_hostname));
    BG_TRY(r.get("x-dirty-bitmap", &o->x_dirty_bitmap));
    BG_TRY(r.get_uint("reconnect-delay", &o->reconnect_delay, kMaxDelaySeconds));
    BG_TRY(r.get_uint("open-timeout", &o->open_timeout, kMaxDelaySeconds));
    if (!filename.empty()) {
        if (o->has_server || o->has_export) {
            return r.error("", "server/export and a file name may not be specified at the same time");
        }
        NbdOptions parsed;
        bool ok = filename.find("://") != std::string::npos ? parse_nbd_uri(filename, &parsed)
                                                             : parse_nbd_legacy(filename, &parsed);
        if (!ok) return r.error("filename", "No valid URL specified");
        o->server = parsed.server;
        o->has_server = true;
        o->export_name = parsed.export_name;
        o->has_export = parsed.has_export;
        o->tls_uri = parsed.tls_uri;
    }
    if (!o->has_server) return r.error("", "NBD server address missing");
    if (o->export_name.size() > nbd::kMaxStringSize) return r.error("export", "export name too long to send to server");
    if (o->tls_uri && o->tls_creds.empty()) {
        return r.error("filename", "nbds:// needs TLS credentials: add tls-creds=ID naming a tls-creds-x509 or "
                                   "tls-creds-psk object with endpoint=client");
    }
    return std::unique_ptr<DriverOptions>(std::move(o));
}

AioContext *co_move_to(AioContext *ctx);

class NbdNode final : public BlockNode {
  public:
    ~NbdNode() override { drop_connection(); }

    std::string filename() const override;

  protected:
    Status open(const BlockdevOptions &opts) override;
    void close() override { drop_connection(); }

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_flush_to_disk() override;
    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override;
    int64_t do_getlength() override { return static_cast<int64_t>(info_.size); }
    void refresh_limits(BlockLimits *bl) override;

  private:
    using Conn = nbd::NbdClientConnection;
    // Connects and negotiates once; deadline_ns bounds the handshake (0: none).
    // *connect_failed (if given): the socket could not be connected (as
    // opposed to a handshake that failed).
    Result<std::shared_ptr<Conn>> coroutine_fn co_connect_once(int64_t deadline_ns, bool *connect_failed = nullptr);
    // Connects, retrying until open-timeout has passed.
    Status coroutine_fn co_first_connect();
    // Runs fn(conn, &outcome) and, while the connection is lost and the
    // reconnect delay allows, reconnects and runs it again.
    template <typename F>
    int coroutine_fn co_with_retry(F fn);
    template <typename F>
    int coroutine_fn co_with_retry_here(F fn);
    // Waits for (or performs) a reconnect after old was lost: 0 when a
    // new connection is up, -EIO when the delay has passed.
    int coroutine_fn co_reconnect(const std::shared_ptr<Conn> &old);
    Status check_reconnected(const nbd::ExportInfo &ni) const;
    void drop_connection();
    bool has_flag(uint16_t f) const { return info_.flags & f; }

    NbdOptions opts_;
    std::shared_ptr<TlsCreds> creds_;
    std::string tls_hostname_;
    AioContext *ctx_ = nullptr;       // the connection's (the graph's at open)
    std::shared_ptr<Conn> conn_;
    nbd::ExportInfo info_;            // of the first connection
    bool have_ctx_ = false;
    uint32_t ctx_id_ = 0;
    bool reconnecting_ = false;
    CoQueue reconnect_waiters_;
    int64_t reconnect_deadline_ = 0;  // clock_ns() time requests stop waiting; 0 = connected
};

std::string NbdNode::filename() const
{
    const SocketAddress &s = opts_.server;
    std::string sch = opts_.tls_uri ? "nbds" : "nbd";
    if (s.type == SocketAddress::Type::kUnix) {
        return sch + "+unix://" + (opts_.export_name.empty() ? "" : "/" + opts_.export_name) + "?socket=" + s.path;
    }
    std::string host = s.host.find(':') != std::string::npos ? "[" + s.host + "]" : s.host;
    return sch + "://" + host + ":" + s.port + (opts_.export_name.empty() ? "" : "/" + opts_.export_name);
}

Result<std::shared_ptr<nbd::NbdClientConnection>> NbdNode::co_connect_once(int64_t deadline_ns, bool *connect_failed)
{
    int64_t timeout = deadline_ns ? std::max<int64_t>(deadline_ns - clock_ns(), 1) : 0;
    if (connect_failed) *connect_failed = true;
    BG_TRY_ASSIGN(int fd, co_socket_connect(opts_.server, timeout));
    if (connect_failed) *connect_failed = false;
    auto sock = std::make_unique<CoSocket>(fd);
    nbd::ClientConfig cfg;
    cfg.export_name = opts_.export_name;
    cfg.tls_creds = creds_;
    cfg.tls_hostname = tls_hostname_;
    cfg.deadline_ns = deadline_ns;
    if (!opts_.x_dirty_bitmap.empty()) {
        cfg.meta_contexts = {opts_.x_dirty_bitmap};
        cfg.require_meta_contexts = true;
    } else {
        cfg.meta_contexts = {nbd::kCtxBaseAllocation};
    }
    BG_TRY_ASSIGN(nbd::ExportInfo info, nbd::co_client_handshake(*sock, cfg));
    auto conn = std::make_shared<Conn>(std::move(sock), info);
    conn->start();
    return conn;
}

Status NbdNode::co_first_connect()
{
    int64_t deadline = opts_.open_timeout ? clock_ns() + static_cast<int64_t>(opts_.open_timeout) * 1000000000LL : 0;
    int64_t backoff = 100000000;   // 100 ms
    for (;;) {
        bool connect_failed = false;
        auto c = co_connect_once(deadline, &connect_failed);
        if (c) {
            conn_ = std::move(c.value());
            return {};
        }
        // Only a server not (yet) there is worth waiting for; a handshake
        // the server refused stays refused.
        int64_t left = deadline - clock_ns();
        if (!deadline || !connect_failed || left <= 0) return c.error();
        co_sleep_ns(std::min(backoff, left));
        backoff = std::min<int64_t>(backoff * 2, 1000000000);
    }
}

Status NbdNode::open(const BlockdevOptions &opts)
{
    const auto *o = opts.as<NbdOptions>();
    if (!o) return node_error(EINVAL, "options are not nbd options");
    opts_ = *o;
    ctx_ = AioContext::current();
    if (!opts_.tls_creds.empty()) {
        creds_ = tls_creds_find(opts_.tls_creds);
        if (!creds_) return node_error(ENOENT, "No TLS credentials with id '" + opts_.tls_creds + "'");
        if (creds_->is_server()) {
            return node_error(EINVAL, "Expecting TLS credentials with a client endpoint");
        }
        tls_hostname_ = opts_.tls_hostname;
        if (tls_hostname_.empty() && opts_.server.type == SocketAddress::Type::kInet) tls_hostname_ = opts_.server.host;
    }
    Status st = run_in_coroutine([this] { return co_first_connect(); });
    if (!st) return st.error();
    info_ = conn_->info();
    for (const auto &c : info_.contexts) {
        have_ctx_ = true;
        ctx_id_ = c.id;
    }
    if (has_flag(nbd::kTxReadOnly) && !read_only_) {
        if (!opts.auto_read_only) {
            drop_connection();
            return node_error(EACCES, "NBD export is read-only");
        }
        read_only_ = true;
    }
    supports_fua_ = has_flag(nbd::kTxSendFua);
    supported_zero_flags_ = 0;
    if (has_flag(nbd::kTxSendWriteZeroes)) {
        supported_zero_flags_ = kReqMayUnmap | (supports_fua_ ? kReqFua : 0) |
                                (has_flag(nbd::kTxSendFastZero) ? kReqNoFallback : 0);
    }
    return {};
}

void NbdNode::refresh_limits(BlockLimits *bl)
{
    uint32_t min = info_.min_block;
    if (!info_.block_size_sent) min = (info_.size % 512 || have_ctx_) ? 1 : 512;
    uint64_t max = std::min<uint64_t>(nbd::kMaxPayload, info_.max_block);
    max -= max % min;
    bl->request_alignment = std::max(bl->request_alignment, min);
    bl->max_transfer = max;
    bl->opt_transfer = std::max<uint64_t>(info_.opt_block, min);
    uint64_t cmd_max = info_.extended ? (1ULL << 40) : 0x7fffffffULL;
    cmd_max -= cmd_max % min;
    bl->max_pdiscard = cmd_max;
    bl->max_pwrite_zeroes = cmd_max;
}

void NbdNode::drop_connection()
{
    if (!conn_) return;
    std::shared_ptr<Conn> c = std::move(conn_);
    if (AioContext::current()) {
        run_in_coroutine([&c] { c->co_disconnect(); });
        c->wait_reader_done();
    } else {
        c->shutdown();
    }
}

Status NbdNode::check_reconnected(const nbd::ExportInfo &ni) const
{
    if (ni.size != info_.size) return make_error(EIO, "the export's size changed across the reconnect");
    if ((ni.flags & nbd::kTxReadOnly) && !read_only_) return make_error(EIO, "the export became read-only");
    if (ni.extended != info_.extended || ni.contexts.size() != info_.contexts.size()) {
        return make_error(EIO, "the server negotiated differently after reconnecting");
    }
    return {};
}

int NbdNode::co_reconnect(const std::shared_ptr<Conn> &old)
{
    if (conn_ != old && conn_ && !conn_->broken()) return 0;
    if (opts_.reconnect_delay == 0) return -EIO;
    if (reconnecting_) {
        reconnect_waiters_.wait();
        return conn_ && !conn_->broken() ? 0 : -EIO;
    }
    reconnecting_ = true;
    int64_t now = clock_ns();
    bool first = reconnect_deadline_ == 0;
    if (first) reconnect_deadline_ = now + static_cast<int64_t>(opts_.reconnect_delay) * 1000000000LL;
    int64_t backoff = 100000000;
    int ret = -EIO;
    for (;;) {
        int64_t deadline = std::max<int64_t>(reconnect_deadline_, clock_ns() + 1000000000LL);
        auto c = co_connect_once(deadline);
        if (c) {
            Status st = check_reconnected(c.value()->info());
            if (st) {
                log_info("nbd: reconnected to %s", opts_.server.to_string().c_str());
                if (conn_) conn_->shutdown();
                conn_ = std::move(c.value());
                reconnect_deadline_ = 0;
                ret = 0;
                break;
            }
            log_warn("nbd: reconnect to %s refused: %s", opts_.server.to_string().c_str(), st.msg().c_str());
            c.value()->shutdown();
        }
        int64_t left = reconnect_deadline_ - clock_ns();
        if (left <= 0) break;   // delay over: fail for now
        co_sleep_ns(std::min(backoff, left));
        backoff = std::min<int64_t>(backoff * 2, 2000000000);
    }
    reconnecting_ = false;
    reconnect_waiters_.restart_all();
    return ret;
}

template <typename F>
int NbdNode::co_with_retry(F fn)
{
    AioContext *from = co_move_to(ctx_);
    int ret = co_with_retry_here(fn);
    co_move_to(from);
    return ret;
}

template <typename F>
int NbdNode::co_with_retry_here(F fn)
{
    for (;;) {
        std::shared_ptr<Conn> c = conn_;
        if (!c) return -EIO;
        nbd::ReqOutcome oc = nbd::ReqOutcome::kOk;
        int ret = fn(*c, &oc);
        if (oc != nbd::ReqOutcome::kConnLost) return ret;
        if (co_reconnect(c) < 0) return ret;
    }
}

int NbdNode::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)flags;
    // Small reads ask for one data chunk (DF): a server then need not look
    // for holes in the range (QEMU's does, for every read without DF),
    // and a hole costs few bytes at this size. The spec guarantees DF up
    // to 64 KiB; a server refusing it (EOVERFLOW) gets the read again
    // without.
    uint16_t f = bytes <= kDfMaxRead && has_flag(nbd::kTxSendDf) && (info_.structured || info_.extended)
                     ? nbd::kCmdFlagDf
                     : 0;
    int ret = co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) {
        return c.co_read(static_cast<uint64_t>(offset), qiov, f, oc);
    });
    if (ret == -EOVERFLOW && f) {
        ret = co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) {
            return c.co_read(static_cast<uint64_t>(offset), qiov, 0, oc);
        });
    }
    return ret;
}

int NbdNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)bytes;
    uint16_t f = (flags & kReqFua) && supports_fua_ ? nbd::kCmdFlagFua : 0;
    return co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) {
        return c.co_write(static_cast<uint64_t>(offset), qiov, f, oc);
    });
}

int NbdNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    if (!has_flag(nbd::kTxSendWriteZeroes)) return -ENOTSUP;
    uint16_t f = 0;
    if (!(flags & kReqMayUnmap)) f |= nbd::kCmdFlagNoHole;
    if ((flags & kReqFua) && supports_fua_) f |= nbd::kCmdFlagFua;
    if (flags & kReqNoFallback) {
        if (!has_flag(nbd::kTxSendFastZero)) return -ENOTSUP;
        f |= nbd::kCmdFlagFastZero;
    }
    return co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) {
        return c.co_command(nbd::kCmdWriteZeroes, static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), f, oc);
    });
}

int NbdNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    if (!has_flag(nbd::kTxSendTrim)) return -ENOTSUP;
    return co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) {
        return c.co_command(nbd::kCmdTrim, static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), 0, oc);
    });
}

int NbdNode::do_co_flush_to_disk()
{
    if (!has_flag(nbd::kTxSendFlush)) return 0;
    return co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) { return c.co_command(nbd::kCmdFlush, 0, 0, 0, oc); });
}

int NbdNode::do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum, int64_t *map,
                                BlockNode **file)
{
    (void)want_zero;
    *map = offset;
    *file = this;
    if (!have_ctx_) {
        *pnum = bytes;
        return kStatusData | kStatusOffsetValid;
    }
    uint32_t align = bl_.request_alignment;
    uint64_t len = std::min<uint64_t>(static_cast<uint64_t>(bytes), info_.extended ? (1ULL << 40) : 0x80000000ULL);
    len = std::max<uint64_t>(len - len % align, std::min<uint64_t>(align, static_cast<uint64_t>(bytes)));
    nbd::Extent ext;
    int ret = co_with_retry([&](Conn &c, nbd::ReqOutcome *oc) {
        return c.co_block_status(static_cast<uint64_t>(offset), len, ctx_id_, &ext, oc);
    });
    if (ret < 0) return ret;
    uint64_t n = ext.length;
    uint32_t f = ext.flags;
    if (n % align && static_cast<int64_t>(n) < bytes) {
        // A sub-alignment extent: round down, or call the block data when
        // that leaves nothing (it then holds whatever the server has).
        n -= n % align;
        if (n == 0) {
            n = align;
            f = 0;
        }
    }
    *pnum = static_cast<int64_t>(std::min<uint64_t>(n, static_cast<uint64_t>(bytes)));
    return (f & nbd::kStateHole ? 0 : kStatusData) | (f & nbd::kStateZero ? kStatusZero : 0) | kStatusOffsetValid;
}

// Moves the calling coroutine to ctx's thread; returns the context it
// left. The hand-over is scheduled from the current context so that ctx
// never enters the coroutine before it has yielded. Yields.
AioContext *co_move_to(AioContext *ctx)
{
    AioContext *from = AioContext::current();
    if (!ctx || ctx == from) return from;
    struct Hop {
        AioContext *to;
        Coroutine *co;
    } hop{ctx, coroutine_self()};
    from->schedule_oneshot(
        [](void *p) {
            auto *h = static_cast<Hop *>(p);
            h->to->co_schedule(h->co);
        },
        &hop);
    coroutine_yield();
    return from;
}

// Image "creation" on an NBD export (qemu-img convert/create with an nbd://
// target, as QEMU allows for protocols that cannot create images): opens
// the export, which must already hold at least "size" bytes, and zeroes its
// first sector so that the old contents are not probed as a format.
const CreateOptionDesc kNbdCreateOptions[] = {
    {"size", CreateOptionType::kSize, "Virtual disk size", nullptr},
};

Status nbd_create_image(const std::string &filename, const CreateOptions &opts)
{
    BG_TRY_ASSIGN(uint64_t size, opts.get_size("size", 0));
    BlockGraph graph;
    auto node = graph.add_node_json(protocol_node_options(filename));
    if (!node) {
        return Error{node.err(), "Protocol driver 'nbd' does not support creating new images, so an existing image "
                                 "must be selected as the target; however, opening the given target as an existing "
                                 "image failed: " + node.msg()};
    }
    int64_t len = node.value()->getlength();
    if (len < 0 || static_cast<uint64_t>(len) < size) {
        return make_error(ENOSPC, "Cannot grow NBD exports: the export holds %lld bytes, %llu are needed",
                          static_cast<long long>(len), static_cast<unsigned long long>(size));
    }
    BG_TRY_ASSIGN(auto blk, BlockBackend::create(node.value(), kPermWrite | kPermConsistentRead, kPermAll, "qemu-img"));
    int64_t n = std::min<int64_t>(len, 512);
    BlockBackend *b = blk.get();
    int r = n > 0 ? run_in_coroutine([&] { return b->co_pwrite_zeroes(0, n, kReqMayUnmap); }) : 0;
    if (r < 0) return make_error(-r, "Failed to clear the new image's first sector: %s", strerror(-r));
    return {};
}

const char *const kNbdPrefixes[] = {"nbd", "nbd+tcp", "nbd+unix", "nbds", "nbds+tcp", "nbds+unix", nullptr};

} // namespace

extern const BlockDriver kDriverNbd = {
    .name = "nbd",
    .kind = BlockDriverKind::kProtocol,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapBlockStatus | kCapFlush | kCapPersistent,
    .summary = "an export of an NBD server (TCP or unix socket, TLS, structured replies, reconnect)",
    .decode_options = decode_nbd_options,
    .create = []() -> std::unique_ptr<BlockNode> { return std::make_unique<NbdNode>(); },
    .probe = nullptr,
    .create_opts = kNbdCreateOptions,
    .create_image = nbd_create_image,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = kNbdPrefixes,
};

} // namespace bg
