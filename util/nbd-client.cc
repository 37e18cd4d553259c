// The NBD client's handshake and export listing (util/nbd-client.h). The
// transmission phase is in util/nbd-client-io.cc.
#include "util/nbd-client.h"

#include <cerrno>
#include <cstring>

#include "util/aio.h"
#include "util/nbd-proto.h"
#include "util/tls.h"

namespace bg::nbd {

namespace {

// Option reply payloads we accept: names and descriptions are at most
// kMaxStringSize each; anything longer is a broken server.
constexpr uint32_t kMaxReplyPayload = 4 * kMaxStringSize + 64;

struct OptReply {
    uint32_t type = 0;
    std::vector<uint8_t> data;
};

std::string opt_text(uint32_t opt)
{
    return std::to_string(opt) + " (" + opt_name(opt) + ")";
}

Error io_error(int ret, const char *what)
{
    if (ret == -ECONNRESET) return make_error(ECONNRESET, "%s: Server closed the connection unexpectedly", what);
    if (ret == -ETIMEDOUT) return make_error(ETIMEDOUT, "%s: the handshake timed out", what);
    return errno_error(-ret, what);
}

Status co_send_option(CoSocket &sock, uint32_t opt, const std::vector<uint8_t> &data)
{
    uint8_t hdr[kOptHeaderSize];
    put64(hdr, kOptMagic);
    put32(hdr + 8, opt);
    put32(hdr + 12, static_cast<uint32_t>(data.size()));
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {const_cast<uint8_t *>(data.data()), data.size()}};
    int ret = sock.co_write_full(iov, data.empty() ? 1 : 2);
    if (ret < 0) return io_error(ret, "Failed to send option request");
    return {};
}

// Reads one option reply to opt, payload included (bounded).
Result<OptReply> co_read_reply(CoSocket &sock, uint32_t opt)
{
    uint8_t hdr[kOptReplyHeaderSize];
    int ret = sock.co_read_full(hdr, sizeof(hdr));
    if (ret < 0) return io_error(ret, "Failed to read option reply");
    if (get64(hdr) != kOptReplyMagic) return make_error(EPROTO, "Unexpected option reply magic");
    if (get32(hdr + 8) != opt) {
        return make_error(EPROTO, "Unexpected option type %u expected %u", get32(hdr + 8), opt);
    }
    OptReply r;
    r.type = get32(hdr + 12);
    uint32_t len = get32(hdr + 16);
    if (len > kMaxReplyPayload) {
        return make_error(EPROTO, "server's reply to option %s is too long (%u bytes)", opt_text(opt).c_str(), len);
    }
    r.data.resize(len);
    if (len) {
        ret = sock.co_read_full(r.data.data(), len);
        if (ret < 0) return io_error(ret, "Failed to read option reply payload");
    }
    return r;
}

// The error an error reply stands for, with the server's message appended.
Error reply_error(uint32_t opt, const OptReply &r)
{
    std::string o = opt_text(opt);
    std::string msg;
    int err = EINVAL;
    switch (r.type) {
    case kRepErrUnsup: msg = "Server does not support option " + o; err = ENOTSUP; break;
    case kRepErrPolicy: msg = "Denied by server for option " + o; err = EPERM; break;
    case kRepErrInvalid: msg = "Invalid parameters for option " + o; break;
    case kRepErrPlatform: msg = "Server lacks support for option " + o; err = ENOTSUP; break;
    case kRepErrTlsReqd:
        msg = "TLS negotiation required before option " + o + " (did you forget a valid tls-creds?)";
        err = EPERM;
        break;
    case kRepErrUnknown: msg = "Requested export not available"; err = ENOENT; break;
    case kRepErrShutdown: msg = "Server shutting down before option " + o; err = ESHUTDOWN; break;
    case kRepErrBlockSizeReqd: msg = "Server requires INFO_BLOCK_SIZE for option " + o; break;
    case kRepErrTooBig: msg = "Server considers option " + o + " too large"; err = E2BIG; break;
    default: msg = "Unknown error code when asking for option " + o; break;
    }
    if (!r.data.empty()) msg += "; server reported: " + std::string(r.data.begin(), r.data.end());
    return Error{err, msg};
}

// Sends a payload-free option that the server answers with ACK alone.
// Returns true if acknowledged, false if refused with ERR_UNSUP (or any
// other error when soft), an error otherwise.
Result<bool> co_simple_option(CoSocket &sock, uint32_t opt, bool soft)
{
    BG_TRY(co_send_option(sock, opt, {}));
    BG_TRY_ASSIGN(OptReply r, co_read_reply(sock, opt));
    if (r.type == kRepAck) {
        if (!r.data.empty()) return make_error(EPROTO, "server's ACK to option %s has a payload", opt_text(opt).c_str());
        return true;
    }
    if (r.type & kRepErrBit) {
        if (r.type == kRepErrUnsup || soft) return false;
        return reply_error(opt, r);
    }
    return make_error(EPROTO, "Unexpected reply type %u to option %s", r.type, opt_text(opt).c_str());
}

void put_string(std::vector<uint8_t> *d, const std::string &s)
{
    size_t at = d->size();
    d->resize(at + 4 + s.size());
    put32(d->data() + at, static_cast<uint32_t>(s.size()));
    std::memcpy(d->data() + at + 4, s.data(), s.size());
}

void put16v(std::vector<uint8_t> *d, uint16_t v)
{
    size_t at = d->size();
    d->resize(at + 2);
    put16(d->data() + at, v);
}

void put32v(std::vector<uint8_t> *d, uint32_t v)
{
    size_t at = d->size();
    d->resize(at + 4);
    put32(d->data() + at, v);
}

bool is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

// Checks a BLOCK_SIZE info payload (14 bytes) and stores it.
Status take_block_size(const OptReply &r, ExportInfo *info)
{
    if (r.data.size() != 14) return make_error(EPROTO, "server sent an invalid BLOCK_SIZE info (length %zu)", r.data.size());
    uint32_t min = get32(r.data.data() + 2), opt = get32(r.data.data() + 6), max = get32(r.data.data() + 10);
    if (!is_pow2(min) || min > (64U << 10)) {
        return make_error(EPROTO, "server minimum block size %u is not a power of two up to 64 KiB", min);
    }
    if (!is_pow2(opt)) return make_error(EPROTO, "server preferred block size %u is not a power of two", opt);
    if (opt < min) return make_error(EPROTO, "server preferred block size %u is less than minimum %u", opt, min);
    if (max < min || max % min) {
        return make_error(EPROTO, "server maximum block size %u is not a multiple of minimum %u", max, min);
    }
    info->min_block = min;
    info->opt_block = opt;
    info->max_block = max;
    info->block_size_sent = true;
    return {};
}

// Stores one INFO reply of GO/INFO in *info (unknown types are ignored).
Status take_info(const OptReply &r, ExportInfo *info, bool *have_export)
{
    if (r.data.size() < 2) return make_error(EPROTO, "server sent an INFO reply without a type");
    const uint8_t *p = r.data.data();
    size_t len = r.data.size();
    switch (get16(p)) {
    case kInfoExport:
        if (len != 12) return make_error(EPROTO, "server sent an invalid EXPORT info (length %zu)", len);
        info->size = get64(p + 2);
        info->flags = get16(p + 10);
        *have_export = true;
        return {};
    case kInfoName:
        if (len - 2 > kMaxStringSize) return make_error(EPROTO, "server sent an export name that is too long");
        info->name.assign(reinterpret_cast<const char *>(p + 2), len - 2);
        return {};
    case kInfoDescription:
        if (len - 2 > kMaxStringSize) return make_error(EPROTO, "server sent a description that is too long");
        info->description.assign(reinterpret_cast<const char *>(p + 2), len - 2);
        return {};
    case kInfoBlockSize:
        return take_block_size(r, info);
    default:
        return {};
    }
}

// GO or INFO for info->name asking for BLOCK_SIZE (and, for INFO, NAME and
// DESCRIPTION). Returns false when the server answered ERR_UNSUP (GO not
// supported: fall back to EXPORT_NAME).
Result<bool> co_info_or_go(CoSocket &sock, uint32_t opt, ExportInfo *info)
{
    std::vector<uint8_t> d;
    put_string(&d, info->name);
    std::vector<uint16_t> want = {kInfoBlockSize};
    if (opt == kOptInfo) want = {kInfoBlockSize, kInfoName, kInfoDescription};
    put16v(&d, static_cast<uint16_t>(want.size()));
    for (uint16_t w : want) put16v(&d, w);
    BG_TRY(co_send_option(sock, opt, d));
    bool have_export = false;
    for (;;) {
        BG_TRY_ASSIGN(OptReply r, co_read_reply(sock, opt));
        if (r.type == kRepInfo) {
            BG_TRY(take_info(r, info, &have_export));
            continue;
        }
        if (r.type == kRepAck) {
            if (!r.data.empty()) return make_error(EPROTO, "server's ACK to option %s has a payload", opt_text(opt).c_str());
            if (!have_export) return make_error(EPROTO, "server did not send the export's size and flags (INFO_EXPORT)");
            return true;
        }
        if (r.type == kRepErrUnsup && opt == kOptGo) return false;
        if (r.type & kRepErrBit) return reply_error(opt, r);
        return make_error(EPROTO, "Unexpected reply type %u to option %s", r.type, opt_text(opt).c_str());
    }
}

// LIST_META_CONTEXT / SET_META_CONTEXT on export name with queries: the
// contexts the server answered with (name, id).
Result<std::vector<ExportInfo::Context>> co_meta_contexts(CoSocket &sock, uint32_t opt, const std::string &name,
                                                          const std::vector<std::string> &queries, bool *unsup)
{
    std::vector<uint8_t> d;
    put_string(&d, name);
    put32v(&d, static_cast<uint32_t>(queries.size()));
    for (const std::string &q : queries) put_string(&d, q);
    BG_TRY(co_send_option(sock, opt, d));
    std::vector<ExportInfo::Context> out;
    *unsup = false;
    for (;;) {
        BG_TRY_ASSIGN(OptReply r, co_read_reply(sock, opt));
        if (r.type == kRepMetaContext) {
            if (r.data.size() < 4 || r.data.size() - 4 > kMaxStringSize) {
                return make_error(EPROTO, "server sent an invalid META_CONTEXT reply");
            }
            ExportInfo::Context c;
            c.id = get32(r.data.data());
            c.name.assign(reinterpret_cast<const char *>(r.data.data() + 4), r.data.size() - 4);
            out.push_back(std::move(c));
            continue;
        }
        if (r.type == kRepAck) {
            if (!r.data.empty()) return make_error(EPROTO, "server's ACK to option %s has a payload", opt_text(opt).c_str());
            return out;
        }
        if (r.type == kRepErrUnsup) {
            *unsup = true;
            return out;
        }
        if (r.type & kRepErrBit) return reply_error(opt, r);
        return make_error(EPROTO, "Unexpected reply type %u to option %s", r.type, opt_text(opt).c_str());
    }
}

// The start of every handshake: greeting, client flags, STARTTLS. Sets
// *fixed (fixed newstyle) and *no_zeroes; for an oldstyle server fills
// info and sets info->oldstyle.
Status co_greeting(CoSocket &sock, const ClientConfig &cfg, ExportInfo *info, bool *fixed, bool *no_zeroes)
{
    uint8_t buf[18];
    int ret = sock.co_read_full(buf, 16);
    if (ret < 0) return io_error(ret, "Failed to read the server's greeting");
    if (get64(buf) != kMagic) return make_error(EPROTO, "Invalid magic received");
    uint64_t magic = get64(buf + 8);
    if (magic == kOldstyleMagic) {
        uint8_t rest[8 + 4 + 124];
        ret = sock.co_read_full(rest, sizeof(rest));
        if (ret < 0) return io_error(ret, "Failed to read the export's size and flags");
        if (cfg.tls_creds) return make_error(ENOTSUP, "Server does not support STARTTLS");
        if (!cfg.export_name.empty()) return make_error(ENOTSUP, "Server does not support non-empty export names");
        uint32_t flags = get32(rest + 8);
        if (flags >> 16) return make_error(EPROTO, "Unexpected export flags 0x%x", flags);
        info->size = get64(rest);
        info->flags = static_cast<uint16_t>(flags);
        info->oldstyle = true;
        return {};
    }
    if (magic != kOptMagic) return make_error(EPROTO, "Bad server magic received: 0x%llx", (unsigned long long)magic);
    ret = sock.co_read_full(buf + 16, 2);
    if (ret < 0) return io_error(ret, "Failed to read server flags");
    uint16_t sflags = get16(buf + 16);
    *fixed = sflags & kFlagFixedNewstyle;
    *no_zeroes = sflags & kFlagNoZeroes;
    uint8_t cflags[4];
    put32(cflags, (*fixed ? kClientFixedNewstyle : 0) | (*no_zeroes ? kClientNoZeroes : 0));
    ret = sock.co_write_full(cflags, sizeof(cflags));
    if (ret < 0) return io_error(ret, "Failed to send client flags");
    if (cfg.tls_creds) {
        if (!*fixed) return make_error(ENOTSUP, "Server does not support STARTTLS");
        BG_TRY(co_send_option(sock, kOptStartTls, {}));
        BG_TRY_ASSIGN(OptReply r, co_read_reply(sock, kOptStartTls));
        if (r.type != kRepAck) {
            Error e = reply_error(kOptStartTls, r);
            return Error{e.err, "Server rejected request to start TLS: " + e.msg};
        }
        if (!r.data.empty()) return make_error(EPROTO, "Start TLS response was not zero %zu", r.data.size());
        BG_TRY(sock.co_start_tls(*cfg.tls_creds, false, cfg.tls_hostname));
    }
    return {};
}

// Extended headers, else structured replies (fixed newstyle only).
Status co_reply_modes(CoSocket &sock, const ClientConfig &cfg, ExportInfo *info)
{
    if (cfg.try_extended_headers) {
        BG_TRY_ASSIGN(info->extended, co_simple_option(sock, kOptExtendedHeaders, true));
    }
    if (!info->extended && cfg.try_structured_replies) {
        BG_TRY_ASSIGN(info->structured, co_simple_option(sock, kOptStructuredReply, true));
    }
    return {};
}

// EXPORT_NAME: the pre-GO way in. The server answers with the size and
// flags (and 124 zero bytes unless NO_ZEROES), or drops the connection.
Status co_export_name(CoSocket &sock, ExportInfo *info, bool no_zeroes)
{
    std::vector<uint8_t> d(info->name.begin(), info->name.end());
    BG_TRY(co_send_option(sock, kOptExportName, d));
    uint8_t buf[10 + 124];
    size_t need = no_zeroes ? 10 : sizeof(buf);
    int ret = sock.co_read_full(buf, need);
    if (ret == -ECONNRESET) {
        return make_error(ENOENT, "Requested export not available: the server closed the connection on export '%s'",
                          info->name.c_str());
    }
    if (ret < 0) return io_error(ret, "Failed to read the export's size and flags");
    info->size = get64(buf);
    info->flags = get16(buf + 8);
    return {};
}

} // namespace

