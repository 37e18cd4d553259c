// tools/nbd.cc -- "blockgraph nbd": qemu-nbd's command line (QEMU 7.2).
//
//   blockgraph nbd [OPTIONS] FILE        serve FILE over NBD
//   blockgraph nbd -L [OPTIONS]          list a server's exports
//   blockgraph nbd -c DEV / -d DEV       kernel /dev/nbdN (tools/nbd-kernel.cc)
//
// Serving maps the command line onto the daemon machinery (tools/daemon.h):
// the image is opened as the tools open images (tools/image-open.h), with a
// temporary qcow2 overlay for -s, a read-only internal snapshot view for -l
// (qcow2's snapshot.id/snapshot.name open options) and a raw node with an
// offset for -o; an NBD server listens on -k or -b/-p and one NBD export
// shows the top node. Without -t the process exits once the last client
// that completed the handshake has gone, as qemu-nbd does.
//
// Messages are qemu-nbd's, with "blockgraph nbd: " where qemu-nbd prints
// "qemu-nbd: ". Users' documentation: docs/nbd.md ("blockgraph nbd").
#include "tools/nbd.h"
#include "tools/dropin.h"

#include <getopt.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "block/image-mgmt.h"
#include "tools/commands.h"
#include "tools/daemon.h"
#include "qapi/tls-object.h"
#include "qapi/user-object.h"
#include "tools/image-open.h"
#include "tools/nbd-kernel.h"
#include "tools/trace-opt.h"
#include "util/log.h"
#include "util/tls.h"

