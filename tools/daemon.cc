// tools/daemon.cc -- "blockgraph daemon": a drop-in for qemu-storage-daemon's
// FUSE use (--blockdev, --object iothread, --export type=fuse, --pidfile,
// --daemonize), and the serving machinery shared with "blockgraph mount"
// (tools/daemon.h). Users' documentation: docs/daemon.md.
#include "tools/daemon.h"
#include "tools/image-open.h"
#include "tools/dropin.h"

#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <variant>

#include "qapi/block-parse.h"
#include "qapi/export-parse.h"
#include "qapi/tls-object.h"
#include "qapi/user-object.h"
#include "monitor/qmp.h"
#include "tools/commands.h"
#include "util/aio.h"
#include "util/log.h"

namespace bg {

namespace {

// A pidfile, locked (flock) while it exists; removed and unlocked by the
// destructor. The lock tells "blockgraph umount" (and a second daemon with
// the same --pidfile) that the process is alive.
class PidFile {
  public:
    static Result<std::unique_ptr<PidFile>> create(const std::string &path)
    {
        for (int attempt = 0; attempt < 100; attempt++) {
            int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0) return errno_error(errno, "pidfile '" + path + "'");
            if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                int e = errno;
                char buf[32] = {};
                ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
                close(fd);
                if (e == EWOULDBLOCK) {
                    long pid = n > 0 ? strtol(buf, nullptr, 10) : 0;
                    if (pid > 0) {
                        return make_error(EBUSY, "pidfile '%s' is in use by process %ld", path.c_str(), pid);
                    }
                    return make_error(EBUSY, "pidfile '%s' is in use by another process", path.c_str());
                }
                return errno_error(e, "pidfile '" + path + "': cannot lock it");
            }
            // The previous owner may have removed it between open and lock.
            struct stat a, b;
            if (fstat(fd, &a) != 0 || stat(path.c_str(), &b) != 0 || a.st_dev != b.st_dev ||
                a.st_ino != b.st_ino) {
                close(fd);
                continue;
            }
            std::string text = std::to_string(getpid()) + "\n";
            if (ftruncate(fd, 0) != 0 || pwrite(fd, text.data(), text.size(), 0) != (ssize_t)text.size()) {
                int e = errno;
                unlink(path.c_str());
                close(fd);
                return errno_error(e, "pidfile '" + path + "': cannot write it");
            }
            return std::unique_ptr<PidFile>(new PidFile(path, fd));
        }
        return make_error(EBUSY, "pidfile '%s' keeps being replaced", path.c_str());
    }

    ~PidFile()
    {
        unlink(path_.c_str());
        close(fd_);
    }

  private:
    PidFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
    std::string path_;
    int fd_;
};

// Start-up report from a daemonized child to its parent: "0" (ready) or
// "1<message>"; EOF without either means the child died.
void report(int fd, bool ok, const std::string &msg)
{
    std::string s = ok ? "0" : "1" + msg;
    const char *p = s.data();
    size_t left = s.size();
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        p += n;
        left -= n;
    }
}

// The parent of a daemonized child: waits for its report.
int wait_for_child(const DaemonConfig &cfg, pid_t pid, int fd)
{
    std::string got;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got.append(buf, n);
        if (got[0] == '0') break;   // ready; the child keeps the pipe no longer
    }
    close(fd);
    if (!got.empty() && got[0] == '0') {
        if (cfg.on_ready) cfg.on_ready();
        return 0;
    }
    // Failed: the child has cleaned up; wait until it is gone.
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!got.empty()) {
        std::fprintf(stderr, "%s: %s\n", cfg.prog.c_str(), got.c_str() + 1);
    } else if (WIFSIGNALED(status)) {
        std::fprintf(stderr, "%s: the daemon process was killed by signal %d (%s) during start-up\n",
                     cfg.prog.c_str(), WTERMSIG(status), strsignal(WTERMSIG(status)));
    } else {
        std::fprintf(stderr, "%s: the daemon process exited during start-up (status %d)\n", cfg.prog.c_str(),
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return 1;
}

// Detaches a daemonized child from the caller's terminal and pipes: stdin
// and stdout go to /dev/null; stderr too unless it is a regular file (a log
// the user asked for), so that "$(blockgraph mount ...)" does not wait for us.
void detach_stdio()
{
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) return;
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    struct stat st;
    if (fstat(STDERR_FILENO, &st) != 0 || !S_ISREG(st.st_mode)) dup2(null, STDERR_FILENO);
    close(null);
}

