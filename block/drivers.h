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

} // namespace bg
