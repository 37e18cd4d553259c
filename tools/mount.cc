// tools/mount.cc -- "blockgraph mount IMAGE [MOUNTPOINT]" and "blockgraph
// umount MOUNTPOINT": one image shown as a raw file over FUSE, served by the
// daemon machinery of tools/daemon.h (in the background by default).
//
// How umount finds the daemon: mount runs it with a pidfile in the runtime
// directory ($XDG_RUNTIME_DIR/blockgraph; /run/blockgraph for root; else
// /tmp/blockgraph-$UID), named after a hash of the mountpoint's canonical
// path (canonical_mountpoint(): FNV-1a 64, 16 hex digits, ".pid"). The
// daemon holds an flock on it while it runs and removes it at exit, so a
// pidfile that can be locked is stale, whatever pid it names. umount sends
// SIGTERM to the pid and waits until the lock is released (the daemon has
// unmounted and exited). Without a live pidfile it falls back to
// "fusermount3 -u" for FUSE mounts. Users' documentation: docs/daemon.md.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "block/block.h"
#include "tools/commands.h"
#include "tools/daemon.h"
#include "tools/image-open.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr int kMaxIoThreads = 64;
constexpr int kDefaultUmountTimeout = 30;   // seconds

const char kMountUsage[] =
    "Usage: blockgraph mount [options] IMAGE [MOUNTPOINT]\n"
    "Show IMAGE as a raw file at MOUNTPOINT over FUSE, read-only unless --rw.\n"
    "MOUNTPOINT defaults to IMAGE with its extension replaced by \".raw\"; it is\n"
    "created when missing (and removed again at unmount); an existing non-empty\n"
    "file is never used. Runs in the background and prints MOUNTPOINT once it is\n"
    "mounted; stop it with 'blockgraph umount MOUNTPOINT'.\n"
    "\n"
    "  -f, --format FMT        image format (raw, qcow2); default: probed\n"
    "  --rw                    writable\n"
    "  --foreground            serve in this process until a signal stops it\n"
    "  --allow-other on|off|auto  let other users access the file (default auto)\n"
    "  --iothreads N           serve in N I/O threads (default 0: the main loop)\n"
    "  -v, --verbose           log more (twice: debug)\n"
    "  -h, --help              show this help\n"
    "See docs/daemon.md.\n";

const char kUmountUsage[] =
    "Usage: blockgraph umount [--timeout SECONDS] MOUNTPOINT\n"
    "Stop the blockgraph mount at MOUNTPOINT: signal its daemon and wait (default\n"
    "30 s) until it has flushed, unmounted and exited. For a FUSE mount of an\n"
    "unknown daemon, runs 'fusermount3 -u MOUNTPOINT'.\n";

int fail(const char *prog, const std::string &msg)
{
    std::fprintf(stderr, "blockgraph %s: %s\n", prog, msg.c_str());
    return 1;
}

uint64_t fnv1a64(const std::string &s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : s) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    return h;
}

// The runtime directory (see the file comment). create: make it if missing
// and check that it is ours; otherwise just name it.
Result<std::string> runtime_dir(bool create)
{
    std::string dir;
    bool shared_tmp = false;
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg && xdg[0] == '/') {
        dir = std::string(xdg) + "/blockgraph";
    } else if (geteuid() == 0) {
        dir = "/run/blockgraph";
    } else {
        dir = "/tmp/blockgraph-" + std::to_string(geteuid());
        shared_tmp = true;
    }
    if (!create) return dir;
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        return errno_error(errno, "runtime directory '" + dir + "'");
    }
    struct stat st;
    if (lstat(dir.c_str(), &st) != 0) return errno_error(errno, "runtime directory '" + dir + "'");
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (shared_tmp && (st.st_mode & 077))) {
        return make_error(EPERM, "runtime directory '%s' is not a directory of yours with mode 0700", dir.c_str());
    }
    return dir;
}

std::string pidfile_name(const std::string &mountpoint)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%016" PRIx64 ".pid", fnv1a64(canonical_mountpoint(mountpoint)));
    return buf;
}

// /proc/self/mountinfo escapes ' ', '\t', '\n' and '\\' as octal \NNN.
std::string unescape_octal(const std::string &s)
{
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7') {
            out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}

