// The `rbd` protocol driver (QEMU's block/rbd.c): a node whose bytes are a
// RADOS block device image on a Ceph cluster, through the real client
// libraries (librbd, librados).
//
// Options (QEMU's BlockdevOptionsRbd): pool, namespace, image, snapshot,
// conf, user, auth-client-required (list: cephx, none), key-secret (the id
// of a secret object holding the base64 key), server (list of host/port:
// the monitors), and "=keyvalue-pairs" (a JSON array of alternating keys
// and values for rados_conf_set, what the file name's extra keys become);
// or "filename": rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:KEY=VALUE...] with '\'
// escaping ':', '@', '/' and '='; KEY conf sets the conf file, id the user.
//
// Connecting: the conf file (else $CEPH_CONF, then /etc/ceph/ceph.conf,
// both optional) is read, then the key/value pairs, the monitors and the
// key are set; librbd's cache (rbd_cache) is on unless cache.direct=on, as
// in QEMU, and a key/value pair may override that. The connect is bounded
// by client_mount_timeout, which we set to kDefaultMountTimeout when
// nothing configured it (librados' own default of 300 s looks like a hang).
//
// Requests go through librbd's asynchronous calls. A completion arrives on
// a librbd thread; the callback there only stores the result, releases the
// completion and schedules the waiting coroutine in the AioContext it was
// issued from (that context's own wake-up), so no block-layer code ever
// runs on a librbd thread. Any number of requests may be in flight; while
// one is, its context sleeps instead of polling (foreign_wait_begin).
//
// Writes past the end grow the image first (rbd_resize), as QEMU does, so
// a format (qcow2) on top can allocate past the end. Snapshots are rbd
// snapshots (id = name). Block status comes from rbd_diff_iterate2 over
// whole objects when the image has a valid fast-diff object map; otherwise
// everything is data.
//
// Threading: librbd's image handle is thread-safe; requests may come from
// coroutines of any thread. Resizes are serialised by resize_lock_ (the
// image length is an atomic). Management calls (open, snapshots, info,
// truncate, block status) are synchronous librbd calls that block the
// calling thread for their duration, as QEMU's do.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <glib.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

#include "block/block-driver.h"
#include "qapi/option-reader.h"
#include "util/aio.h"
#include "util/coroutine.h"
#include "util/log.h"
#include "util/user-objects.h"

namespace bg {

namespace {

// Seconds a connect may take when nothing configured client_mount_timeout.
constexpr const char *kDefaultMountTimeout = "30";
// librados' built-in client_mount_timeout (seconds).
constexpr const char *kLibradosMountTimeout = "300";
constexpr const char kPrefix[] = "rbd:";

struct RbdServer {
    std::string host;
    std::string port;
};

struct RbdOptions : DriverOptionsOf<RbdOptions> {
    std::string pool;
    std::string ns;                          // "namespace"
    std::string image;
    std::string snapshot;
    std::string conf;
    std::string user;
    std::string key_secret;                  // "key-secret": a secret object's id
    std::vector<std::string> auth_client_required;   // "cephx", "none"
    std::vector<RbdServer> servers;          // "server"
    std::vector<std::string> keyvalue;       // "=keyvalue-pairs": k, v, k, v ...