gboolean on_stop_signal(gpointer opaque)
{
    log_info("signal received, shutting down");
    static_cast<Daemon *>(opaque)->request_stop();
    return G_SOURCE_CONTINUE;
}

gboolean on_stats_signal(gpointer opaque)
{
    static_cast<Daemon *>(opaque)->print_stats();
    return G_SOURCE_CONTINUE;
}

} // namespace

// ---------------------------------------------------------------- daemon_run

namespace {

// Everything after the fork, in the serving process. report_fd >= 0: the
// pipe to a waiting parent.
int serve(const DaemonConfig &cfg, const std::function<Status(Daemon &)> &setup, int report_fd)
{
    signal(SIGPIPE, SIG_IGN);
    std::unique_ptr<AioContext> main_ctx = AioContext::create(g_main_context_default());
    AioContext::set_current(main_ctx.get());
    GMainLoop *loop = g_main_loop_new(g_main_context_default(), FALSE);

    Status st;
    {
        Daemon d(cfg, loop);
        guint sources[] = {
            g_unix_signal_add(SIGTERM, on_stop_signal, &d),
            g_unix_signal_add(SIGINT, on_stop_signal, &d),
            g_unix_signal_add(SIGHUP, on_stop_signal, &d),
            g_unix_signal_add(SIGUSR1, on_stats_signal, &d),
        };

        std::unique_ptr<PidFile> pidfile;
        if (!cfg.pidfile.empty()) {
            auto p = PidFile::create(cfg.pidfile);
            if (p) pidfile = std::move(p.value());
            else st = p.error();
        }
        if (st.ok()) st = setup(d);
        if (st.ok() && d.stop_requested()) st = make_error(EINTR, "stopped during start-up");
        if (st.ok() && d.export_count() == 0 && !d.has_monitors() && !d.nbd_server_running()) {
            st = make_error(EINVAL, "no exports");
        }

        if (st.ok()) {
            log_info("ready: %zu export%s", d.export_count(), d.export_count() == 1 ? "" : "s");
            if (report_fd >= 0) {
                detach_stdio();
                report(report_fd, true, "");
                close(report_fd);
                report_fd = -1;
            } else if (cfg.on_ready) {
                cfg.on_ready();
            }
            g_main_loop_run(loop);
        }
        d.teardown();
        if (cfg.on_exit) cfg.on_exit();
        for (guint id : sources) g_source_remove(id);
        // Removing the sources restored the default actions; everything is
        // cleaned up now, so a late stop signal must not turn exit 0 into a kill.
        for (int sig : {SIGTERM, SIGINT, SIGHUP}) signal(sig, SIG_IGN);
        pidfile.reset();
    }
    g_main_loop_unref(loop);
    main_ctx.reset();

    if (!st.ok()) {
        if (report_fd >= 0) {
            report(report_fd, false, st.msg());
            close(report_fd);
        } else {
            std::fprintf(stderr, "%s: %s\n", cfg.prog.c_str(), st.msg().c_str());
        }
        return 1;
    }
    return 0;
}

} // namespace

int daemon_run(const DaemonConfig &cfg, const std::function<Status(Daemon &)> &setup)
{
    if (!cfg.daemonize) return serve(cfg, setup, -1);

    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        std::fprintf(stderr, "%s: pipe: %s\n", cfg.prog.c_str(), strerror(errno));
        return 1;
    }
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        std::fprintf(stderr, "%s: fork: %s\n", cfg.prog.c_str(), strerror(errno));
        close(p[0]);
        close(p[1]);
        return 1;
    }
    if (pid > 0) {
        close(p[1]);
        return wait_for_child(cfg, pid, p[0]);
    }
    close(p[0]);
    setsid();   // no controlling terminal: the caller's ^C or hang-up is not ours
    return serve(cfg, setup, p[1]);
}

