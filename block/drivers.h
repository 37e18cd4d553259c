// Descriptors of the built-in drivers, for block/drivers.cc and for code
// that names a driver directly (tests, tools). Each is defined in its
// driver's file: kDriverFile in block/file-posix.cc, kDriverRaw in
// block/raw-format.cc, kDriverNullCo/kDriverNullAio in block/null.cc,
// kDriverBlkdebug in block/blkdebug.cc.
#pragma once

#include "block/block-driver.h"

namespace bg {

extern const BlockDriver kDriverFile;       // "file" (protocol)
extern const BlockDriver kDriverRaw;        // "raw" (format)
extern const BlockDriver kDriverNullCo;     // "null-co" (protocol)
extern const BlockDriver kDriverNullAio;    // "null-aio" (protocol)
extern const BlockDriver kDriverBlkdebug;   // "blkdebug" (filter)
extern const BlockDriver kDriverQcow2;      // "qcow2" (format), block/qcow2/qcow2.cc

// Image creation of the file protocol and the raw format
// (block/file-create.cc), referenced by their descriptors.
extern const CreateOptionDesc kFileCreateOptions[4];
extern const CreateOptionDesc kRawCreateOptions[1];
Status file_create_image(const std::string &filename, const CreateOptions &opts);
Status raw_create_image(const std::string &filename, const CreateOptions &opts);
Result<MeasureInfo> raw_measure(const CreateOptions &opts, BlockNode *src);
// The "preallocation" create option: off (default), falloc, full, and
// metadata if allowed. EINVAL "Parameter 'preallocation' does not accept value 'x'".
Result<PreallocMode> parse_prealloc_option(const CreateOptions &opts, bool allow_metadata);

} // namespace bg