    void encode(nlohmann::json &j) const override
    {
        j["pool"] = pool;
        if (!ns.empty()) j["namespace"] = ns;
        j["image"] = image;
        if (!snapshot.empty()) j["snapshot"] = snapshot;
        if (!conf.empty()) j["conf"] = conf;
        if (!user.empty()) j["user"] = user;
        if (!key_secret.empty()) j["key-secret"] = key_secret;
        if (!auth_client_required.empty()) j["auth-client-required"] = auth_client_required;
        if (!servers.empty()) {
            nlohmann::json a = nlohmann::json::array();
            for (const RbdServer &s : servers) a.push_back({{"host", s.host}, {"port", s.port}});
            j["server"] = a;
        }
        if (!keyvalue.empty()) j["=keyvalue-pairs"] = nlohmann::json(keyvalue).dump();
    }
};

// ---------------------------------------------------------------- file names

// The position of the first unescaped delim in s from pos, or npos.
size_t find_unescaped(const std::string &s, char delim, size_t pos = 0)
{
    for (size_t i = pos; i < s.size(); i++) {
        if (s[i] == '\\') {
            i++;
        } else if (s[i] == delim) {
            return i;
        }
    }
    return std::string::npos;
}

// Splits s at its first unescaped delim: returns the part before it and
// leaves the rest (after delim) in *s; *found tells whether there was one.
std::string next_token(std::string *s, char delim, bool *found)
{
    size_t at = find_unescaped(*s, delim);
    *found = at != std::string::npos;
    std::string tok = s->substr(0, at);
    *s = *found ? s->substr(at + 1) : std::string();
    return tok;
}

std::string unescape(const std::string &s)
{
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\\' && i + 1 < s.size()) i++;
        out.push_back(s[i]);
    }
    return out;
}

// Escapes '\\' and the characters of special (those that would end the
// part of the file name s goes into).
std::string escape(const std::string &s, const char *special = ":@/=")
{
    std::string out;
    for (char c : s) {
        if (c == '\\' || std::strchr(special, c)) out.push_back('\\');
        out.push_back(c);
    }
    return out;
}

// rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:KEY=VALUE...] into o. Errors (EINVAL)
// name what is wrong.
Status parse_rbd_filename(const std::string &name, RbdOptions *o)
{
    if (name.compare(0, sizeof(kPrefix) - 1, kPrefix) != 0) {
        return make_error(EINVAL, "File name must start with 'rbd:'");
    }
    std::string rest = name.substr(sizeof(kPrefix) - 1);
    bool found = false;
    std::string pool = next_token(&rest, '/', &found);
    if (!found) return make_error(EINVAL, "Pool name is required");
    o->pool = unescape(pool);
    // The image part ends at the first unescaped ':'; a snapshot follows '@'.
    size_t colon = find_unescaped(rest, ':');
    std::string image = rest.substr(0, colon);
    std::string opts = colon == std::string::npos ? "" : rest.substr(colon + 1);
    bool has_opts = colon != std::string::npos;
    size_t at = find_unescaped(image, '@');
    if (at != std::string::npos) {
        o->snapshot = unescape(image.substr(at + 1));
        image = image.substr(0, at);
    }
    size_t slash = find_unescaped(image, '/');
    if (slash != std::string::npos) {
        o->ns = unescape(image.substr(0, slash));
        image = image.substr(slash + 1);
    }
    o->image = unescape(image);
    while (has_opts) {
        std::string key = next_token(&opts, '=', &found);
        if (!found) return make_error(EINVAL, "conf option %s has no value", unescape(key).c_str());
        key = unescape(key);
        std::string value = unescape(next_token(&opts, ':', &has_opts));
        if (key == "conf") {
            o->conf = value;
        } else if (key == "id") {
            o->user = value;
        } else {
            o->keyvalue.push_back(key);
            o->keyvalue.push_back(value);
        }
    }
    return {};
}

// A list of strings (JSON array, or keyval's "key.N" form).
Status get_string_list(OptionReader &r, const char *key, std::vector<std::string> *out)
{
    const nlohmann::json *v = r.take(key);
    if (!v) return {};
    if (!v->is_array()) return r.error(key, "expected a list");
    for (size_t i = 0; i < v->size(); i++) {
        if (!(*v)[i].is_string()) return r.error(std::string(key) + "." + std::to_string(i), "expected a string");
        out->push_back((*v)[i].get<std::string>());
    }
    return {};
}

// "=keyvalue-pairs": a string holding a JSON array of an even number of strings.
Status get_keyvalue_pairs(OptionReader &r, std::vector<std::string> *out)
{
    std::string s;
    BG_TRY(r.get("=keyvalue-pairs", &s));
    if (s.empty()) return {};
    nlohmann::json a = nlohmann::json::parse(s, nullptr, false);
    bool ok = a.is_array() && a.size() % 2 == 0;
    for (size_t i = 0; ok && i < a.size(); i++) ok = a[i].is_string();
    if (!ok) return r.error("=keyvalue-pairs", "expected a JSON list of key, value strings");
    for (const auto &e : a) out->push_back(e.get<std::string>());
    return {};
}

Result<std::unique_ptr<DriverOptions>> decode_rbd_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<RbdOptions>();
    std::string filename;
    BG_TRY(r.get("filename", &filename));
    if (!filename.empty()) {
        for (const char *k : {"pool", "namespace", "image", "snapshot", "conf", "user", "=keyvalue-pairs"}) {
            if (r.has(k)) return r.error(k, "may not be given together with a file name");
        }
        BG_TRY(parse_rbd_filename(filename, o.get()));
    } else {
        BG_TRY(r.require("pool", &o->pool));
        BG_TRY(r.get("namespace", &o->ns));
        BG_TRY(r.require("image", &o->image));
        BG_TRY(r.get("snapshot", &o->snapshot));
        BG_TRY(r.get("conf", &o->conf));
        BG_TRY(r.get("user", &o->user));
        BG_TRY(get_keyvalue_pairs(r, &o->keyvalue));
    }
    BG_TRY(r.get("key-secret", &o->key_secret));
    BG_TRY(get_string_list(r, "auth-client-required", &o->auth_client_required));
    for (size_t i = 0; i < o->auth_client_required.size(); i++) {
        const std::string &a = o->auth_client_required[i];
        if (a != "cephx" && a != "none") {
            return r.error("auth-client-required." + std::to_string(i), "'" + a + "' is not one of: cephx, none");
        }
    }
    BG_TRY(r.get_object_list("server", [&o](OptionReader &s) -> Status {
        RbdServer srv;
        BG_TRY(s.require("host", &srv.host));
        BG_TRY(s.require("port", &srv.port));
        o->servers.push_back(srv);
        return {};
    }));
    if (o->pool.empty()) return r.error("pool", "Pool name is required");
    if (o->image.empty()) return r.error("image", "Image name is required");
    return std::unique_ptr<DriverOptions>(std::move(o));
}