// ---------------------------------------------------------------- cmd_daemon

namespace {

const char kDaemonUsage[] =
    "Usage: blockgraph daemon [options]\n"
    "Run a block graph with FUSE exports until stopped (a drop-in for\n"
    "qemu-storage-daemon's FUSE use). Options are processed in order.\n"
    "\n"
    "  --blockdev OPTIONS   add a block node: keyval ([driver=]file,node-name=f,\n"
    "                       filename=disk.img) or JSON ({\"driver\":\"file\",...})\n"
    "  --object iothread,id=NAME[,poll-max-ns=N,...]\n"
    "                       start an I/O thread (before the exports naming it)\n"
    "  --object tls-creds-x509,id=ID,dir=DIR[,endpoint=server|client][,verify-peer=on|off]\n"
    "  --object tls-creds-psk,id=ID,dir=DIR[,endpoint=server|client][,username=NAME]\n"
    "  --object authz-simple,id=ID,identity=NAME\n"
    "  --object secret|secret_keyring|tls-creds-anon|tls-cipher-suites|authz-list|throttle-group,id=ID,...\n"
    "                         as qemu-storage-daemon's (--object help, --object TYPE,help)\n"
    "                       TLS credentials and a peer check (for tls-creds, tls-authz)\n"
    "  --export [type=]fuse,id=ID,node-name=NODE,mountpoint=FILE[,writable=on]\n"
    "           [,growable=on][,writethrough=on][,allow-other=on|off|auto]\n"
    "           [,iothread=NAME | ,iothread.0=A,iothread.1=B...][,fixed-iothread=on]\n"
    "                       export a node as a regular file over FUSE (or JSON)\n"
    "  --nbd-server addr.type=inet,addr.host=H,addr.port=P | addr.type=unix,addr.path=P\n"
    "           [,tls-creds=ID][,tls-authz=ID][,max-connections=N]\n"
    "                       start the NBD server (before --export type=nbd;\n"
    "                       over TCP without tls-creds a warning is printed)\n"
    "  --export type=nbd,id=ID,node-name=NODE[,name=NAME][,description=TEXT]\n"
    "           [,writable=on][,bitmaps.0=BITMAP...][,allocation-depth=on]\n"
    "                       export a node over NBD (docs/nbd.md)\n"
    "  --chardev socket,id=ID,path=PATH,server=on,wait=off | stdio,id=ID\n"
    "                       a QMP endpoint (also host=H,port=P for TCP)\n"
    "  --monitor [chardev=]ID[,pretty=on]\n"
    "                       QMP on that chardev: change the running daemon\n"
    "                       (blockdev-add, block-export-add, ...; docs/qmp.md)\n"
    "  --pidfile PATH       write the daemon's pid to PATH (locked; removed at exit)\n"
    "  --daemonize          run in the background; return once every export is\n"
    "                       mounted (0), or print the error and return 1\n"
    "  --stats              print every export's counters to stderr at exit\n"
    "  -v, --verbose        log more (twice: debug)\n"
    "  -h, --help           show this help\n"
    "  -V, --version        show the version\n"
    "\n"
    "Signals: SIGTERM, SIGINT, SIGHUP stop the daemon (exports finish their\n"
    "requests, flush and unmount; exit status 0); SIGUSR1 prints the counters.\n"
    "Without a monitor, the daemon also exits when its last export is unmounted\n"
    "from outside; with one, it runs until quit or a signal.\n"
    "\n"
    "FUSE transport: FUSE-over-io_uring when the kernel offers it (fuse module\n"
    "parameter enable_uring=Y), else /dev/fuse reads; exports of a node whose\n"
    "bytes are a host file's 1:1 (a file node, or raw/filters over one) that\n"
    "are read-only or growable use kernel passthrough for non-O_DIRECT opens.\n"
    "Export options io-uring=on|off|auto and passthrough=on|off|auto choose\n"
    "(auto, the default: when available; on: required; off: never); with auto,\n"
    "BLOCKGRAPH_FUSE_URING=0 / BLOCKGRAPH_FUSE_PASSTHROUGH=0 turn them off. --stats\n"
    "and the log say which is used (docs/fuse-export.md).\n"
    "See docs/daemon.md.\n";

// An --object of qapi/user-object.h's types, checked against the schema.
struct UserObjectArg {
    nlohmann::json tree;
    bool from_keyval = true;
};

using Step = std::variant<BlockdevOptions, IoThreadOptions, BlockExportOptions, ChardevOptions, MonitorOptions,
                          TlsObjectOptions, NbdServerOptions, UserObjectArg>;

// --object VALUE: "help" texts (printed, exit 0: *exit_now), then QEMU's
// schema checks; an iothread keeps its own parser.
Status parse_daemon_object(const std::string &value, std::vector<Step> *steps, bool *exit_now)
{
    const std::string help = object_help_text(value, true);
    if (!help.empty()) {
        std::fputs(help.c_str(), stdout);
        *exit_now = true;
        return {};
    }
    bool kv = true;
    auto t = parse_object_tree(value, &kv);
    if (!t) return t.error();
    BG_TRY(object_check_schema(t.value(), kv));
    const std::string type = t.value()["qom-type"].get<std::string>();
    if (type == "iothread") {
        auto o = parse_object_arg(value);
        if (!o) return o.error();
        steps->emplace_back(std::move(o.value()));
    } else if (is_tls_object_type(type)) {
        auto o = parse_tls_object_arg(value);
        if (!o) return o.error();
        steps->emplace_back(std::move(o.value()));
    } else if (is_user_object_type(type)) {
        steps->emplace_back(UserObjectArg{std::move(t.value()), kv});
    } else {
        return make_error(ENOTSUP, "object type '%s' is not supported", type.c_str());
    }
    return {};
}

int fail(const std::string &msg)
{
    std::fprintf(stderr, "%s: %s\n", tool_prog("blockgraph daemon"), msg.c_str());
    return 1;
}

} // namespace