namespace bg {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxNbdString = 4096;   // the protocol's limit on names and descriptions

const char kNbdUsage[] =
    "Usage: blockgraph nbd [OPTIONS] FILE\n"
    "  or:  blockgraph nbd -L [OPTIONS]\n"
    "Serve a disk image over NBD (a work-alike of qemu-nbd).\n"
    "\n"
    "  -h, --help                display this help and exit\n"
    "  -V, --version             output version information and exit\n"
    "\n"
    "Connection properties:\n"
    "  -p, --port=PORT           port to listen on (default `10809')\n"
    "  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
    "  -k, --socket=PATH         path to the unix socket (absolute)\n"
    "  -e, --shared=NUM          device can be shared by NUM clients (default '1';\n"
    "                            0: unlimited; multi-conn is offered unless 1)\n"
    "  -t, --persistent          don't exit on the last connection\n"
    "  -v, --verbose             display extra debugging information\n"
    "  -x, --export-name=NAME    expose export by name (default is empty string)\n"
    "  -D, --description=TEXT    export a human-readable description\n"
    "\n"
    "Exposing part of the image:\n"
    "  -o, --offset=OFFSET       offset into the image\n"
    "  -A, --allocation-depth    expose the allocation depth\n"
    "  -B, --bitmap=NAME         expose a persistent dirty bitmap\n"
    "\n"
    "General purpose options:\n"
    "  -L, --list                list exports available from another NBD server\n"
    "  --object type,id=ID,...   define an object such as 'tls-creds-x509',\n"
    "                            'tls-creds-psk' or 'authz-simple'\n"
    "  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
    "  --tls-authz=ID            use id of an earlier --object to provide\n"
    "                            authorization\n"
    "  --tls-hostname=HOSTNAME   the server's name in its certificate (with -L)\n"
    "  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
    "                            checked as qemu-nbd does; there are no trace\n"
    "                            events to enable\n"
    "  --fork                    fork off the server process and exit the parent\n"
    "                            once the server is running\n"
    "  --pid-file=PATH           store the server's process ID in the given file\n"
    "\n"
    "Kernel NBD client support (needs the kernel's nbd module):\n"
    "  -c, --connect=DEV         connect FILE to the local NBD device DEV (runs in\n"
    "                            the background unless -v is given)\n"
    "  -d, --disconnect          disconnect the specified device\n"
    "\n"
    "Block device options:\n"
    "  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
    "  -r, --read-only           export read-only\n"
    "  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
    "                            file with backing_file=FILE, redirect the write to\n"
    "                            the temporary one\n"
    "  -l, --load-snapshot=SNAPSHOT_PARAM\n"
    "                            load an internal snapshot inside FILE and export it\n"
    "                            as an read-only device, SNAPSHOT_PARAM format is\n"
    "                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
    "                            '[ID_OR_NAME]'\n"
    "  -n, --nocache             disable host cache\n"
    "      --cache=MODE          set cache mode used to access the disk image, the\n"
    "                            valid options are: 'none', 'writeback' (default),\n"
    "                            'writethrough', 'directsync' and 'unsafe'\n"
    "      --aio=MODE            set AIO mode (native, io_uring or threads)\n"
    "      --discard=MODE        set discard mode (ignore, unmap)\n"
    "      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
    "      --image-opts          treat FILE as a full set of image options\n"
    "\n"
    "See docs/nbd.md.\n";

enum {
    kOptCache = 256,
    kOptAio,
    kOptDiscard,
    kOptDetectZeroes,
    kOptObject,
    kOptTlsCreds,
    kOptTlsHostname,
    kOptTlsAuthz,
    kOptImageOpts,
    kOptFork,
    kOptPidFile,
    kOptSelinuxLabel,
};

void error(const std::string &msg)
{
    std::fprintf(stderr, "%s: %s\n", kNbdProg, msg.c_str());
}

// qemu_strtoi/qemu_strtou64 with base 0: the whole string, no overflow.
bool parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(s, &end, 0);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

// -l snapshot.id=ID,snapshot.name=NAME: the keys qemu-nbd accepts.
bool parse_snapshot_param(const std::string &s, NbdArgs *a)
{
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t comma = s.find(',', pos);
        std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        size_t eq = item.find('=');
        std::string key = item.substr(0, eq);
        std::string val = eq == std::string::npos ? "" : item.substr(eq + 1);
        if (key == "snapshot.id") {
            a->snapshot_id = val;
        } else if (key == "snapshot.name") {
            a->snapshot_name = val;
        } else {
            error("Invalid parameter '" + key + "'");
            return false;
        }
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    return true;
}

// The options that take values and may be given once (-n/--cache,
// --aio, --discard). Returns false after printing the error.
bool parse_block_option(int c, const char *arg, NbdArgs *a)
{
    switch (c) {
    case 'n':
    case kOptCache: {
        if (a->seen_cache) {
            error("-n and --cache can only be specified once");
            return false;
        }
        a->seen_cache = true;
        auto m = parse_cache_mode(c == 'n' ? "none" : arg);
        if (!m) {
            error(std::string("Invalid cache mode `") + arg + "'");
            return false;
        }
        a->cache = m.value();
        return true;
    }
    case kOptAio: {
        if (a->aio) {
            error("--aio can only be specified once");
            return false;
        }
        auto m = parse_aio_mode(arg);
        if (!m) {
            error(std::string("Invalid aio mode '") + arg + "'");
            return false;
        }
        a->aio = m.value();
        return true;
    }
    case kOptDiscard: {
        if (a->discard) {
            error("--discard can only be specified once");
            return false;
        }
        auto m = parse_discard_mode(arg);
        if (!m) {
            error(std::string("Invalid discard mode `") + arg + "'");
            return false;
        }
        a->discard = m.value();
        return true;
    }
    case kOptDetectZeroes: {
        std::string v = arg;
        if (v == "off") a->detect_zeroes = BlockdevDetectZeroes::kOff;
        else if (v == "on") a->detect_zeroes = BlockdevDetectZeroes::kOn;
        else if (v == "unmap") a->detect_zeroes = BlockdevDetectZeroes::kUnmap;
        else {
            error("Failed to parse detect_zeroes mode: invalid parameter value: " + v);
            return false;
        }
        // Checked against the --discard given before it, as qemu-nbd does.
        if (a->detect_zeroes == BlockdevDetectZeroes::kUnmap &&
            !(a->discard && *a->discard == BlockdevDiscardOptions::kUnmap)) {
            error("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
            return false;
        }
        return true;
    }
    }
    return false;
}

// One option of the getopt loop. Returns -1 to go on, or the exit status.
int parse_one(int c, const char *arg, NbdArgs *a)
{
    long long v = 0;
    switch (c) {
    case 's': a->snapshot = true; break;
    case 'n':
    case kOptCache:
    case kOptAio:
    case kOptDiscard:
    case kOptDetectZeroes:
        if (!parse_block_option(c, arg, a)) return 1;
        break;
    case 'b': a->bind = arg; break;
    case 'p': a->port = arg; break;
    case 'o':
        if (!parse_int(arg, 0, LLONG_MAX, &v)) {
            error(std::string("Invalid offset '") + arg + "'");
            return 1;
        }
        a->offset = static_cast<uint64_t>(v);
        break;
    case 'l':
        if (std::strncmp(arg, "snapshot.", 9) == 0) {
            if (!parse_snapshot_param(arg, a)) {
                error(std::string("Failed in parsing snapshot param `") + arg + "'");
                return 1;
            }
        } else {
            a->snapshot_id_or_name = arg;
        }
        a->load_snapshot = true;
        a->read_only = true;
        break;
    case 'r': a->read_only = true; break;
    case 'A': a->allocation_depth = true; break;
    case 'B': a->bitmaps.push_back(arg); break;
    case 'k':
        if (arg[0] != '/') {
            error("socket path must be absolute");
            return 1;
        }
        a->socket_path = arg;
        break;
    case 'd': a->disconnect = true; break;
    case 'c': a->device = arg; break;
    case 'e':
        if (!parse_int(arg, 0, INT_MAX, &v)) {
            error(std::string("Invalid shared device number '") + arg + "'");
            return 1;
        }
        a->shared = static_cast<int>(v);
        break;
    case 'f': a->format = arg; break;
    case 't': a->persistent = true; break;
    case 'x':
        if (std::strlen(arg) > kMaxNbdString) {
            error(std::string("export name '") + arg + "' too long");
            return 1;
        }
        a->export_name = arg;
        break;
    case 'D':
        if (std::strlen(arg) > kMaxNbdString) {
            error(std::string("export description '") + arg + "' too long");
            return 1;
        }
        a->description = arg;
        break;
    case 'v': a->verbose = true; break;
    case 'V': print_tool_version("blockgraph nbd"); return 0;
    case 'h': std::fputs(kNbdUsage, stdout); return 0;
    case kOptObject: a->objects.push_back(arg); break;
    case kOptTlsCreds: a->tls_creds = arg; break;
    case kOptTlsHostname: a->tls_hostname = arg; break;
    case kOptTlsAuthz: a->tls_authz = arg; break;
    case kOptImageOpts: a->image_opts = true; break;
    case 'T': {
        int t = parse_trace_option(arg, kNbdProg);
        if (t >= 0) return t;
        break;
    }
    case kOptFork: a->fork = true; break;
    case 'L': a->list = true; break;
    case kOptPidFile: a->pid_file = arg; break;
    case kOptSelinuxLabel:
        error("SELinux support not enabled in this binary");
        return 1;
    default:   // '?': getopt has printed what is wrong
        error(std::string("Try `") + kNbdProg + " --help' for more information.");
        return 1;
    }
    return -1;
}

// The checks of the whole command line (qemu-nbd's order). Returns -1 to
// go on, or 1 after printing the error.
int check_args(NbdArgs *a, const std::vector<std::string> &pos)
{
    if (a->list) {
        if (!pos.empty()) {
            error("List mode is incompatible with a file name");
            return 1;
        }
        if (a->export_name || a->description || a->offset || a->device || a->disconnect || a->format ||
            a->load_snapshot || !a->bitmaps.empty() || a->allocation_depth || a->aio || a->discard ||
            a->seen_cache) {
            error("List mode is incompatible with per-device settings");
            return 1;
        }
        if (a->fork) {
            error("List mode is incompatible with forking");
            return 1;
        }
    } else if (pos.size() != 1) {
        error("Invalid number of arguments");
        std::fprintf(stderr, "Try `%s --help' for more information.\n", kNbdProg);
        return 1;
    } else {
        a->filename = pos[0];
    }
    if (!a->tls_creds.empty()) {
        if (a->device) {
            error("TLS is not supported with a host device");
            return 1;
        }
        if (a->tls_authz && a->list) {
            error("TLS authorization is incompatible with export list");
            return 1;
        }
        if (a->tls_hostname && !a->list) {
            error("TLS hostname is only supported with export list");
            return 1;
        }
    } else {
        if (a->tls_authz) {
            error("--tls-authz is not permitted without --tls-creds");
            return 1;
        }
        if (a->tls_hostname) {
            error("--tls-hostname is not permitted without --tls-creds");
            return 1;
        }
    }
    return -1;
}

} // namespace

SocketAddress nbd_address(const NbdArgs &a)
{
    SocketAddress addr;
    if (a.socket_path) {
        addr.type = SocketAddress::Type::kUnix;
        addr.path = *a.socket_path;
    } else {
        addr.type = SocketAddress::Type::kInet;
        addr.host = a.bind.value_or("0.0.0.0");
        addr.port = a.port.value_or("10809");
    }
    return addr;
}

int parse_nbd_args(int argc, char **argv, NbdArgs *a)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"version", no_argument, nullptr, 'V'},
        {"bind", required_argument, nullptr, 'b'},
        {"port", required_argument, nullptr, 'p'},
        {"socket", required_argument, nullptr, 'k'},
        {"offset", required_argument, nullptr, 'o'},
        {"read-only", no_argument, nullptr, 'r'},
        {"allocation-depth", no_argument, nullptr, 'A'},
        {"bitmap", required_argument, nullptr, 'B'},
        {"connect", required_argument, nullptr, 'c'},
        {"disconnect", no_argument, nullptr, 'd'},
        {"list", no_argument, nullptr, 'L'},
        {"snapshot", no_argument, nullptr, 's'},
        {"load-snapshot", required_argument, nullptr, 'l'},
        {"nocache", no_argument, nullptr, 'n'},
        {"cache", required_argument, nullptr, kOptCache},
        {"aio", required_argument, nullptr, kOptAio},
        {"discard", required_argument, nullptr, kOptDiscard},
        {"detect-zeroes", required_argument, nullptr, kOptDetectZeroes},
        {"shared", required_argument, nullptr, 'e'},
        {"format", required_argument, nullptr, 'f'},
        {"persistent", no_argument, nullptr, 't'},
        {"verbose", no_argument, nullptr, 'v'},
        {"object", required_argument, nullptr, kOptObject},
        {"export-name", required_argument, nullptr, 'x'},
        {"description", required_argument, nullptr, 'D'},
        {"tls-creds", required_argument, nullptr, kOptTlsCreds},
        {"tls-hostname", required_argument, nullptr, kOptTlsHostname},
        {"tls-authz", required_argument, nullptr, kOptTlsAuthz},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"trace", required_argument, nullptr, 'T'},
        {"fork", no_argument, nullptr, kOptFork},
        {"pid-file", required_argument, nullptr, kOptPidFile},
        {"selinux-label", required_argument, nullptr, kOptSelinuxLabel},
        {nullptr, 0, nullptr, 0},
    };
    // getopt prints its own complaints prefixed with argv[0]: make that
    // our program name.
    std::vector<char *> args(argv, argv + argc);
    std::string prog = kNbdProg;
    args[0] = prog.data();
    args.push_back(nullptr);
    optind = 0;
    opterr = 1;
    int c;
    while ((c = getopt_long(argc, args.data(), "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L", kLong, nullptr)) != -1) {
        int st = parse_one(c, optarg, a);
        if (st >= 0) return st;
    }
    std::vector<std::string> pos(args.begin() + optind, args.begin() + argc);
    return check_args(a, pos);
}