// The file system type mounted at path (canonical), or "" if none.
std::string mounted_fstype(const std::string &path)
{
    std::ifstream f("/proc/self/mountinfo");
    std::string line, found;
    while (std::getline(f, line)) {
        std::istringstream ls(line);
        std::string id, parent, devno, root, mnt;
        ls >> id >> parent >> devno >> root >> mnt;
        if (unescape_octal(mnt) != path) continue;
        size_t sep = line.find(" - ");
        std::string type = "?";
        if (sep != std::string::npos) {
            std::istringstream ts(line.substr(sep + 3));
            ts >> type;
        }
        found = type;   // the last one is on top
    }
    return found;
}

// Whether IMAGE names something a protocol driver other than "file"
// serves (nbd://host/export): no local file to check or name after.
bool is_protocol_name(const std::string &image)
{
    const BlockDriver *d = protocol_driver_for(builtin_drivers(), image);
    return d && std::string(d->name) != "file";
}

// IMAGE with its extension replaced by ".raw" (or ".raw" appended).
std::string default_mountpoint(const std::string &image)
{
    size_t slash = image.find_last_of('/');
    size_t base = slash == std::string::npos ? 0 : slash + 1;
    size_t dot = image.find_last_of('.');
    if (dot != std::string::npos && dot > base) return image.substr(0, dot) + ".raw";
    return image + ".raw";
}

// The names of the registered format drivers, "a, b or c".
std::string format_names()
{
    std::vector<std::string> names;
    for (const BlockDriver *d : builtin_drivers().all()) {
        if (d->kind == BlockDriverKind::kFormat) names.push_back(d->name);
    }
    std::string s;
    for (size_t i = 0; i < names.size(); i++) {
        s += i == 0 ? "" : i + 1 == names.size() ? " or " : ", ";
        s += names[i];
    }
    return s;
}

bool is_format(const std::string &name)
{
    const BlockDriver *d = builtin_drivers().find(name);
    return d && d->kind == BlockDriverKind::kFormat;
}

struct MountArgs {
    std::string image, mountpoint, format;
    bool rw = false;
    bool foreground = false;
    OnOffAuto allow_other = OnOffAuto::kAuto;
    int iothreads = 0;
    int verbose = 0;
};

// Value of an option given as "--name VALUE", "--name=VALUE" or "-x VALUE".
bool take_value(int argc, char **argv, int *i, const std::string &arg, const std::string &name,
                std::string *value, bool *missing)
{
    *missing = false;
    if (arg == name) {
        if (*i + 1 >= argc) {
            *missing = true;
            return true;
        }
        *value = argv[++*i];
        return true;
    }
    if (name.size() > 2 && arg.compare(0, name.size() + 1, name + "=") == 0) {
        *value = arg.substr(name.size() + 1);
        return true;
    }
    return false;
}

// Parses mount's arguments into *a (and sets the log level -v asks for).
// Returns -1 to go on, or the exit status (0 after --help, 1 after printing
// the error).
int parse_mount_args(int argc, char **argv, MountArgs *out)
{
    MountArgs &a = *out;
    std::vector<std::string> pos;
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i], v;
        bool missing = false;
        if (only_pos || arg.empty() || arg[0] != '-' || arg == "-") {
            pos.push_back(arg);
            continue;
        }
        if (arg == "--") {
            only_pos = true;
        } else if (arg == "-h" || arg == "--help") {
            std::fputs(kMountUsage, stdout);
            return 0;
        } else if (take_value(argc, argv, &i, arg, "-f", &v, &missing) ||
                   take_value(argc, argv, &i, arg, "--format", &v, &missing)) {
            if (missing) return fail("mount", "option '" + arg + "' requires an argument");
            if (!is_format(v)) return fail("mount", "unknown format '" + v + "' (" + format_names() + ")");
            a.format = v;
        } else if (arg == "--rw") {
            a.rw = true;
        } else if (arg == "--foreground") {
            a.foreground = true;
        } else if (take_value(argc, argv, &i, arg, "--allow-other", &v, &missing)) {
            if (missing) return fail("mount", "option '--allow-other' requires an argument");
            if (v == "on") a.allow_other = OnOffAuto::kOn;
            else if (v == "off") a.allow_other = OnOffAuto::kOff;
            else if (v == "auto") a.allow_other = OnOffAuto::kAuto;
            else return fail("mount", "--allow-other: '" + v + "' is not one of: on, off, auto");
        } else if (take_value(argc, argv, &i, arg, "--iothreads", &v, &missing)) {
            if (missing) return fail("mount", "option '--iothreads' requires an argument");
            char *end = nullptr;
            errno = 0;
            long n = v.empty() ? -1 : strtol(v.c_str(), &end, 10);
            if (errno || n < 0 || n > kMaxIoThreads || *end) {
                return fail("mount", "--iothreads: '" + v + "' is not a number from 0 to " +
                                         std::to_string(kMaxIoThreads));
            }
            a.iothreads = static_cast<int>(n);
        } else if (arg == "-v" || arg == "--verbose") {
            a.verbose++;
        } else if (arg == "-vv") {
            a.verbose += 2;
        } else {
            std::string name = arg.substr(0, arg.find('='));
            return fail("mount", "unknown option '" + name + "'");
        }
    }
    if (pos.empty()) return fail("mount", "missing IMAGE (see 'blockgraph mount --help')");
    if (pos.size() > 2) return fail("mount", "unexpected argument '" + pos[2] + "'");
    a.image = pos[0];
    if (pos.size() < 2 && is_protocol_name(a.image)) {
        return fail("mount", "a MOUNTPOINT is needed for '" + a.image + "' (no file name to derive it from)");
    }
    a.mountpoint = pos.size() > 1 ? pos[1] : default_mountpoint(a.image);
    if (a.image.empty()) return fail("mount", "IMAGE must not be empty");
    if (a.mountpoint.empty()) return fail("mount", "MOUNTPOINT must not be empty");
    if (a.verbose >= 2) log_set_level(LogLevel::kDebug);
    else if (a.verbose == 1) log_set_level(LogLevel::kInfo);
    return -1;
}