int cmd_daemon(int argc, char **argv)
{
    log_init_from_env();
    DaemonConfig cfg;
    cfg.prog = tool_prog("blockgraph daemon");
    std::vector<Step> steps;
    int verbose = 0;
    size_t n_exports = 0, n_monitors = 0;

    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        std::string name = arg, value;
        bool has_value = false;
        if (arg.compare(0, 2, "--") == 0) {
            size_t eq = arg.find('=');
            if (eq != std::string::npos) {
                name = arg.substr(0, eq);
                value = arg.substr(eq + 1);
                has_value = true;
            }
        }
        if (name == "-h" || name == "--help") {
            std::fputs(kDaemonUsage, stdout);
            std::printf("Drivers (--blockdev driver=NAME; docs/drivers.md): %s\n", driver_names_sorted().c_str());
            return 0;
        }
        if (name == "-V" || name == "--version") {
            print_tool_version("blockgraph daemon");
            return 0;
        }
        if (name == "--trace" || name == "-T") {
            return fail("option '" + name + "' is not supported");
        }
        bool takes_value = name == "--blockdev" || name == "--export" || name == "--object" || name == "--pidfile" ||
                           name == "--chardev" || name == "--monitor" || name == "--nbd-server";
        bool is_flag = name == "--daemonize" || name == "--stats" || name == "--verbose" || name == "-v" ||
                       name == "-vv";
        if (!takes_value && !is_flag) {
            if (name[0] == '-' && name.size() > 1) return fail("unknown option '" + name + "'");
            return fail("unexpected argument '" + arg + "'");
        }
        if (is_flag && has_value) return fail("option '" + name + "' takes no value");
        if (takes_value && !has_value) {
            if (i + 1 >= argc) return fail("option '" + name + "' requires an argument");
            value = argv[++i];
        }

        if (name == "--blockdev") {
            auto o = parse_blockdev_arg(builtin_drivers(), value);
            if (!o) return fail(o.msg());
            steps.emplace_back(std::move(o.value()));
        } else if (name == "--object") {
            bool exit_now = false;
            Status st = parse_daemon_object(value, &steps, &exit_now);
            if (!st.ok()) return fail(st.msg());
            if (exit_now) return 0;
        } else if (name == "--export") {
            auto o = parse_export_arg(value);
            if (!o) return fail(o.msg());
            steps.emplace_back(std::move(o.value()));
            n_exports++;
        } else if (name == "--nbd-server") {
            auto o = parse_nbd_server_arg(value);
            if (!o) return fail(o.msg());
            steps.emplace_back(std::move(o.value()));
            n_exports++;   // something to serve, as with qemu-storage-daemon
        } else if (name == "--chardev") {
            auto o = parse_chardev_arg(value);
            if (!o) return fail(o.msg());
            steps.emplace_back(std::move(o.value()));
        } else if (name == "--monitor") {
            auto o = parse_monitor_arg(value);
            if (!o) return fail(o.msg());
            steps.emplace_back(std::move(o.value()));
            n_monitors++;
        } else if (name == "--pidfile") {
            if (value.empty()) return fail("option '" + name + "' requires a file name");
            cfg.pidfile = value;
        } else if (name == "--daemonize") {
            cfg.daemonize = true;
        } else if (name == "--stats") {
            cfg.stats = true;
        } else if (name == "-vv") {
            verbose += 2;
        } else {
            verbose++;
        }
    }
    if (verbose >= 2) log_set_level(LogLevel::kDebug);
    else if (verbose == 1) log_set_level(LogLevel::kInfo);
    if (n_exports == 0 && n_monitors == 0) return fail("no --export or --monitor given (nothing to serve)");

    return daemon_run(cfg, [&steps](Daemon &d) -> Status {
        // Monitors (and their chardevs) come last, whatever the order on the
        // command line: opening a node may run the loop, and a monitor that
        // listened already would serve QMP commands against a half-built
        // daemon (qemu-storage-daemon serves nothing before its command line
        // is done).
        auto is_monitor = [](const Step &s) {
            return std::holds_alternative<ChardevOptions>(s) || std::holds_alternative<MonitorOptions>(s);
        };
        std::vector<const Step *> order;
        for (const Step &s : steps) {
            if (!is_monitor(s)) order.push_back(&s);
        }
        for (const Step &s : steps) {
            if (is_monitor(s)) order.push_back(&s);
        }
        for (const Step *sp : order) {
            const Step &s = *sp;
            if (auto *b = std::get_if<BlockdevOptions>(&s)) {
                BG_TRY(d.add_blockdev(*b));
            } else if (auto *o = std::get_if<IoThreadOptions>(&s)) {
                BG_TRY(d.add_iothread(*o));
            } else if (auto *t = std::get_if<TlsObjectOptions>(&s)) {
                BG_TRY(d.add_tls_object(*t));
            } else if (auto *u = std::get_if<UserObjectArg>(&s)) {
                BG_TRY(d.add_user_object(u->tree, u->from_keyval));
            } else if (auto *c = std::get_if<ChardevOptions>(&s)) {
                BG_TRY(d.qmp().add_chardev(*c));
            } else if (auto *m = std::get_if<MonitorOptions>(&s)) {
                BG_TRY(d.qmp().add_monitor(*m));
            } else if (auto *nbd = std::get_if<NbdServerOptions>(&s)) {
                BG_TRY(d.nbd_server_start(*nbd));
            } else {
                BG_TRY(d.add_export(std::get<BlockExportOptions>(s)));
            }
        }
        return {};
    });
}

} // namespace bg
