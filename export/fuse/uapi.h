// The kernel's FUSE ABI as the export uses it: <linux/fuse.h> plus the
// few newer values and structures the system headers may predate, spelled
// out here from the kernel's uapi (include/uapi/linux/fuse.h).
#pragma once

#include <linux/fuse.h>
#include <sys/ioctl.h>

#include <cstdint>

#ifndef FUSE_DEV_IOC_CLONE
#define FUSE_DEV_IOC_CLONE _IOR(229, 0, uint32_t)
#endif

namespace bg::fuse_uapi {

// Kernel FUSE passthrough (protocol 7.40, Linux 6.9).
constexpr uint64_t kInitPassthrough = 1ULL << 37;     // FUSE_PASSTHROUGH (in flags2 with FUSE_INIT_EXT)
constexpr uint32_t kInitExt = 1U << 30;               // FUSE_INIT_EXT
constexpr uint32_t kOpenPassthrough = 1U << 7;        // FOPEN_PASSTHROUGH
constexpr uint32_t kPassthroughMinor = 40;
struct BackingMap {                                   // struct fuse_backing_map
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};
// The fields of fuse_init_out after flags2 and of fuse_open_out after open_flags.
struct InitOutTail {
    uint32_t max_stack_depth;
};
struct OpenOut {                                      // struct fuse_open_out (7.40)
    uint64_t fh;
    uint32_t open_flags;
    int32_t backing_id;
};
static_assert(sizeof(OpenOut) == sizeof(fuse_open_out));

// FUSE-over-io_uring (protocol 7.42, Linux 6.14).
constexpr uint64_t kInitOverIoUring = 1ULL << 41;     // FUSE_OVER_IO_URING (flags2)
constexpr uint32_t kUringCmdRegister = 1;             // FUSE_IO_URING_CMD_REGISTER
constexpr uint32_t kUringCmdCommitAndFetch = 2;       // FUSE_IO_URING_CMD_COMMIT_AND_FETCH
struct UringEntInOut {                                // struct fuse_uring_ent_in_out
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};
struct UringReqHeader {                               // struct fuse_uring_req_header
    uint8_t in_out[128];                              // fuse_in_header in, fuse_out_header out
    uint8_t op_in[128];                               // the request's first argument
    UringEntInOut ent;
};
struct UringCmdReq {                                  // struct fuse_uring_cmd_req, in the SQE's cmd area
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

} // namespace bg::fuse_uapi

#define BG_FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, bg::fuse_uapi::BackingMap)
#define BG_FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
