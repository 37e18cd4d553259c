// One NBD connection, its negotiation phase: the fixed newstyle greeting
// and the options (EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO,
// STRUCTURED_REPLY, LIST/SET_META_CONTEXT, EXTENDED_HEADERS), with QEMU's
// replies and messages.
#include <cerrno>
#include <cstring>

#include "export/nbd/internal.h"
#include "util/log.h"
#include "util/tls.h"

namespace bg {

using namespace nbd;

NbdConn::NbdConn(NbdServer *server, int fd) : server_(server), sock_(std::make_unique<CoSocket>(fd)) {}

NbdConn::~NbdConn()
{
    while (free_list_) {
        NbdRequest *r = free_list_;
        free_list_ = r->next_free;
        free(r->buf);
        delete r;
    }
}

void NbdConn::start()
{
    co_ = coroutine_create(&NbdConn::run_entry, this);
    AioContext::current()->co_enter(co_);
}

void NbdConn::close()
{
    closing_ = true;
    sock_->shutdown();
}

void NbdConn::run_entry(void *opaque) { static_cast<NbdConn *>(opaque)->run(); }

void NbdConn::run()
{
    sock_->set_read_deadline(clock_ns() + kNbdHandshakeLimitNs);
    int r = closing_ ? -1 : negotiate();
    sock_->set_read_deadline(0);
    if (r > 0 && exp_ && !closing_) {
        exp_->attach(this);
        attached_ = true;
        negotiated_ = true;
        transmit();
        exp_->detach(this);
        attached_ = false;
    } else if (r < 0) {
        log_debug("NBD client dropped during negotiation");
    }
    sock_->shutdown();
    NbdServer *s = server_;
    s->conn_ended(this);
    delete this;
}

// ---------------------------------------------------------------- helpers

int NbdConn::read_opt(void *buf, size_t len)
{
    if (len == 0) return 0;
    int r = sock_->co_read_full(buf, len);
    return r < 0 ? -1 : 0;
}

int NbdConn::drop_option_data(uint32_t len)
{
    uint8_t scratch[4096];
    while (len > 0) {
        uint32_t n = len > sizeof(scratch) ? uint32_t(sizeof(scratch)) : len;
        if (read_opt(scratch, n) < 0) return -1;
        len -= n;
    }
    return 0;
}

int NbdConn::send_rep(uint32_t opt, uint32_t type, const void *data, size_t len)
{
    uint8_t h[kOptReplyHeaderSize];
    put64(h, kOptReplyMagic);
    put32(h + 8, opt);
    put32(h + 12, type);
    put32(h + 16, static_cast<uint32_t>(len));
    struct iovec iov[2] = {{h, sizeof(h)}, {const_cast<void *>(data), len}};
    return sock_->co_write_full(iov, len ? 2 : 1) < 0 ? -1 : 0;
}

int NbdConn::send_err(uint32_t opt, uint32_t type, const std::string &msg)
{
    log_debug("NBD option %s: %s", opt_name(opt), msg.c_str());
    return send_rep(opt, type, msg.data(), msg.size());
}

void NbdConn::select_export(NbdExport *e) { exp_ = e; }

// ---------------------------------------------------------------- negotiation

int NbdConn::negotiate()
{
    uint8_t g[kHandshakeSize];
    put64(g, kMagic);
    put64(g + 8, kOptMagic);
    put16(g + 16, kFlagFixedNewstyle | kFlagNoZeroes);
    if (sock_->co_write_full(g, sizeof(g)) < 0) return -1;
    uint8_t cf[4];
    if (read_opt(cf, 4) < 0) return -1;
    uint32_t flags = get32(cf);
    if (flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
        log_debug("NBD: Unknown client flags 0x%x received", flags & ~(kClientFixedNewstyle | kClientNoZeroes));
        return -1;
    }
    fixed_ = flags & kClientFixedNewstyle;
    no_zeroes_ = flags & kClientNoZeroes;
    for (;;) {
        if (closing_) return -1;
        uint8_t h[kOptHeaderSize];
        if (read_opt(h, sizeof(h)) < 0) return -1;
        if (get64(h) != kOptMagic) {
            log_debug("NBD: Bad magic received");
            return -1;
        }
        uint32_t opt = get32(h + 8), len = get32(h + 12);
        if (len > kMaxOptionSize) {
            log_debug("NBD: Bad option length %u", len);
            return -1;
        }
        int r = handle_option(opt, len);
        if (r != 0) return r;
    }
}

int NbdConn::handle_option(uint32_t opt, uint32_t len)
{
    if (server_->tls_required() && !tls_done_) {
        if (opt == kOptStartTls) return opt_starttls(len);
        if (opt == kOptExportName) return -1;
        if (drop_option_data(len) < 0) return -1;
        char msg[64];
        snprintf(msg, sizeof(msg), "Option 0x%x not permitted before TLS", opt);
        if (send_err(opt, kRepErrTlsReqd, msg) < 0) return -1;
        return opt == kOptAbort ? -1 : 0;
    }
    if (!fixed_ && opt != kOptExportName) {
        log_debug("NBD: option %u without fixed newstyle", opt);
        return -1;
    }
    auto no_data = [&]() -> int {
        if (len == 0) return 1;
        if (drop_option_data(len) < 0) return -1;
        return send_err(opt, kRepErrInvalid, std::string("option '") + opt_name(opt) + "' has unexpected length") < 0
                   ? -1
                   : 0;
    };
    switch (opt) {
    case kOptExportName:
        return opt_export_name(len);
    case kOptAbort:
        (void)drop_option_data(len);
        (void)send_rep(opt, kRepAck, nullptr, 0);
        return -1;
    case kOptList:
        return opt_list(len);
    case kOptStartTls:
        return opt_starttls(len);
    case kOptInfo:
    case kOptGo:
        return opt_info_go(opt, len);
    case kOptListMetaContext:
    case kOptSetMetaContext:
        return opt_meta_context(opt, len);
    case kOptStructuredReply: {
        int r = no_data();
        if (r <= 0) return r;
        if (extended_) return send_err(opt, kRepErrExtHeaderReqd, "extended headers already negotiated") < 0 ? -1 : 0;
        if (structured_) return send_err(opt, kRepErrInvalid, "structured reply already negotiated") < 0 ? -1 : 0;
        structured_ = true;
        return send_rep(opt, kRepAck, nullptr, 0) < 0 ? -1 : 0;
    }
    case kOptExtendedHeaders: {
        int r = no_data();
        if (r <= 0) return r;
        if (extended_) return send_err(opt, kRepErrInvalid, "extended headers already negotiated") < 0 ? -1 : 0;
        extended_ = structured_ = true;
        return send_rep(opt, kRepAck, nullptr, 0) < 0 ? -1 : 0;
    }
    default: {
        if (drop_option_data(len) < 0) return -1;
        char msg[96];
        snprintf(msg, sizeof(msg), "Unsupported option %u (%s)", opt, opt_name(opt));
        return send_err(opt, kRepErrUnsup, msg) < 0 ? -1 : 0;
    }
    }
}

int NbdConn::opt_export_name(uint32_t len)
{
    if (len > kMaxStringSize) return -1;
    std::string name(len, '\0');
    if (read_opt(name.data(), len) < 0) return -1;
    if (extended_) return -1;   // not allowed once extended headers are on
    NbdExport *e = NbdServer::find_export(name);
    if (!e) {
        log_debug("NBD: export '%s' not present", name.c_str());
        return -1;
    }
    uint8_t buf[10 + 124] = {};
    put64(buf, static_cast<uint64_t>(e->size()));
    put16(buf + 8, e->tx_flags(structured_));
    if (sock_->co_write_full(buf, no_zeroes_ ? 10 : sizeof(buf)) < 0) return -1;
    select_export(e);
    return 1;
}

int NbdConn::opt_list(uint32_t len)
{
    if (len != 0) {
        if (drop_option_data(len) < 0) return -1;
        return send_err(kOptList, kRepErrInvalid, "option 'list' has unexpected length") < 0 ? -1 : 0;
    }
    for (const auto &[name, e] : NbdServer::exports()) {
        std::string data(4, '\0');
        put32(reinterpret_cast<uint8_t *>(data.data()), static_cast<uint32_t>(name.size()));
        data += name;
        data += e->description();
        if (send_rep(kOptList, kRepServer, data.data(), data.size()) < 0) return -1;
    }
    return send_rep(kOptList, kRepAck, nullptr, 0) < 0 ? -1 : 0;
}

int NbdConn::opt_starttls(uint32_t len)
{
    if (len != 0) {
        if (drop_option_data(len) < 0) return -1;
        return send_err(kOptStartTls, kRepErrInvalid, "option 'starttls' has unexpected length") < 0 ? -1 : 0;
    }
    if (tls_done_) return send_err(kOptStartTls, kRepErrInvalid, "TLS already enabled") < 0 ? -1 : 0;
    if (!server_->tls_required()) return send_err(kOptStartTls, kRepErrPolicy, "TLS not configured") < 0 ? -1 : 0;
    if (send_rep(kOptStartTls, kRepAck, nullptr, 0) < 0) return -1;
    // The handshake, the certificate checks and tls-authz (QEMU's texts:
    // "TLS x509 authz check for DN is denied").
    Status st = sock_->co_start_tls(*server_->tls_creds(), true, "", server_->options().tls_authz);
    if (!st.ok()) {
        log_warn("NBD client: %s", st.msg().c_str());
        return -1;
    }
    tls_done_ = true;
    // Anything negotiated in the clear is forgotten.
    structured_ = extended_ = false;
    meta_export_.clear();
    meta_base_ = meta_depth_ = false;
    meta_bitmaps_.clear();
    return 0;
}

int NbdConn::opt_info_go(uint32_t opt, uint32_t len)
{
    std::vector<uint8_t> data(len);
    if (read_opt(data.data(), len) < 0) return -1;
    auto invalid = [&](const char *msg) { return send_err(opt, kRepErrInvalid, msg) < 0 ? -1 : 0; };
    if (len < 6) return invalid("request data too short");
    uint32_t namelen = get32(data.data());
    if (namelen > len - 6 || namelen > kMaxStringSize) return invalid("name length is incorrect");
    std::string name(reinterpret_cast<char *>(data.data()) + 4, namelen);
    uint16_t n = get16(data.data() + 4 + namelen);
    if (static_cast<uint64_t>(len) != 6ULL + namelen + 2ULL * n) return invalid("request data length is incorrect");
    bool want_name = false, want_bs = false;
    for (uint16_t i = 0; i < n; i++) {
        uint16_t t = get16(data.data() + 6 + namelen + 2 * i);
        if (t == kInfoName) want_name = true;
        if (t == kInfoBlockSize) want_bs = true;
    }
    NbdExport *e = NbdServer::find_export(name);
    if (!e) return send_err(opt, kRepErrUnknown, "export '" + name + "' not present") < 0 ? -1 : 0;
    return send_info_go_replies(opt, e, want_name, want_bs);
}

int NbdConn::send_info_go_replies(uint32_t opt, NbdExport *e, bool want_name, bool want_bs)
{
    std::string buf;
    if (want_name) {
        buf.assign(2, '\0');
        put16(reinterpret_cast<uint8_t *>(buf.data()), kInfoName);
        buf += e->name();
        if (send_rep(opt, kRepInfo, buf.data(), buf.size()) < 0) return -1;
    }
    if (!e->description().empty()) {
        buf.assign(2, '\0');
        put16(reinterpret_cast<uint8_t *>(buf.data()), kInfoDescription);
        buf += e->description();
        if (send_rep(opt, kRepInfo, buf.data(), buf.size()) < 0) return -1;
    }
    const bool client_aligns = want_bs || opt == kOptInfo;
    uint32_t min = client_aligns ? e->request_alignment() : 1;
    uint8_t bs[14];
    put16(bs, kInfoBlockSize);
    put32(bs + 2, min);
    put32(bs + 6, min > 4096 ? min : 4096);
    put32(bs + 10, e->max_block());
    if (send_rep(opt, kRepInfo, bs, sizeof(bs)) < 0) return -1;
    if (opt == kOptInfo && !want_bs && e->request_alignment() > 1) {
        return send_err(opt, kRepErrBlockSizeReqd, "request NBD_INFO_BLOCK_SIZE to use this export") < 0 ? -1 : 0;
    }
    uint8_t ex[12];
    put16(ex, kInfoExport);
    put64(ex + 2, static_cast<uint64_t>(e->size()));
    put16(ex + 10, e->tx_flags(structured_));
    if (send_rep(opt, kRepInfo, ex, sizeof(ex)) < 0) return -1;
    if (send_rep(opt, kRepAck, nullptr, 0) < 0) return -1;
    if (opt == kOptInfo) return 0;
    check_align_ = want_bs;
    if (meta_export_ != e->name()) {
        // Contexts chosen for another export do not apply to this one.
        meta_base_ = meta_depth_ = false;
        meta_bitmaps_.clear();
    }
    meta_bitmaps_.resize(e->bitmaps().size());
    select_export(e);
    return 1;
}

int NbdConn::opt_meta_context(uint32_t opt, uint32_t len)
{
    const bool set = opt == kOptSetMetaContext;
    std::vector<uint8_t> d(len);
    if (read_opt(d.data(), len) < 0) return -1;
    auto invalid = [&](const std::string &msg) { return send_err(opt, kRepErrInvalid, msg) < 0 ? -1 : 0; };
    if (set && !structured_) {
        return invalid(std::string("request option '") + opt_name(opt) +
                       "' when structured reply is not negotiated");
    }
    if (set) {
        // SET replaces the selection, even when it fails.
        meta_export_.clear();
        meta_base_ = meta_depth_ = false;
        meta_bitmaps_.clear();
    }
    if (len < 8) return invalid("request data too short");
    uint32_t namelen = get32(d.data());
    if (namelen > len - 8 || namelen > kMaxStringSize) return invalid("name length is incorrect");
    std::string name(reinterpret_cast<char *>(d.data()) + 4, namelen);
    size_t pos = 4 + namelen;
    uint32_t count = get32(d.data() + pos);
    pos += 4;
    NbdExport *e = NbdServer::find_export(name);
    if (!e) return send_err(opt, kRepErrUnknown, "export '" + name + "' not present") < 0 ? -1 : 0;
    std::vector<std::string> queries;
    for (uint32_t i = 0; i < count; i++) {
        if (len - pos < 4) return invalid("query length is incorrect");
        uint32_t ql = get32(d.data() + pos);
        pos += 4;
        if (ql > len - pos) return invalid("query length is incorrect");
        queries.emplace_back(reinterpret_cast<char *>(d.data()) + pos, ql);
        pos += ql;
    }
    if (pos != len) return invalid("request data length is incorrect");
    // Which contexts the queries select; a LIST with no query gets all.
    bool base = false, depth = false;
    std::vector<bool> bms(e->bitmaps().size());
    const std::string bm_prefix = kCtxDirtyBitmapPrefix;
    for (const std::string &q : queries) {
        if (q == kCtxBaseAllocation || (!set && q == "base:")) base = true;
        if (e->allocation_depth() && (q == kCtxAllocationDepth || (!set && q == "qemu:"))) depth = true;
        for (size_t i = 0; i < bms.size(); i++) {
            if (q == bm_prefix + e->bitmaps()[i] || (!set && (q == "qemu:" || q == bm_prefix))) bms[i] = true;
        }
    }
    if (!set && queries.empty()) {
        base = true;
        depth = e->allocation_depth();
        bms.assign(bms.size(), true);
    }
    auto send_ctx = [&](uint32_t id, const std::string &ctx) {
        std::string buf(4, '\0');
        put32(reinterpret_cast<uint8_t *>(buf.data()), id);
        buf += ctx;
        return send_rep(opt, kRepMetaContext, buf.data(), buf.size());
    };
    if (base && send_ctx(kNbdCtxBase, kCtxBaseAllocation) < 0) return -1;
    if (depth && send_ctx(kNbdCtxDepth, kCtxAllocationDepth) < 0) return -1;
    for (size_t i = 0; i < bms.size(); i++) {
        if (bms[i] && send_ctx(kNbdCtxBitmap0 + uint32_t(i), bm_prefix + e->bitmaps()[i]) < 0) return -1;
    }
    if (set) {
        meta_export_ = name;
        meta_base_ = base;
        meta_depth_ = depth;
        meta_bitmaps_ = bms;
    }
    return send_rep(opt, kRepAck, nullptr, 0) < 0 ? -1 : 0;
}

} // namespace bg
