// monitor/block-info.h -- query-named-block-nodes: the BlockDeviceInfo of
// each node, shaped and filled as qemu-storage-daemon 7.2 answers it.
//
// Members of one BlockDeviceInfo (QEMU's QAPI order; optional ones only
// when they apply):
//   file, node-name, ro, drv, backing_file?, backing_file_depth, encrypted,
//   detect_zeroes, bps, bps_rd, bps_wr, iops, iops_rd, iops_wr, image,
//   cache {writeback, direct, no-flush}, write_threshold, dirty-bitmaps?
// image (an ImageInfo):
//   filename, format, dirty-flag?, actual-size?, virtual-size,
//   cluster-size?, backing-filename?, full-backing-filename?,
//   backing-filename-format?, snapshots?, backing-image? (not with flat),
//   format-specific?
//
// "file" and "filename" are QEMU's node file names: the protocol's file
// name, taken over by a format node from its file child, or a
// "json:{...}" description where the node's options (raw offset/size,
// null-co size, a backing file other than the image names, ...) make
// the plain name insufficient.
//
// Member order: nlohmann::json keeps objects sorted by key, so the
// *_ordered variants exist too. Their objects hold the members in QAPI
// order (QEMU's insertion order); qdict_json_string() prints such a tree
// in the order QEMU's QMP output has (its dictionaries' hash order).
//
// Uses only the consumer API of block/. Threading: main loop (the graph's
// thread). get_info() runs the driver hook in a coroutine when called from
// outside one, so these may be called from either; from a coroutine they
// yield.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bg {

class BlockGraph;
class BlockNode;

// One dirty bitmap of a node as query-named-block-nodes lists it (QEMU's
// BlockDirtyInfo). count: dirty bytes.
struct DirtyBitmapStatus {
    std::string name;
    uint64_t count = 0;
    uint32_t granularity = 0;
    bool recording = false;
    bool busy = false;
    bool persistent = false;
    bool inconsistent = false;   // printed only when true
};

// The "dirty-bitmaps" member for a node's bitmaps, in the order given
// (QEMU lists the most recently created or loaded bitmap first).
nlohmann::ordered_json dirty_bitmaps_json(const std::vector<DirtyBitmapStatus> &bitmaps);

// QEMU's BlockDeviceInfo for one node. flat: no "backing-image" and
// backing_file_depth 0 (QEMU's flat=true). Never fails: what cannot be
// learnt (a failing get_info) is left out as QEMU leaves it out.
nlohmann::json block_device_info(BlockNode *node, bool flat);
nlohmann::ordered_json block_device_info_ordered(BlockNode *node, bool flat);

// query-named-block-nodes: every node of graph, in the order QEMU lists
// them (the reverse of the order QEMU names nodes in: an inline file child
// is named before its format node, every other inline child after it).
nlohmann::json query_named_block_nodes(BlockGraph &graph, bool flat);
nlohmann::ordered_json query_named_block_nodes_ordered(BlockGraph &graph, bool flat);
std::vector<BlockNode *> named_nodes_in_qemu_order(BlockGraph &graph);

// The node that answers QEMU's bdrv_get_info for node (cluster-size and
// dirty-flag come from it): a format or a protocol with storage answers
// itself; drivers that pass their child's bytes through (raw, filters) ask
// that child; a device without storage (null-co) has none (nullptr).
BlockNode *block_info_node(BlockNode *node);

// QEMU's file name of node (BlockDeviceInfo "file"), as described above.
std::string node_qemu_filename(BlockNode *node);
// QEMU's full-backing-filename of node, whose header records the backing
// file name recorded: resolved against the directory of the node's file,
// without opening anything; nullopt where it cannot be (the node's own name
// is a json: description).
std::optional<std::string> node_full_backing_filename(BlockNode *node, const std::string &recorded);

// Compact JSON as QEMU prints it ("{"a": 1, "b": [1, 2]}"): object members
// in QEMU's dictionary order (by a hash of the key modulo 512; within one
// hash bucket the member inserted last first), strings ASCII with \uXXXX
// escapes. Input objects must be in insertion (QAPI) order.
std::string qdict_json_string(const nlohmann::ordered_json &v);
// Where QEMU's dictionary puts key: its hash bucket (0..511).
unsigned qdict_bucket(const std::string &key);

} // namespace bg
