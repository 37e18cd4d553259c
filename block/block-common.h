// Vocabulary shared by consumers and drivers: permissions, request flags,
// block-status flags, child roles and limits. Values match QEMU's so that
// documentation and debugging output read the same.
#pragma once

#include <cstdint>
#include <string>

namespace bg {

// ---- permissions (per graph edge: what a parent needs / what it shares) ----
using BlockPerm = uint64_t;
constexpr BlockPerm kPermConsistentRead = 0x1;
constexpr BlockPerm kPermWrite = 0x2;
constexpr BlockPerm kPermWriteUnchanged = 0x4;
constexpr BlockPerm kPermResize = 0x8;
constexpr BlockPerm kPermAll = 0xf;
constexpr int kPermCount = 4;
// QEMU's names: "consistent read", "write", "write unchanged", "resize".
const char *perm_name(int bit);
// Comma-separated names of the bits in perm.
std::string perm_names(BlockPerm perm);

// ---- request flags ----
using ReqFlags = uint32_t;
constexpr ReqFlags kReqCopyOnRead = 0x1;        // read: copy what the node reads from below into it (BdrvChild::co_preadv)
constexpr ReqFlags kReqZeroWrite = 0x2;        // write-zeroes semantics
constexpr ReqFlags kReqMayUnmap = 0x4;         // zeroes may be stored as holes
constexpr ReqFlags kReqFua = 0x10;             // data must be stable when the write completes
constexpr ReqFlags kReqWriteCompressed = 0x20; // store compressed (qcow2)
constexpr ReqFlags kReqWriteUnchanged = 0x40;  // writes data the node already holds
constexpr ReqFlags kReqSerialising = 0x80;     // wait for / block overlapping requests
constexpr ReqFlags kReqNoFallback = 0x100;     // write-zeroes: fail rather than write buffers

// ---- block status flags (return value of block status queries) ----
constexpr int kStatusData = 0x01;        // allocation for data is tied to this layer
constexpr int kStatusZero = 0x02;        // reads as zeros
constexpr int kStatusOffsetValid = 0x04; // *map and *file are valid
constexpr int kStatusRaw = 0x08;         // internal: ask *file at *map instead
constexpr int kStatusAllocated = 0x10;   // content decided by this layer (set generically)
constexpr int kStatusEof = 0x20;         // the range reaches the end of this layer
constexpr int kStatusRecurse = 0x40;     // internal: look for holes in *file
constexpr int kStatusCompressed = 0x80;  // stored compressed

// ---- child roles ----
using ChildRole = uint32_t;
constexpr ChildRole kRoleData = 1;
constexpr ChildRole kRoleMetadata = 2;
constexpr ChildRole kRoleFiltered = 4;
constexpr ChildRole kRoleCow = 8;
constexpr ChildRole kRolePrimary = 16;
constexpr ChildRole kRoleImage = kRoleData | kRoleMetadata | kRolePrimary;

// Largest request in bytes (QEMU's BDRV_REQUEST_MAX_BYTES: INT_MAX aligned down).
constexpr int64_t kMaxRequestBytes = 0x7fffffffLL & ~511LL;
// Largest device length in bytes (QEMU's BDRV_MAX_LENGTH, 2^63 - 2^31 rounded).
constexpr int64_t kMaxLength = 0x7fffffff80000000LL;

// Request limits of a node. Units are bytes; "0 = no limit" where said.
struct BlockLimits {
    uint32_t request_alignment = 1;     // power of 2; offsets and lengths the driver sees are multiples
    uint64_t max_transfer = 0;          // multiple of request_alignment; 0 = no limit
    uint64_t opt_transfer = 0;          // hint; 0 = none
    uint32_t pwrite_zeroes_alignment = 0; // 0 = request_alignment
    uint64_t max_pwrite_zeroes = 0;     // 0 = no limit
    uint32_t pdiscard_alignment = 0;    // 0 = request_alignment
    uint64_t max_pdiscard = 0;          // 0 = no limit
    uint32_t min_mem_alignment = 1;     // buffer address/length alignment the driver needs
    uint32_t opt_mem_alignment = 1;     // buffer alignment for best performance
    int max_iov = 1024;                 // most iovec entries in one request (IOV_MAX)
};

} // namespace bg