// ---------------------------------------------------------------- the cluster connection

Error rbd_error(int r, const std::string &what)
{
    return make_error(-r, "%s: %s", what.c_str(), strerror(-r));
}

// A connected cluster handle and an I/O context on the pool (and
// namespace); closed on destruction.
struct RbdConnection {
    rados_t cluster = nullptr;
    rados_ioctx_t io = nullptr;

    RbdConnection() = default;
    RbdConnection(const RbdConnection &) = delete;
    RbdConnection &operator=(const RbdConnection &) = delete;
    ~RbdConnection()
    {
        if (io) rados_ioctx_destroy(io);
        if (cluster) rados_shutdown(cluster);
    }
};

// The monitors of server as librados' mon_host value.
std::string mon_host_of(const std::vector<RbdServer> &servers)
{
    std::string v;
    for (const RbdServer &s : servers) {
        if (!v.empty()) v += ';';
        bool v6 = s.host.find(':') != std::string::npos && s.host.front() != '[';
        v += (v6 ? "[" + s.host + "]" : s.host) + ":" + s.port;
    }
    return v;
}

// Applies the configuration of o to a created cluster handle. librbd's
// cache follows cache.direct (off with cache.direct=on), unless the
// key/value pairs set rbd_cache themselves.
Status configure_cluster(rados_t c, const RbdOptions &o, bool cache_direct)
{
    if (!o.conf.empty()) {
        int r = rados_conf_read_file(c, o.conf.c_str());
        if (r < 0) return rbd_error(r, "error reading conf file " + o.conf);
    } else {
        rados_conf_read_file(c, nullptr);   // $CEPH_CONF, /etc/ceph/ceph.conf: optional
    }
    char cur[32] = "";
    if (rados_conf_get(c, "client_mount_timeout", cur, sizeof cur) == 0 &&
        std::strtod(cur, nullptr) == std::strtod(kLibradosMountTimeout, nullptr)) {
        rados_conf_set(c, "client_mount_timeout", kDefaultMountTimeout);
    }
    rados_conf_set(c, "rbd_cache", cache_direct ? "false" : "true");
    for (size_t i = 0; i + 1 < o.keyvalue.size(); i += 2) {
        int r = rados_conf_set(c, o.keyvalue[i].c_str(), o.keyvalue[i + 1].c_str());
        if (r < 0) return rbd_error(r, "invalid conf option " + o.keyvalue[i]);
    }
    if (!o.servers.empty()) {
        int r = rados_conf_set(c, "mon_host", mon_host_of(o.servers).c_str());
        if (r < 0) return rbd_error(r, "invalid server address " + mon_host_of(o.servers));
    }
    if (!o.key_secret.empty()) {
        // librados wants the key in base64; the secret holds its bytes.
        BG_TRY_ASSIGN(std::string key, secret_lookup(o.key_secret));
        gchar *b64 = g_base64_encode(reinterpret_cast<const guchar *>(key.data()), key.size());
        int r = rados_conf_set(c, "key", b64);
        g_free(b64);
        if (r < 0) return rbd_error(r, "invalid key in secret '" + o.key_secret + "'");
    }
    if (!o.auth_client_required.empty()) {
        std::string v;
        for (const std::string &a : o.auth_client_required) v += (v.empty() ? "" : ";") + a;
        int r = rados_conf_set(c, "auth_client_required", v.c_str());
        if (r < 0) return rbd_error(r, "invalid auth-client-required");
    }
    return {};
}