// The checks that need no daemon, made before forking: the image exists and
// is no directory, the mountpoint is not mounted and is a missing or empty
// regular file. 0, or 1 after printing the error.
int check_mount_paths(const MountArgs &a)
{
    struct stat st;
    if (!is_protocol_name(a.image)) {   // nbd://... is checked when opened
        if (stat(a.image.c_str(), &st) != 0) {
            return fail("mount", "image '" + a.image + "': " + strerror(errno));
        }
        if (S_ISDIR(st.st_mode)) return fail("mount", "image '" + a.image + "' is a directory");
    }
    const std::string key = canonical_mountpoint(a.mountpoint);
    if (!mounted_fstype(key).empty()) {
        return fail("mount", "mountpoint '" + a.mountpoint + "' is already mounted");
    }
    if (stat(a.mountpoint.c_str(), &st) == 0) {
        if (!S_ISREG(st.st_mode)) return fail("mount", "mountpoint '" + a.mountpoint + "' is not a regular file");
        if (st.st_size > 0) return fail("mount", "mountpoint '" + a.mountpoint + "' exists and is not empty");
    } else if (errno != ENOENT) {
        return fail("mount", "mountpoint '" + a.mountpoint + "': " + strerror(errno));
    }
    return 0;
}

// In the serving process: opens the image into d's graph, creates the
// mountpoint file when missing (*created), and exports the image there over
// FUSE (with a.iothreads iothreads).
Status serve_mount(Daemon &d, const MountArgs &a, bool *created)
{
    ImageOpenSpec spec;
    spec.image = a.image;
    spec.format = a.format;
    spec.read_only = !a.rw;
    spec.consumer = "blockgraph mount";
    auto img = open_image(spec);
    if (!img) return img.error();
    if (img.value()->probed_raw && a.rw) std::fputs(probed_raw_warning(a.image).c_str(), stderr);
    std::string node = img.value()->root->node_name();
    img.value()->blk.reset();   // the export attaches its own backend
    d.use_graph(std::move(img.value()->graph));

    // Create the mountpoint file only now, so that a failure above
    // leaves nothing behind; O_EXCL: never take over someone's file.
    int fd = open(a.mountpoint.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        close(fd);
        *created = true;
    } else if (errno != EEXIST) {
        return errno_error(errno, "mountpoint '" + a.mountpoint + "'");
    }

    BlockExportOptions e;
    e.type = "fuse";
    e.id = "mount";
    e.node_name = node;
    e.writable = a.rw;
    e.fuse.mountpoint = a.mountpoint;
    e.fuse.allow_other = a.allow_other;
    for (int i = 0; i < a.iothreads; i++) {
        IoThreadOptions t;
        t.id = "mount-io" + std::to_string(i);
        BG_TRY(d.add_iothread(t));
        e.iothreads.push_back(t.id);
    }
    Status s = d.add_export(e);
    // "export 'mount': " means nothing to the user of this command.
    const std::string prefix = "export '" + e.id + "': ";
    if (!s.ok() && s.msg().compare(0, prefix.size(), prefix) == 0) {
        return Error{s.err(), s.msg().substr(prefix.size())};
    }
    return s;
}

} // namespace

