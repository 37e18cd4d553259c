// The NBD wire protocol (the Network Block Device protocol's fixed newstyle
// handshake and transmission phase, with structured replies, extended
// headers and QEMU's metadata contexts): constants and big-endian codecs
// shared by the server (export/nbd/) and the client (block/nbd.cc, tools).
// Nothing here knows of block nodes or sockets. docs/nbd.md describes what
// each side implements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace bg::nbd {

// ---- magics
constexpr uint64_t kMagic = 0x4e42444d41474943ULL;          // "NBDMAGIC"
constexpr uint64_t kOldstyleMagic = 0x00420281861253ULL;
constexpr uint64_t kOptMagic = 0x49484156454F5054ULL;       // "IHAVEOPT"
constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ULL;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kExtRequestMagic = 0x21e41c71;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
constexpr uint32_t kExtReplyMagic = 0x6e8a278c;

constexpr uint16_t kDefaultPort = 10809;

// ---- handshake flags (server, u16) and client flags (u32)
constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
constexpr uint16_t kFlagNoZeroes = 1 << 1;
constexpr uint32_t kClientFixedNewstyle = 1 << 0;
constexpr uint32_t kClientNoZeroes = 1 << 1;

// ---- options
enum : uint32_t {
    kOptExportName = 1,
    kOptAbort = 2,
    kOptList = 3,
    kOptStartTls = 5,
    kOptInfo = 6,
    kOptGo = 7,
    kOptStructuredReply = 8,
    kOptListMetaContext = 9,
    kOptSetMetaContext = 10,
    kOptExtendedHeaders = 11,
};

// ---- option reply types
constexpr uint32_t kRepErrBit = 1U << 31;
enum : uint32_t {
    kRepAck = 1,
    kRepServer = 2,
    kRepInfo = 3,
    kRepMetaContext = 4,
    kRepErrUnsup = kRepErrBit | 1,
    kRepErrPolicy = kRepErrBit | 2,
    kRepErrInvalid = kRepErrBit | 3,
    kRepErrPlatform = kRepErrBit | 4,
    kRepErrTlsReqd = kRepErrBit | 5,
    kRepErrUnknown = kRepErrBit | 6,
    kRepErrShutdown = kRepErrBit | 7,
    kRepErrBlockSizeReqd = kRepErrBit | 8,
    kRepErrTooBig = kRepErrBit | 9,
    kRepErrExtHeaderReqd = kRepErrBit | 10,
};

// ---- INFO types
enum : uint16_t { kInfoExport = 0, kInfoName = 1, kInfoDescription = 2, kInfoBlockSize = 3 };

// ---- transmission flags (u16)
enum : uint16_t {
    kTxHasFlags = 1 << 0,
    kTxReadOnly = 1 << 1,
    kTxSendFlush = 1 << 2,
    kTxSendFua = 1 << 3,
    kTxRotational = 1 << 4,
    kTxSendTrim = 1 << 5,
    kTxSendWriteZeroes = 1 << 6,
    kTxSendDf = 1 << 7,
    kTxCanMultiConn = 1 << 8,
    kTxSendResize = 1 << 9,
    kTxSendCache = 1 << 10,
    kTxSendFastZero = 1 << 11,
    kTxBlockStatusPayload = 1 << 12,
};

// ---- commands and command flags
enum : uint16_t {
    kCmdRead = 0,
    kCmdWrite = 1,
    kCmdDisc = 2,
    kCmdFlush = 3,
    kCmdTrim = 4,
    kCmdCache = 5,
    kCmdWriteZeroes = 6,
    kCmdBlockStatus = 7,
};
enum : uint16_t {
    kCmdFlagFua = 1 << 0,
    kCmdFlagNoHole = 1 << 1,
    kCmdFlagDf = 1 << 2,
    kCmdFlagReqOne = 1 << 3,
    kCmdFlagFastZero = 1 << 4,
    kCmdFlagPayloadLen = 1 << 5,
};

// ---- structured reply chunks
constexpr uint16_t kReplyFlagDone = 1 << 0;
enum : uint16_t {
    kChunkNone = 0,
    kChunkOffsetData = 1,
    kChunkOffsetHole = 2,
    kChunkBlockStatus = 5,
    kChunkBlockStatusExt = 6,
    kChunkError = 0x8001,
    kChunkErrorOffset = 0x8002,
};
constexpr bool chunk_is_error(uint16_t type) { return (type & 0x8000) != 0; }

