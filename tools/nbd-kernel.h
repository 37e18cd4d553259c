// tools/nbd-kernel.h -- the kernel's NBD client for "blockgraph nbd -c/-d"
// (tools/nbd-kernel.cc). Linux only; needs the nbd module (/dev/nbdN).
//
// Threading model: main thread (the one running the daemon's loop).
#pragma once

#include <string>

#include "util/error.h"

namespace bg {

// -c: connects the device dev to the export export_name of the NBD server
// listening on the unix socket sock_path (served by this process's loop),
// and returns once the device is attached. When the device is later
// disconnected the process gets SIGTERM. Errors, one line each: "Failed to
// open DEV: ..." (with a hint when the nbd module is not loaded), "Failed
// to connect DEV to the NBD server: ...", "Export size N not multiple of
// 512", "Failed setting NBD block size: ...", "Failed setting size (in
// blocks): ...", "Failed setting flags: ...", "Failed to set NBD socket:
// ...". REQUIRES: a main loop (AioContext::current()), not in a coroutine.
Status nbd_kernel_connect(const std::string &dev, const std::string &sock_path, const std::string &export_name);

// -d: disconnects the device and prints "DEV disconnected" (qemu-nbd's
// line); exit status 0, or 1 after "<prog>: Failed to open DEV: ...".
int nbd_kernel_disconnect(const char *prog, const std::string &dev);

} // namespace bg
