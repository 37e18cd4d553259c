// qcow2 block status (QEMU qcow2_co_block_status), with QEMU's meaning:
//   normal cluster:         DATA | OFFSET_VALID (map = host offset in the data file)
//   zero, allocated:        ZERO | OFFSET_VALID
//   zero, plain:            ZERO
//   unallocated, allocated: OFFSET_VALID only (extended L2: host cluster
//                           exists, this subcluster reads from below)
//   unallocated:            0 (the generic layer adds ZERO without backing)
//   compressed:             DATA | COMPRESSED (no host offset)
// and RECURSE on DATA|OFFSET_VALID when the image was preallocated with
// preallocation=metadata (detected from refcounts, as QEMU does), so that
// the generic layer reports holes of the file as zeros.
#include <cerrno>

#include "block/qcow2/qcow2.h"

namespace bg {

using qcow2::SubclusterType;

int coroutine_fn Qcow2Node::do_co_block_status(bool want_zero, int64_t offset, int64_t bytes, int64_t *pnum,
                                               int64_t *map, BlockNode **file)
{
    (void)want_zero;
    qcow2::HostMapping m;
    {
        CoMutexGuard g(lock_);
        if (!prealloc_checked_) {
            // An error only means "not detected" (QEMU).
            metadata_prealloc_ = co_detect_metadata_preallocation_locked() == 1;
            prealloc_checked_ = true;
        }
        int r = co_get_mapping_locked(static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), &m);
        if (r < 0) return r;
    }
    *pnum = static_cast<int64_t>(std::min<uint64_t>(m.bytes, static_cast<uint64_t>(bytes)));
    int status = 0;
    switch (m.type) {
    case SubclusterType::kNormal:
        status = kStatusData | kStatusOffsetValid;
        break;
    case SubclusterType::kZeroAlloc:
        status = kStatusZero | kStatusOffsetValid;
        break;
    case SubclusterType::kUnallocatedAlloc:
        status = kStatusOffsetValid;
        break;
    case SubclusterType::kZeroPlain:
        status = kStatusZero;
        break;
    case SubclusterType::kUnallocatedPlain:
        status = 0;
        break;
    case SubclusterType::kCompressed:
        status = kStatusData | kStatusCompressed;
        break;
    }
    if (status & kStatusOffsetValid) {
        *map = static_cast<int64_t>(m.host_offset);
        *file = data_file_->node();
    }
    if (metadata_prealloc_ && (status & kStatusData) && (status & kStatusOffsetValid)) status |= kStatusRecurse;
    return status;
}

} // namespace bg