// ---- base:allocation and qemu: context flags
constexpr uint32_t kStateHole = 1 << 0;
constexpr uint32_t kStateZero = 1 << 1;
constexpr uint32_t kStateDirty = 1 << 0;

// Context names.
constexpr const char *kCtxBaseAllocation = "base:allocation";
constexpr const char *kCtxAllocationDepth = "qemu:allocation-depth";
constexpr const char *kCtxDirtyBitmapPrefix = "qemu:dirty-bitmap:";

// ---- errors on the wire
enum : uint32_t {
    kEPERM = 1,
    kEIO = 5,
    kENOMEM = 12,
    kEINVAL = 22,
    kENOSPC = 28,
    kEOVERFLOW = 75,
    kENOTSUP = 95,
    kESHUTDOWN = 108,
};

// ---- sizes and limits
constexpr size_t kHandshakeSize = 18;        // NBDMAGIC, IHAVEOPT, u16 flags
constexpr size_t kOptHeaderSize = 16;        // IHAVEOPT, u32 option, u32 length
constexpr size_t kOptReplyHeaderSize = 20;   // magic, u32 option, u32 type, u32 length
constexpr size_t kRequestSize = 28;
constexpr size_t kExtRequestSize = 32;
constexpr size_t kSimpleReplySize = 16;
constexpr size_t kChunkHeaderSize = 20;
constexpr size_t kExtChunkHeaderSize = 32;
constexpr size_t kMaxStringSize = 4096;      // names and descriptions
constexpr uint32_t kMaxOptionSize = 32U << 20;  // option data a peer may send
constexpr uint32_t kMaxPayload = 32U << 20;  // READ/WRITE payloads we serve and send
constexpr uint32_t kMaxExtents = 1U << 20;   // extents per block-status chunk (spec limit)

// Names for messages and qemu-nbd --list.
const char *opt_name(uint32_t opt);        // "go", "structured reply", ... "<unknown>"
const char *rep_name(uint32_t type);       // "ack", "unsupported", ...
const char *cmd_name(uint16_t cmd);        // "read", "write", ... "<unknown>"
const char *info_name(uint16_t type);
// The errno for an error received on the wire (unknown values: EINVAL), and
// the wire value for a local errno (QEMU's mapping: EPERM/EROFS -> EPERM,
// ENOSPC/EDQUOT/EFBIG -> ENOSPC, EIO, ENOMEM, EOVERFLOW, ENOTSUP,
// ESHUTDOWN, anything else EINVAL). err is positive.
int errno_from_wire(uint32_t wire);
uint32_t errno_to_wire(int err);
// The flag names qemu-nbd --list prints, in bit order from bit 1:
// "readonly flush fua rotational trim zeroes df multi resize cache
// fast-zero block-status-payload", space separated (HAS_FLAGS omitted).
std::string tx_flags_text(uint16_t flags);

// ---- big-endian codecs on raw buffers (no bounds checks: callers size them)
inline void put16(uint8_t *p, uint16_t v) { p[0] = uint8_t(v >> 8); p[1] = uint8_t(v); }
inline void put32(uint8_t *p, uint32_t v)
{
    put16(p, uint16_t(v >> 16));
    put16(p + 2, uint16_t(v));
}
inline void put64(uint8_t *p, uint64_t v)
{
    put32(p, uint32_t(v >> 32));
    put32(p + 4, uint32_t(v));
}
inline uint16_t get16(const uint8_t *p) { return uint16_t(p[0] << 8 | p[1]); }
inline uint32_t get32(const uint8_t *p) { return uint32_t(get16(p)) << 16 | get16(p + 2); }
inline uint64_t get64(const uint8_t *p) { return uint64_t(get32(p)) << 32 | get32(p + 4); }

// A transmission request, either header form.
struct Request {
    uint16_t flags = 0;
    uint16_t type = 0;
    uint64_t cookie = 0;
    uint64_t offset = 0;
    uint64_t length = 0;   // compact form: 32 bits
};
// Encodes req into buf (kRequestSize or, extended, kExtRequestSize bytes);
// returns the size written.
size_t encode_request(uint8_t *buf, const Request &req, bool extended);
// Decodes a header of the form expected; false if the magic is wrong.
bool decode_request(const uint8_t *buf, Request *req, bool extended);

} // namespace bg::nbd