// Connects to the cluster o names and opens its pool (and namespace).
Result<std::unique_ptr<RbdConnection>> rbd_connect(const RbdOptions &o, bool cache_direct = false)
{
    auto conn = std::make_unique<RbdConnection>();
    int r = rados_create(&conn->cluster, o.user.empty() ? nullptr : o.user.c_str());
    if (r < 0) return rbd_error(r, "error initializing");
    BG_TRY(configure_cluster(conn->cluster, o, cache_direct));
    r = rados_connect(conn->cluster);
    if (r < 0) return rbd_error(r, "error connecting");
    r = rados_ioctx_create(conn->cluster, o.pool.c_str(), &conn->io);
    if (r < 0) return rbd_error(r, "error opening pool " + o.pool);
    rados_ioctx_set_namespace(conn->io, o.ns.c_str());
    return conn;
}

// ---------------------------------------------------------------- the node

// One asynchronous librbd request: the issuing coroutine waits for it.
struct RbdRequest {
    Coroutine *co = nullptr;
    AioContext *ctx = nullptr;
    ssize_t ret = 0;

    // Runs on a librbd thread: hands the result over and nothing else.
    static void complete(rbd_completion_t c, void *arg)
    {
        auto *req = static_cast<RbdRequest *>(arg);
        req->ret = rbd_aio_get_return_value(c);
        rbd_aio_release(c);
        req->ctx->co_schedule(req->co);
    }
};

class RbdNode final : public BlockNode {
  public:
    ~RbdNode() override { close_image(); }

    std::string filename() const override;
    int64_t allocated_file_size() override { return -ENOTSUP; }

  protected:
    Status open(const BlockdevOptions &opts) override;
    void close() override { close_image(); }