Status check_export_info(const ExportInfo &info)
{
    if (info.size > static_cast<uint64_t>(INT64_MAX)) return make_error(EFBIG, "export size too large");
    if (!(info.flags & kTxHasFlags) && info.flags) return make_error(EPROTO, "server sent transmission flags without HAS_FLAGS");
    return {};
}

namespace {

Status co_options(CoSocket &sock, const ClientConfig &cfg, ExportInfo *info);

Result<ExportInfo> co_handshake_body(CoSocket &sock, const ClientConfig &cfg)
{
    ExportInfo info;
    info.name = cfg.export_name;
    bool fixed = false, no_zeroes = false;
    BG_TRY(co_greeting(sock, cfg, &info, &fixed, &no_zeroes));
    if (info.oldstyle) {
        BG_TRY(check_export_info(info));
        return info;
    }
    if (fixed) {
        Status st = co_options(sock, cfg, &info);
        if (!st) {
            // Tell the server we are going (QEMU's servers log a read
            // error otherwise); a lost connection needs no goodbye.
            if (st.err() != ECONNRESET && st.err() != EPIPE && st.err() != ETIMEDOUT) {
                (void)co_send_option(sock, kOptAbort, {});
            }
            return st.error();
        }
    }
    if (!info.go_done) {
        if (info.extended) return make_error(EPROTO, "server negotiated extended headers but does not support GO");
        BG_TRY(co_export_name(sock, &info, no_zeroes));
    }
    BG_TRY(check_export_info(info));
    return info;
}

} // namespace

