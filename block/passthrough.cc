// BlockNode::passthrough_fd: whether a host file holds the node's bytes
// 1:1, so that a consumer may let the kernel access that file directly
// (the FUSE export's passthrough). The generic checks are here; drivers
// answer through do_passthrough_fd (block/driver-hooks.h).
#include <string>

#include "block/block.h"

namespace bg {

int BlockNode::passthrough_fd(bool write, std::string *why)
{
    // Zero detection changes what is written: the file would not get the
    // bytes the node would store.
    if (detect_zeroes_ != BlockdevDetectZeroes::kOff) {
        *why = "detect-zeroes is on (node '" + node_name() + "')";
        return -1;
    }
    return do_passthrough_fd(write, why);
}

int DriverHooks::do_passthrough_fd(bool write, std::string *why)
{
    (void)write;
    *why = "node '" + self()->node_name() + "' (" + self()->driver_name() + ") stores its data in a layout of its own";
    return -1;
}

} // namespace bg
