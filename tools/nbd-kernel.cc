// tools/nbd-kernel.cc -- "blockgraph nbd -c DEV" and "-d DEV": the kernel's
// NBD client (/dev/nbdN) as the client of our own server.
//
// -c: the server listens on a private unix socket (tools/nbd-serve.cc); once
// it serves, a client connection is made to it here and negotiated in the
// main loop (simple replies only: the kernel reads no structured replies),
// and the connected socket is handed to the kernel with the export's size
// and transmission flags. A thread then sits in NBD_DO_IT, which returns
// when the device is disconnected (-d, or the socket closing); the kernel's
// requests are ordinary NBD requests on that socket, served by the server
// like any client's. The kernel ends the connection on disconnect, and
// without -t the server then exits as after any last client.
//
// Threading: everything here runs in the main thread, except the NBD_DO_IT
// thread, which only makes ioctls on the device and sends the process
// SIGTERM when they return.
#include <fcntl.h>
#include <signal.h>
#include <linux/fs.h>
#include <linux/nbd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "tools/nbd-kernel.h"
#include "util/aio.h"
#include "util/co-socket.h"
#include "util/log.h"
#include "util/nbd-client.h"

namespace bg {

namespace {

constexpr unsigned long kSectorSize = 512;

// What a failed open of the device means, in one line.
std::string open_error(const std::string &dev, int err)
{
    std::string msg = "Failed to open " + dev + ": " + std::strerror(err);
    struct stat st;
    if (err == ENOENT && stat("/sys/module/nbd", &st) != 0) {
        msg += " (the kernel's nbd module is not loaded: try 'modprobe nbd')";
    }
    return msg;
}

// The handshake as the kernel's client needs it: no structured replies, no
// extended headers, no metadata contexts. Returns the connected socket (in
// blocking mode) and the export's size and flags.
Result<int> negotiate(const std::string &sock_path, const std::string &export_name, nbd::ExportInfo *info)
{
    SocketAddress addr;
    addr.type = SocketAddress::Type::kUnix;
    addr.path = sock_path;
    return run_in_coroutine([&]() -> Result<int> {
        Result<int> fd = co_socket_connect(addr);
        if (!fd) return make_error(fd.err(), "Failed to connect to '%s': %s", sock_path.c_str(), std::strerror(fd.err()));
        // The CoSocket closes its descriptor; the kernel gets a duplicate.
        int kfd = dup(fd.value());
        CoSocket sock(fd.value());
        if (kfd < 0) return errno_error(errno, "Failed to duplicate the NBD socket");
        nbd::ClientConfig cfg;
        cfg.export_name = export_name;
        cfg.try_extended_headers = false;
        cfg.try_structured_replies = false;
        Result<nbd::ExportInfo> r = nbd::co_client_handshake(sock, cfg);
        if (!r) {
            close(kfd);
            return r.error();
        }
        *info = r.value();
        int fl = fcntl(kfd, F_GETFL);
        if (fl >= 0) fcntl(kfd, F_SETFL, fl & ~O_NONBLOCK);
        return kfd;
    });
}

// Gives the device its size, flags and socket. Errors name the step.
Status configure_device(int devfd, int sockfd, const nbd::ExportInfo &info, const std::string &dev)
{
    if (info.size % kSectorSize) {
        return make_error(EINVAL, "Export size %llu not multiple of %lu", static_cast<unsigned long long>(info.size),
                          kSectorSize);
    }
    if (ioctl(devfd, NBD_SET_BLKSIZE, kSectorSize) < 0) {
        return errno_error(errno, "Failed setting NBD block size");
    }
    if (ioctl(devfd, NBD_SET_SIZE_BLOCKS, static_cast<unsigned long>(info.size / kSectorSize)) < 0) {
        return errno_error(errno, "Failed setting size (in blocks)");
    }
    if (ioctl(devfd, NBD_SET_FLAGS, static_cast<unsigned long>(info.flags)) < 0) {
        // Old kernels lack NBD_SET_FLAGS: a read-only export is then made
        // read-only through the generic block-device ioctl.
        if (errno != ENOTTY || !(info.flags & NBD_FLAG_READ_ONLY)) {
            return errno_error(errno, "Failed setting flags");
        }
        int ro = 1;
        if (ioctl(devfd, BLKROSET, &ro) < 0) return errno_error(errno, "Failed setting read-only attribute");
    }
    if (ioctl(devfd, NBD_SET_SOCK, static_cast<unsigned long>(sockfd)) < 0) {
        return errno_error(errno, "Failed to set NBD socket");
    }
    log_info("NBD device %s is now connected", dev.c_str());
    return {};
}

} // namespace

Status nbd_kernel_connect(const std::string &dev, const std::string &sock_path, const std::string &export_name)
{
    int devfd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
    if (devfd < 0) return make_error(errno, "%s", open_error(dev, errno).c_str());
    nbd::ExportInfo info;
    Result<int> sockfd = negotiate(sock_path, export_name, &info);
    if (!sockfd) {
        close(devfd);
        return sockfd.error().prefixed("Failed to connect " + dev + " to the NBD server");
    }
    Status st = configure_device(devfd, sockfd.value(), info, dev);
    if (!st.ok()) {
        ioctl(devfd, NBD_CLEAR_SOCK);
        close(sockfd.value());
        close(devfd);
        return st;
    }
    // NBD_DO_IT holds the thread until the device is disconnected; the
    // thread then stops the process as a SIGTERM would (the kernel may
    // have left the socket open, and the main loop's state is not this
    // thread's to touch). Detached: a daemon stopped otherwise exits
    // without waiting for the kernel.
    std::thread([devfd, sfd = sockfd.value(), dev] {
        if (ioctl(devfd, NBD_DO_IT) < 0 && errno != EPIPE) {
            log_warn("NBD device %s: NBD_DO_IT: %s", dev.c_str(), std::strerror(errno));
        }
        ioctl(devfd, NBD_CLEAR_QUE);
        ioctl(devfd, NBD_CLEAR_SOCK);
        close(sfd);
        close(devfd);
        kill(getpid(), SIGTERM);
    }).detach();
    return {};
}

int nbd_kernel_disconnect(const char *prog, const std::string &dev)
{
    int fd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        std::fprintf(stderr, "%s: %s\n", prog, open_error(dev, err).c_str());
        return 1;
    }
    // NBD_DISCONNECT sends the server a DISC after what is queued; the
    // socket is then dropped from the device.
    ioctl(fd, NBD_DISCONNECT);
    ioctl(fd, NBD_CLEAR_SOCK);
    close(fd);
    std::printf("%s disconnected\n", dev.c_str());
    return 0;
}

} // namespace bg