namespace {

// The options of a fixed-newstyle handshake up to and including GO.
Status co_options(CoSocket &sock, const ClientConfig &cfg, ExportInfo *ip)
{
    ExportInfo &info = *ip;
    BG_TRY(co_reply_modes(sock, cfg, &info));
    if ((info.structured || info.extended) && !cfg.meta_contexts.empty()) {
        bool unsup = false;
        BG_TRY_ASSIGN(info.contexts, co_meta_contexts(sock, kOptSetMetaContext, info.name, cfg.meta_contexts, &unsup));
        for (const auto &c : info.contexts) {
            bool asked = false;
            for (const auto &q : cfg.meta_contexts) asked |= q == c.name;
            if (!asked) return make_error(EPROTO, "server replied with unexpected meta context '%s'", c.name.c_str());
        }
    }
    if (cfg.require_meta_contexts) {
        for (const auto &q : cfg.meta_contexts) {
            bool found = false;
            for (const auto &c : info.contexts) found |= q == c.name;
            if (!found) return make_error(ENOENT, "requested x-dirty-bitmap %s not found", q.c_str());
        }
    }
    BG_TRY_ASSIGN(info.go_done, co_info_or_go(sock, kOptGo, &info));
    return {};
}

} // namespace

Result<ExportInfo> co_client_handshake(CoSocket &sock, const ClientConfig &cfg)
{
    sock.set_read_deadline(cfg.deadline_ns);
    Result<ExportInfo> r = co_handshake_body(sock, cfg);
    sock.set_read_deadline(0);
    return r;
}

