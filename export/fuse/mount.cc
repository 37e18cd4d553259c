// The FUSE export's mount: mountpoint checks, mounting and unmounting.
// libfuse is used only here (fusermount3's protocol is its business); the
// session is created with no operations, since requests are read and
// answered by the transports. Main thread.
#include <fcntl.h>
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "export/fuse/internal.h"

namespace bg {

namespace {

std::string unescape_mountinfo(const std::string &s)
{
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\\' && i + 3 < s.size()) {
            int v = 0;
            bool ok = true;
            for (int k = 1; k <= 3; k++) {
                if (i + k >= s.size() || s[i + k] < '0' || s[i + k] > '7') ok = false;
                else v = v * 8 + (s[i + k] - '0');
            }
            if (ok) {
                out += static_cast<char>(v);
                i += 3;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

// True if path (absolute, resolved) is a mount point now.
bool is_mounted(const std::string &path)
{
    std::ifstream f("/proc/self/mountinfo");
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ls(line);
        std::string id, parent, devno, root, mnt;
        ls >> id >> parent >> devno >> root >> mnt;
        if (unescape_mountinfo(mnt) == path) return true;
    }
    return false;
}

} // namespace

Status FuseExport::check_mountpoint()
{
    struct stat st;
    if (stat(mountpoint_.c_str(), &st) != 0) {
        return make_error(errno, "mountpoint '%s': %s", mountpoint_.c_str(), strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        return make_error(EINVAL, "mountpoint '%s' is not a regular file", mountpoint_.c_str());
    }
    char *real = realpath(mountpoint_.c_str(), nullptr);
    if (real) {
        bool mounted = is_mounted(real);
        free(real);
        if (mounted) return make_error(EBUSY, "mountpoint '%s' is already mounted", mountpoint_.c_str());
    }
    if (access("/dev/fuse", R_OK | W_OK) != 0) {
        return make_error(errno, "FUSE is unavailable: /dev/fuse: %s (is the fuse module loaded and the device "
                                 "accessible?)",
                          strerror(errno));
    }
    return {};
}

Status FuseExport::mount(bool allow_other)
{
    std::string opts = std::string(writable_ ? "rw" : "ro") + ",nosuid,nodev,noatime,default_permissions" +
                       ",max_read=" + std::to_string(kFuseMaxWrite);
    if (allow_other) opts += ",allow_other";
    struct fuse_args args = FUSE_ARGS_INIT(0, nullptr);
    fuse_opt_add_arg(&args, "blockgraph");
    fuse_opt_add_arg(&args, "-o");
    fuse_opt_add_arg(&args, opts.c_str());
    struct fuse_lowlevel_ops ops;
    memset(&ops, 0, sizeof(ops));
    se_ = fuse_session_new(&args, &ops, sizeof(ops), nullptr);
    fuse_opt_free_args(&args);
    if (!se_) return make_error(EIO, "mountpoint '%s': cannot create a FUSE session", mountpoint_.c_str());
    if (fuse_session_mount(se_, mountpoint_.c_str()) != 0) {
        fuse_session_destroy(se_);
        se_ = nullptr;
        return make_error(EIO, "mountpoint '%s': mounting failed%s", mountpoint_.c_str(),
                          allow_other ? " (with allow_other)" : "");
    }
    mounted_ = true;
    return {};
}

// Mounts with allow_other as chosen (auto: tries it, then mounts without).
Status FuseExport::mount_as(OnOffAuto allow_other)
{
    Status s;
    switch (allow_other) {
    case OnOffAuto::kOn:
        s = mount(true);
        allow_other_ = true;
        break;
    case OnOffAuto::kOff:
        s = mount(false);
        break;
    case OnOffAuto::kAuto:
        s = mount(true);
        allow_other_ = s.ok();
        if (!s.ok()) s = mount(false);
        break;
    }
    return s;
}

// Unmounts (unless the mount is gone already) and ends the session.
void FuseExport::unmount()
{
    if (!se_) return;
    if (mounted_) fuse_session_unmount(se_);
    mounted_ = false;
    fuse_session_destroy(se_);
    se_ = nullptr;
}

// The session's /dev/fuse descriptor (valid while mounted).
int FuseExport::session_fd() const
{
    return fuse_session_fd(se_);
}

} // namespace bg