    int coroutine_fn do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override;
    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override;
    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override;
    int coroutine_fn do_co_flush_to_disk() override;
    int coroutine_fn do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags) override;
    int coroutine_fn do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                        int64_t *map, BlockNode **file) override;
    int64_t do_getlength() override { return size_.load(); }
    void refresh_limits(BlockLimits *bl) override;

    Status coroutine_fn co_get_info(ImageInfo *info) override;
    Result<std::vector<SnapshotInfo>> coroutine_fn co_snapshot_list() override;
    Status coroutine_fn co_snapshot_create(SnapshotInfo *sn) override;
    Status coroutine_fn co_snapshot_goto(const std::string &id_or_name) override;
    Status coroutine_fn co_snapshot_delete(const std::optional<std::string> &id,
                                           const std::optional<std::string> &name) override;

  private:
    // Issues one asynchronous call (submit(completion) returns its start
    // status) and waits for its result. Yields.
    template <typename F>
    ssize_t coroutine_fn co_aio(F submit);
    // Grows the image to at least end (writes past the end).
    int coroutine_fn grow_to(int64_t end);
    Status refresh_size();
    void close_image();

    RbdOptions opts_;
    std::unique_ptr<RbdConnection> conn_;
    rbd_image_t image_ = nullptr;
    std::atomic<int64_t> size_{0};
    uint64_t object_size_ = 0;
    uint64_t features_ = 0;
    std::mutex resize_lock_;
};

std::string RbdNode::filename() const
{
    std::string n = kPrefix + escape(opts_.pool) + "/";
    if (!opts_.ns.empty()) n += escape(opts_.ns) + "/";
    n += escape(opts_.image);
    if (!opts_.snapshot.empty()) n += "@" + escape(opts_.snapshot);
    if (!opts_.conf.empty()) n += ":conf=" + escape(opts_.conf, ":");
    if (!opts_.user.empty()) n += ":id=" + escape(opts_.user, ":");
    if (!opts_.servers.empty()) n += ":mon_host=" + escape(mon_host_of(opts_.servers), ":");
    for (size_t i = 0; i + 1 < opts_.keyvalue.size(); i += 2) {
        n += ":" + escape(opts_.keyvalue[i], ":=") + "=" + escape(opts_.keyvalue[i + 1], ":");
    }
    return n;
}

Status RbdNode::open(const BlockdevOptions &opts)
{
    const auto *o = opts.as<RbdOptions>();
    if (!o) return node_error(EINVAL, "options are not rbd options");
    opts_ = *o;
    if (!opts_.snapshot.empty() && !read_only_) {
        if (!opts.auto_read_only) return node_error(EINVAL, "rbd snapshots are read-only");
        read_only_ = true;
    }
    BG_TRY_ASSIGN(conn_, rbd_connect(opts_, opts.cache_direct));
    const char *snap = opts_.snapshot.empty() ? nullptr : opts_.snapshot.c_str();
    int r = read_only_ ? rbd_open_read_only(conn_->io, opts_.image.c_str(), &image_, snap)
                       : rbd_open(conn_->io, opts_.image.c_str(), &image_, snap);
    if (r < 0) {
        image_ = nullptr;
        conn_.reset();
        return rbd_error(r, "error reading header from " + opts_.image);
    }
    rbd_image_info_t info{};
    r = rbd_stat(image_, &info, sizeof info);
    if (r == 0) r = rbd_get_features(image_, &features_);
    if (r < 0) {
        close_image();
        return rbd_error(r, "error getting information about " + opts_.image);
    }
    size_ = static_cast<int64_t>(info.size);
    object_size_ = info.obj_size;
    supports_fua_ = false;   // the generic layer flushes after a FUA write
    supported_zero_flags_ = kReqMayUnmap;
    return {};
}

void RbdNode::close_image()
{
    if (image_) rbd_close(image_);
    image_ = nullptr;
    conn_.reset();
}

void RbdNode::refresh_limits(BlockLimits *bl)
{
    bl->opt_transfer = std::max<uint64_t>(bl->opt_transfer, object_size_);
    // Pieces of a discard below librbd's granularity are skipped anyway.
    bl->pdiscard_alignment = std::max<uint64_t>(bl->pdiscard_alignment, object_size_);
}

