// block/job-chain.h -- backing-chain helpers shared by the commit and
// stream jobs (QEMU's bdrv_filter_or_cow_bs, bdrv_skip_filters,
// bdrv_chain_contains, bdrv_find_overlay, bdrv_find_backing_image and
// bdrv_change_backing_file).
//
// Threading model: main loop; rewrite_backing_file() may be called from a
// coroutine or outside one (BlockNode::amend and BlockGraph::set_read_only).
#pragma once

#include <optional>
#include <string>

#include "block/block.h"

namespace bg {

bool node_is_filter(const BlockNode *n);
// The next node of a chain: the backing child, else a filter's child.
BlockNode *chain_next(const BlockNode *n);
// n, or the first node below it through filters that is not a filter.
BlockNode *skip_filters(BlockNode *n);
// The first non-filter node of n's backing chain (n's COW child, through
// filters), nullptr without one.
BlockNode *backing_chain_next(BlockNode *n);
// Whether n is top or below it in top's chain (through backing and filters).
bool chain_contains(BlockNode *top, const BlockNode *n);
// The non-filter node of active's chain whose backing chain continues at
// bs (skipping filters); bs nullptr: the bottom-most one. nullptr if none.
BlockNode *find_overlay(BlockNode *active, BlockNode *bs);
// The node of bs's backing chain (below bs) that the file name name
// designates (as recorded in an overlay's header, or the node's own file
// name, compared as given and as a canonical path). nullptr if none.
BlockNode *find_backing_image(BlockNode *bs, const std::string &name);
// The backing file string and format that point an overlay at base: the
// given string (backing-file) or base's file name; the format is base's
// driver (a protocol's name becomes "raw" with mask_protocol).
void backing_reference(BlockNode *base, const std::optional<std::string> &backing_file, bool mask_protocol,
                       std::string *file, std::string *fmt);
// Rewrites overlay's header to name file/fmt as its backing file ("" for
// none), reopening it read-write meanwhile if it is read-only.
Status rewrite_backing_file(BlockGraph &graph, BlockNode *overlay, const std::string &file, const std::string &fmt);
// The backing file name recorded in n's header ("" if none).
std::string recorded_backing_file(BlockNode *n);
std::string recorded_backing_format(BlockNode *n);

} // namespace bg