namespace {

// One SERVER reply of LIST: the export's name and description.
Status take_server(const OptReply &r, ListedExport *e)
{
    if (r.data.size() < 4) return make_error(EPROTO, "server sent an invalid SERVER reply to LIST");
    uint32_t nlen = get32(r.data.data());
    if (nlen > r.data.size() - 4 || nlen > kMaxStringSize) {
        return make_error(EPROTO, "server sent an invalid export name length in LIST");
    }
    const char *p = reinterpret_cast<const char *>(r.data.data() + 4);
    e->name.assign(p, nlen);
    e->description.assign(p + nlen, r.data.size() - 4 - nlen);
    return {};
}

Result<std::vector<ListedExport>> co_list_body(CoSocket &sock, const ClientConfig &cfg)
{
    ExportInfo hs;
    bool fixed = false, no_zeroes = false;
    BG_TRY(co_greeting(sock, cfg, &hs, &fixed, &no_zeroes));
    if (hs.oldstyle || !fixed) return make_error(ENOTSUP, "Server does not support export lists");
    BG_TRY(co_reply_modes(sock, cfg, &hs));
    BG_TRY(co_send_option(sock, kOptList, {}));
    std::vector<ListedExport> out;
    for (;;) {
        BG_TRY_ASSIGN(OptReply r, co_read_reply(sock, kOptList));
        if (r.type == kRepServer) {
            ListedExport e;
            BG_TRY(take_server(r, &e));
            out.push_back(std::move(e));
            continue;
        }
        if (r.type == kRepAck) break;
        if (r.type & kRepErrBit) return reply_error(kOptList, r);
        return make_error(EPROTO, "Unexpected reply type %u to option %s", r.type, opt_text(kOptList).c_str());
    }
    for (ListedExport &e : out) {
        e.extended = hs.extended;
        e.structured = hs.structured;
        ExportInfo info;
        info.name = e.name;
        info.min_block = info.opt_block = info.max_block = 0;
        Result<bool> ok = co_info_or_go(sock, kOptInfo, &info);
        if (!ok) {
            if (ok.err() == EPROTO || ok.err() == ECONNRESET) return ok.error();
            continue;
        }
        if (ok.value()) {
            if (!info.description.empty()) e.description = info.description;
            e.size = info.size;
            e.flags = info.flags;
            e.min_block = info.min_block;
            e.opt_block = info.opt_block;
            e.max_block = info.max_block;
        }
        bool unsup = false;
        BG_TRY_ASSIGN(auto ctxs, co_meta_contexts(sock, kOptListMetaContext, e.name, {}, &unsup));
        for (auto &c : ctxs) e.contexts.push_back(std::move(c.name));
    }
    // ABORT: the server may answer or just close; neither matters.
    (void)co_send_option(sock, kOptAbort, {});
    return out;
}

} // namespace

Result<std::vector<ListedExport>> co_client_list(CoSocket &sock, const ClientConfig &cfg)
{
    sock.set_read_deadline(cfg.deadline_ns);
    auto r = co_list_body(sock, cfg);
    sock.set_read_deadline(0);
    return r;
}

} // namespace bg::nbd