Status RbdNode::refresh_size()
{
    uint64_t sz = 0;
    int r = rbd_get_size(image_, &sz);
    if (r < 0) return rbd_error(r, "error getting the size of " + opts_.image);
    size_ = static_cast<int64_t>(sz);
    return {};
}

// A write-type request's result: 0, or the errno the writer sees (a pool
// over its quota, EDQUOT, is a full disk to a block device's user).
int write_status(ssize_t r)
{
    if (r >= 0) return 0;
    return r == -EDQUOT ? -ENOSPC : static_cast<int>(r);
}

template <typename F>
ssize_t RbdNode::co_aio(F submit)
{
    RbdRequest req;
    req.co = coroutine_self();
    req.ctx = AioContext::current();
    rbd_completion_t c = nullptr;
    int r = rbd_aio_create_completion(&req, &RbdRequest::complete, &c);
    if (r < 0) return r;
    r = submit(c);
    if (r < 0) {
        rbd_aio_release(c);
        return r;
    }
    req.ctx->foreign_wait_begin();
    coroutine_yield();
    req.ctx->foreign_wait_end();
    return req.ret;
}

// librbd calls a resize's progress callback unconditionally (a null one
// crashes a shrink): this one ignores the progress.
int no_progress(uint64_t, uint64_t, void *) { return 0; }

int RbdNode::grow_to(int64_t end)
{
    std::lock_guard<std::mutex> g(resize_lock_);
    if (end <= size_.load()) return 0;
    int r = rbd_resize2(image_, static_cast<uint64_t>(end), false, no_progress, nullptr);
    if (r < 0) return write_status(r);
    size_ = end;
    return 0;
}

int RbdNode::do_co_preadv(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)flags;
    ssize_t r = co_aio([&](rbd_completion_t c) {
        return rbd_aio_readv(image_, qiov.iov(), qiov.niov(), static_cast<uint64_t>(offset), c);
    });
    if (r < 0) return static_cast<int>(r);
    // Past the end (the image shrank under us): zeros.
    if (r < bytes) qiov.memset(static_cast<size_t>(r), 0, static_cast<size_t>(bytes - r));
    return 0;
}

int RbdNode::do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags)
{
    (void)flags;
    if (offset + bytes > size_.load()) {
        int g = grow_to(offset + bytes);
        if (g < 0) return g;
    }
    ssize_t r = co_aio([&](rbd_completion_t c) {
        return rbd_aio_writev(image_, qiov.iov(), qiov.niov(), static_cast<uint64_t>(offset), c);
    });
    return write_status(r);
}

int RbdNode::do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags)
{
    if (offset + bytes > size_.load()) {
        int g = grow_to(offset + bytes);
        if (g < 0) return g;
    }
    // Without MAY_UNMAP the zeros must stay allocated.
    int zflags = (flags & kReqMayUnmap) ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
    ssize_t r = co_aio([&](rbd_completion_t c) {
        return rbd_aio_write_zeroes(image_, static_cast<uint64_t>(offset), static_cast<size_t>(bytes), c, zflags,
                                    0);
    });
    return write_status(r);
}

int RbdNode::do_co_pdiscard(int64_t offset, int64_t bytes)
{
    ssize_t r = co_aio([&](rbd_completion_t c) {
        return rbd_aio_discard(image_, static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), c);
    });
    return write_status(r);
}

int RbdNode::do_co_flush_to_disk()
{
    ssize_t r = co_aio([&](rbd_completion_t c) { return rbd_aio_flush(image_, c); });
    return write_status(r);
}

int RbdNode::do_co_truncate(int64_t offset, bool exact, PreallocMode prealloc, ReqFlags flags)
{
    (void)exact;
    (void)flags;
    if (prealloc != PreallocMode::kOff) return -ENOTSUP;
    std::lock_guard<std::mutex> g(resize_lock_);
    int r = rbd_resize2(image_, static_cast<uint64_t>(offset), true, no_progress, nullptr);
    if (r < 0) return r;
    size_ = offset;
    return 0;
}

