// qcow2 image management (qemu-img create / check / snapshot / amend /
// measure): declarations shared by qcow2-create.cc, qcow2-check.cc,
// qcow2-snapshot-write.cc and qcow2-amend.cc. Not for use outside
// block/qcow2/ (tools reach these through the driver descriptor and the
// BlockNode management hooks).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "block/qcow2/qcow2.h"

namespace bg {
namespace qcow2 {


// Create options, parsed and validated (QEMU's checks and messages).
struct CreateParams {
    uint64_t size = 0;                      // bytes, rounded up to 512
    uint32_t version = 3;
    uint32_t cluster_bits = 16;
    uint32_t refcount_order = 4;
    bool extended_l2 = false;
    uint8_t compression_type = kCompressionZlib;
    bool lazy_refcounts = false;
    PreallocMode prealloc = PreallocMode::kOff;
    std::optional<std::string> backing_file, backing_fmt, data_file;
    bool data_file_raw = false;
};
constexpr size_t kNumCreateOptions = 21;
extern const CreateOptionDesc kCreateOptions[kNumCreateOptions];
Result<CreateParams> parse_create_params(const CreateOptions &opts);
// "0.10"/"v2" -> 2, "1.1"/"v3" -> 3.
Result<uint32_t> parse_compat(const std::string &v);
// Cluster 0 for h (QEMU qcow2_update_header): header (v3: header_length
// >= 112, unknown optional fields kept), extensions (backing format, data
// file, bitmaps, feature name table for v3, unknown ones kept, end), then
// the backing file name; h's backing_file_offset/size are recomputed.
// ENOSPC if it does not fit.
Result<std::vector<uint8_t>> build_header_cluster(const Header &h, const std::string &image);
// QEMU qcow2_refcount_metadata_size / qcow2_calc_prealloc_size.
uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size, uint32_t refcount_order,
                                uint64_t *refblock_count, uint64_t *reftable_clusters);
uint64_t calc_prealloc_size(uint64_t total_size, uint64_t cluster_size, uint32_t refcount_order, bool extended_l2);
// A snapshot table entry as `img snapshot -l` / `img info` show it.
SnapshotInfo snapshot_info(const Snapshot &sn);
// The descriptor's create_image and measure.
Status create_image(const std::string &filename, const CreateOptions &opts);
// The descriptor's create_on_node (blockdev-create onto open nodes).
Status create_on_node(BlockNode *file, BlockNode *data_file, const CreateOptions &opts);
Result<MeasureInfo> measure(const CreateOptions &opts, BlockNode *src);

} // namespace qcow2
} // namespace bg
