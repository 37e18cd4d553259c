// Names, error mapping and header codecs of the NBD protocol (util/nbd-proto.h).
#include "util/nbd-proto.h"

#include <cerrno>

namespace bg::nbd {

const char *opt_name(uint32_t opt)
{
    switch (opt) {
    case kOptExportName: return "export name";
    case kOptAbort: return "abort";
    case kOptList: return "list";
    case kOptStartTls: return "starttls";
    case kOptInfo: return "info";
    case kOptGo: return "go";
    case kOptStructuredReply: return "structured reply";
    case kOptListMetaContext: return "list meta context";
    case kOptSetMetaContext: return "set meta context";
    case kOptExtendedHeaders: return "extended headers";
    }
    return "<unknown>";
}

const char *rep_name(uint32_t type)
{
    switch (type) {
    case kRepAck: return "ack";
    case kRepServer: return "server";
    case kRepInfo: return "info";
    case kRepMetaContext: return "meta context";
    case kRepErrUnsup: return "unsupported";
    case kRepErrPolicy: return "denied by policy";
    case kRepErrInvalid: return "invalid";
    case kRepErrPlatform: return "platform lacks support";
    case kRepErrTlsReqd: return "TLS required";
    case kRepErrUnknown: return "export unknown";
    case kRepErrShutdown: return "server shutting down";
    case kRepErrBlockSizeReqd: return "block size required";
    case kRepErrTooBig: return "option too big";
    case kRepErrExtHeaderReqd: return "extended headers required";
    }
    return "<unknown>";
}

const char *cmd_name(uint16_t cmd)
{
    switch (cmd) {
    case kCmdRead: return "read";
    case kCmdWrite: return "write";
    case kCmdDisc: return "disconnect";
    case kCmdFlush: return "flush";
    case kCmdTrim: return "trim";
    case kCmdCache: return "cache";
    case kCmdWriteZeroes: return "write zeroes";
    case kCmdBlockStatus: return "block status";
    }
    return "<unknown>";
}

const char *info_name(uint16_t type)
{
    switch (type) {
    case kInfoExport: return "export";
    case kInfoName: return "name";
    case kInfoDescription: return "description";
    case kInfoBlockSize: return "block size";
    }
    return "<unknown>";
}

int errno_from_wire(uint32_t wire)
{
    switch (wire) {
    case kEPERM: return EPERM;
    case kEIO: return EIO;
    case kENOMEM: return ENOMEM;
    case kENOSPC: return ENOSPC;
    case kEOVERFLOW: return EOVERFLOW;
    case kENOTSUP: return ENOTSUP;
    case kESHUTDOWN: return ESHUTDOWN;
    }
    return EINVAL;
}

uint32_t errno_to_wire(int err)
{
    switch (err) {
    case 0: return 0;
    case EPERM:
    case EROFS: return kEPERM;
    case EIO: return kEIO;
    case ENOMEM: return kENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return kENOSPC;
    case EOVERFLOW: return kEOVERFLOW;
    case ENOTSUP: return kENOTSUP;
    case ESHUTDOWN: return kESHUTDOWN;
    }
    return kEINVAL;
}

std::string tx_flags_text(uint16_t flags)
{
    static const char *const names[] = {"readonly", "flush", "fua", "rotational", "trim", "zeroes",
                                        "df", "multi", "resize", "cache", "fast-zero", "block-status-payload"};
    std::string out;
    for (int bit = 1; bit <= 12; bit++) {
        if (!(flags & (1U << bit))) continue;
        if (!out.empty()) out += ' ';
        out += names[bit - 1];
    }
    return out;
}

size_t encode_request(uint8_t *buf, const Request &req, bool extended)
{
    put32(buf, extended ? kExtRequestMagic : kRequestMagic);
    put16(buf + 4, req.flags);
    put16(buf + 6, req.type);
    put64(buf + 8, req.cookie);
    put64(buf + 16, req.offset);
    if (extended) {
        put64(buf + 24, req.length);
        return kExtRequestSize;
    }
    put32(buf + 24, uint32_t(req.length));
    return kRequestSize;
}

bool decode_request(const uint8_t *buf, Request *req, bool extended)
{
    if (get32(buf) != (extended ? kExtRequestMagic : kRequestMagic)) return false;
    req->flags = get16(buf + 4);
    req->type = get16(buf + 6);
    req->cookie = get64(buf + 8);
    req->offset = get64(buf + 16);
    req->length = extended ? get64(buf + 24) : get32(buf + 24);
    return true;
}

} // namespace bg::nbd