// rbd_diff_iterate2's callback: records the first allocated extent and
// stops the iteration (with kStopIteration).
struct FirstExtent {
    static constexpr int kStopIteration = -9000;
    bool found = false;
    uint64_t offset = 0;
    uint64_t length = 0;

    static int cb(uint64_t off, size_t len, int exists, void *arg)
    {
        auto *f = static_cast<FirstExtent *>(arg);
        if (!exists) return 0;
        f->found = true;
        f->offset = off;
        f->length = len;
        return kStopIteration;
    }
};

int RbdNode::do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum, int64_t *map,
                                BlockNode **file)
{
    (void)want_zero;
    *map = offset;
    *file = this;
    *pnum = bytes;
    const int data = kStatusData | kStatusOffsetValid;
    uint64_t flags = 0;
    if (!(features_ & RBD_FEATURE_FAST_DIFF) || rbd_get_flags(image_, &flags) < 0 ||
        (flags & RBD_FLAG_FAST_DIFF_INVALID)) {
        return data;
    }
    FirstExtent f;
    int r = rbd_diff_iterate2(image_, nullptr, static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), 1, 1,
                              &FirstExtent::cb, &f);
    if (r < 0 && r != FirstExtent::kStopIteration) return data;
    uint64_t off = static_cast<uint64_t>(offset);
    uint64_t end = off + static_cast<uint64_t>(bytes);
    if (!f.found || f.offset >= end) return kStatusZero | kStatusOffsetValid;
    if (f.offset > off) {
        *pnum = static_cast<int64_t>(f.offset - off);
        return kStatusZero | kStatusOffsetValid;
    }
    *pnum = static_cast<int64_t>(std::min(f.offset + f.length, end) - off);
    return data;
}

// ---------------------------------------------------------------- management

// The feature names of features, in bit order (as `rbd info` lists them).
InfoValue features_info(uint64_t features)
{
    InfoValue list = InfoValue::new_list();
    for (int bit = 0; bit < 64; bit++) {
        uint64_t f = 1ULL << bit;
        if (!(features & f)) continue;
        char name[64] = "";
        size_t n = sizeof name;
        std::string s = rbd_features_to_string(f, name, &n) == 0 ? name : "bit " + std::to_string(bit);
        list.list.push_back(InfoValue::of_string(s));
    }
    return list;
}

Status RbdNode::co_get_info(ImageInfo *info)
{
    info->cluster_size = object_size_;
    InfoValue data = InfoValue::new_dict();
    data.add("pool", InfoValue::of_string(opts_.pool));
    if (!opts_.ns.empty()) data.add("namespace", InfoValue::of_string(opts_.ns));
    data.add("image", InfoValue::of_string(opts_.image));
    data.add("object-size", InfoValue::of_int(static_cast<int64_t>(object_size_)));
    data.add("features", features_info(features_));
    info->format_specific = InfoValue::new_dict();
    info->format_specific.add("type", InfoValue::of_string("rbd")).add("data", data);
    auto snaps = co_snapshot_list();
    if (snaps) info->snapshots = snaps.value();
    return {};
}

Result<std::vector<SnapshotInfo>> RbdNode::co_snapshot_list()
{
    std::vector<rbd_snap_info_t> snaps(16);
    int max = static_cast<int>(snaps.size());
    int n;
    while ((n = rbd_snap_list(image_, snaps.data(), &max)) == -ERANGE) snaps.resize(static_cast<size_t>(max));
    if (n < 0) return rbd_error(n, "error listing the snapshots of " + opts_.image);
    std::vector<SnapshotInfo> out;
    for (int i = 0; i < n; i++) {
        SnapshotInfo s;
        s.id = snaps[static_cast<size_t>(i)].name;
        s.name = s.id;
        s.disk_size = snaps[static_cast<size_t>(i)].size;
        struct timespec ts {};
        if (rbd_snap_get_timestamp(image_, snaps[static_cast<size_t>(i)].id, &ts) == 0) {
            s.date_sec = static_cast<uint32_t>(ts.tv_sec);
            s.date_nsec = static_cast<uint32_t>(ts.tv_nsec);
        }
        out.push_back(s);
    }
    rbd_snap_list_end(snaps.data());
    return out;
}