int cmd_mount(int argc, char **argv)
{
    log_init_from_env();
    MountArgs a;
    int status = parse_mount_args(argc, argv, &a);
    if (status >= 0) return status;
    if (check_mount_paths(a)) return 1;
    auto rdir = runtime_dir(true);
    if (!rdir) return fail("mount", rdir.msg());

    DaemonConfig cfg;
    cfg.prog = "blockgraph mount";
    cfg.daemonize = !a.foreground;
    cfg.pidfile = rdir.value() + "/" + pidfile_name(a.mountpoint);
    cfg.on_ready = [&a] {
        std::printf("%s\n", a.mountpoint.c_str());
        std::fflush(stdout);
    };
    bool created = false;   // set in the serving process
    cfg.on_exit = [&a, &created] {
        struct stat s;
        if (created && lstat(a.mountpoint.c_str(), &s) == 0 && S_ISREG(s.st_mode) && s.st_size == 0) {
            unlink(a.mountpoint.c_str());
        }
    };

    return daemon_run(cfg, [&a, &created](Daemon &d) -> Status { return serve_mount(d, a, &created); });
}

int cmd_umount(int argc, char **argv)
{
    std::string mp;
    int timeout = kDefaultUmountTimeout;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i], v;
        bool missing = false;
        if (arg == "-h" || arg == "--help") {
            std::fputs(kUmountUsage, stdout);
            return 0;
        }
        if (take_value(argc, argv, &i, arg, "--timeout", &v, &missing)) {
            char *end = nullptr;
            long n = missing || v.empty() ? -1 : strtol(v.c_str(), &end, 10);
            if (n < 1 || n > 3600 || *end) return fail("umount", "--timeout: expected seconds from 1 to 3600");
            timeout = static_cast<int>(n);
        } else if (arg.size() > 1 && arg[0] == '-' && arg != "--") {
            return fail("umount", "unknown option '" + arg.substr(0, arg.find('=')) + "'");
        } else if (arg == "--" && i + 1 < argc && mp.empty()) {
            mp = argv[++i];
        } else if (mp.empty()) {
            mp = arg;
        } else {
            return fail("umount", "unexpected argument '" + arg + "'");
        }
    }
    if (mp.empty()) return fail("umount", "missing MOUNTPOINT (see 'blockgraph umount --help')");
    const std::string key = canonical_mountpoint(mp);

    // 1. A daemon started by "blockgraph mount".
    auto rdir = runtime_dir(false);
    std::string path = rdir.value() + "/" + pidfile_name(mp);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
            unlink(path.c_str());   // stale: its daemon is gone
            close(fd);
        } else {
            char buf[32] = {};
            ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
            long pid = n > 0 ? strtol(buf, nullptr, 10) : 0;
            if (pid <= 0) {
                close(fd);
                return fail("umount", "pidfile '" + path + "' holds no pid");
            }
            if (kill(static_cast<pid_t>(pid), SIGTERM) != 0 && errno != ESRCH) {
                int e = errno;
                close(fd);
                return fail("umount", "cannot signal the daemon (pid " + std::to_string(pid) + "): " + strerror(e));
            }
            // The lock goes when the daemon has unmounted and exits.
            bool done = false;
            for (int waited_ms = 0; waited_ms < timeout * 1000; waited_ms += 20) {
                if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
                    done = true;
                    break;
                }
                usleep(20 * 1000);
            }
            close(fd);
            if (!done) {
                return fail("umount", "the daemon (pid " + std::to_string(pid) + ") did not exit within " +
                                          std::to_string(timeout) + " s");
            }
            if (!mounted_fstype(key).empty()) return fail("umount", "'" + mp + "' is still mounted");
            return 0;
        }
    }

    // 2. Any other FUSE mount (e.g. of "blockgraph daemon").
    std::string type = mounted_fstype(key);
    if (type.compare(0, 4, "fuse") != 0) {
        return fail("umount", "'" + mp + "' is not a blockgraph mount");
    }
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return fail("umount", std::string("fork: ") + strerror(errno));
    if (pid == 0) {
        execlp("fusermount3", "fusermount3", "-u", "--", mp.c_str(), static_cast<char *>(nullptr));
        std::fprintf(stderr, "blockgraph umount: fusermount3: %s\n", strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return fail("umount", "fusermount3 -u '" + mp + "' failed");
    }
    return 0;
}

} // namespace bg