namespace {

// --object, in order, then the --tls-creds lookup (qemu-nbd's texts).
// Returns false after printing the error.
bool add_objects(const NbdArgs &a, std::shared_ptr<TlsCreds> *creds)
{
    for (const std::string &spec : a.objects) {
        const std::string help = object_help_text(spec);   // qemu-nbd prints it and exits 0
        if (!help.empty()) {
            std::fputs(help.c_str(), stdout);
            std::exit(0);
        }
        Status st = object_add_from_keyval(spec);
        if (!st.ok()) {
            error(st.msg());
            return false;
        }
    }
    if (a.tls_creds.empty()) return true;
    *creds = tls_creds_find(a.tls_creds);
    if (!*creds) {
        error("Failed to get TLS creds: No TLS credentials with id '" + a.tls_creds + "'");
        return false;
    }
    // Listing is the client side of TLS; serving the server side.
    if ((*creds)->is_server() == a.list) {
        error(std::string("Failed to get TLS creds: Expected TLS credentials for a ") +
              (a.list ? "client" : "server") + " endpoint");
        return false;
    }
    return true;
}

} // namespace

int cmd_nbd(int argc, char **argv)
{
    log_init_from_env();
    kNbdProg = tool_prog(kNbdProg);
    NbdArgs a;
    int status = parse_nbd_args(argc, argv, &a);
    if (status >= 0) return status;
    if (a.verbose) log_set_level(LogLevel::kInfo);
    std::shared_ptr<TlsCreds> creds;
    if (!add_objects(a, &creds)) return 1;
    if (a.list) return nbd_list_exports_cmd(a, creds);
    if (a.disconnect) return nbd_kernel_disconnect(kNbdProg, a.filename);
    return nbd_serve(a);
}

} // namespace bg