Status RbdNode::co_snapshot_create(SnapshotInfo *sn)
{
    if (sn->name.empty()) return make_error(EINVAL, "rbd snapshots need a name");
    if (!sn->id.empty() && sn->id != sn->name) return make_error(EINVAL, "ID and name must match for rbd snapshots");
    int r = rbd_snap_create(image_, sn->name.c_str());
    if (r < 0) return rbd_error(r, "failed to create snap");
    sn->id = sn->name;
    return {};
}

Status RbdNode::co_snapshot_goto(const std::string &id_or_name)
{
    int r = rbd_snap_rollback(image_, id_or_name.c_str());
    if (r < 0) return rbd_error(r, "Failed to rollback to snapshot '" + id_or_name + "'");
    return refresh_size();
}

Status RbdNode::co_snapshot_delete(const std::optional<std::string> &id, const std::optional<std::string> &name)
{
    if (id && name && *id != *name) {
        return make_error(EINVAL, "Parameter 'snapshot_id' and 'name' must be the same for rbd snapshots");
    }
    const std::string &snap = name ? *name : *id;
    int r = rbd_snap_remove(image_, snap.c_str());
    if (r < 0) return rbd_error(r, "Failed to remove the snapshot");
    return {};
}

// ---------------------------------------------------------------- image creation

const CreateOptionDesc kRbdCreateOptions[] = {
    {"size", CreateOptionType::kSize, "Virtual disk size", nullptr},
    {"cluster_size", CreateOptionType::kSize, "RBD object size", nullptr},
};

Status rbd_create_image(const std::string &filename, const CreateOptions &opts)
{
    BG_TRY_ASSIGN(uint64_t size, opts.get_size("size", 0));
    BG_TRY_ASSIGN(uint64_t obj, opts.get_size("cluster_size", 0));
    int order = 0;
    if (obj) {
        if (obj & (obj - 1) || obj < 4096 || obj > (32ULL << 20)) {
            return make_error(EINVAL, "obj size needs to be power of 2 and between 4K and 32M");
        }
        while ((1ULL << order) < obj) order++;
    }
    RbdOptions o;
    BG_TRY(parse_rbd_filename(filename, &o));
    if (!o.snapshot.empty()) return make_error(EINVAL, "Can't use snapshot name for image creation");
    BG_TRY_ASSIGN(auto conn, rbd_connect(o));
    rbd_image_options_t io_opts;
    rbd_image_options_create(&io_opts);
    if (order) rbd_image_options_set_uint64(io_opts, RBD_IMAGE_OPTION_ORDER, static_cast<uint64_t>(order));
    int r = rbd_create4(conn->io, o.image.c_str(), size, io_opts);
    rbd_image_options_destroy(io_opts);
    if (r < 0) return rbd_error(r, "error rbd create");
    return {};
}

const char *const kRbdPrefixes[] = {"rbd", nullptr};

} // namespace

extern const BlockDriver kDriverRbd = {
    .name = "rbd",
    .kind = BlockDriverKind::kProtocol,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBlockStatus | kCapFlush |
            kCapPersistent,
    .summary = "an image on a Ceph cluster (librbd): pool, namespace, image, snapshot",
    .decode_options = decode_rbd_options,
    .create = []() -> std::unique_ptr<BlockNode> { return std::make_unique<RbdNode>(); },
    .probe = nullptr,
    .create_opts = kRbdCreateOptions,
    .create_image = rbd_create_image,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = kRbdPrefixes,
};

} // namespace bg
