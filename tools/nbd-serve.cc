// tools/nbd-serve.cc -- "blockgraph nbd FILE": the image, the NBD server
// and its one export, served by the daemon machinery (tools/daemon.h).
//
// The graph, bottom to top (each optional layer only with its option):
//
//   [file] <- [format, or its snapshot view for -l] <- [qcow2 overlay, -s]
//          <- [raw with offset, -o]  <- the NBD export
//
// -c: after the export is served, the kernel's NBD client is connected to
// it (tools/nbd-kernel.h).
// -s: the overlay is tools/image-open.h's add_temp_overlay (a qcow2 file in
// $TMPDIR, unlinked at once); the image below it is opened read-only. -l: qcow2's read-only snapshot
// view (snapshot.id open option) of the snapshot the argument names.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "block/image-mgmt.h"
#include "export/nbd.h"
#include "qapi/block-parse.h"
#include "tools/daemon.h"
#include "tools/nbd-kernel.h"
#include "tools/nbd.h"
#include "util/log.h"

namespace bg {

namespace {

using json = nlohmann::json;


// What serving needs besides the arguments; lives as long as cmd_nbd.
struct ServeState {
    std::string top_node;           // the node the export shows
};

ImageOpenSpec open_spec(const NbdArgs &a)
{
    ImageOpenSpec spec;
    spec.image = a.filename;
    spec.image_opts = a.image_opts;
    if (a.format) spec.format = *a.format;
    // Under a -s overlay the image itself is only read.
    spec.read_only = a.read_only || a.snapshot;
    spec.cache = a.cache;
    spec.aio = a.aio;
    spec.discard = a.discard;
    spec.consumer = kNbdProg;
    return spec;
}

// -l: the id of the snapshot the argument names, found as qemu-nbd finds
// it (snapshot.id and/or snapshot.name: all given must match; ID_OR_NAME:
// the id first, then the name). Errors: qemu-nbd's texts after
// "Failed to load snapshot: ".
Result<std::string> resolve_snapshot(BlockNode *root, const NbdArgs &a)
{
    // A node whose stack keeps no internal snapshots answers ENOTSUP.
    Result<std::vector<SnapshotInfo>> l = root->snapshot_list();
    if (!l && l.err() == ENOTSUP) {
        return make_error(ENOTSUP,
                          "Block format '%s' used by device '' does not support temporarily loading internal "
                          "snapshots",
                          root->driver_name());
    }
    if (!l) return l.error();
    const std::vector<SnapshotInfo> &snaps = l.value();
    if (a.snapshot_id_or_name) {
        for (const SnapshotInfo &s : snaps) {
            if (s.id == *a.snapshot_id_or_name) return s.id;
        }
        for (const SnapshotInfo &s : snaps) {
            if (s.name == *a.snapshot_id_or_name) return s.id;
        }
    } else if (a.snapshot_id || a.snapshot_name) {
        for (const SnapshotInfo &s : snaps) {
            if ((!a.snapshot_id || s.id == *a.snapshot_id) && (!a.snapshot_name || s.name == *a.snapshot_name)) {
                return s.id;
            }
        }
    }
    return make_error(ENOENT, "Can't find snapshot");
}

// Opens the image (with the snapshot view for -l) into d's graph; the
// name of its top node in *top. Errors are complete messages.
Status open_base(Daemon &d, const NbdArgs &a, std::string *top)
{
    if (a.image_opts && a.format) return make_error(EINVAL, "--image-opts and -f are mutually exclusive");
    ImageOpenSpec spec = open_spec(a);
    // --detect-zeroes goes to the top node: this one unless -s or -o add one.
    json top_extra = json::object();
    const bool dz = a.detect_zeroes != BlockdevDetectZeroes::kOff;
    if (dz && !a.snapshot && !a.offset) top_extra["detect-zeroes"] = detect_zeroes_name(a.detect_zeroes);
    if (!top_extra.empty()) spec.extra_options = top_extra;
    auto img = open_image(spec);
    if (!img) return img.error().prefixed("Failed to blk_new_open '" + a.filename + "'");
    if (img.value()->probed_raw) std::fputs(probed_raw_warning(a.filename).c_str(), stderr);
    if (a.load_snapshot) {
        Result<std::string> id = resolve_snapshot(img.value()->root, a);
        if (!id) return id.error().prefixed("Failed to load snapshot");
        img.value().reset();
        spec.extra_options = top_extra;
        spec.extra_options["snapshot.id"] = id.value();
        img = open_image(spec);
        if (!img) return img.error().prefixed("Failed to load snapshot");
    }
    *top = img.value()->root->node_name();
    img.value()->blk.reset();   // the export attaches its own backend
    d.use_graph(std::move(img.value()->graph));
    return {};
}

// -s: a temporary qcow2 overlay over *top (which becomes the overlay).
Status add_overlay(Daemon &d, const NbdArgs &a, std::string *top)
{
    json extra = json::object();
    if (!a.offset && a.detect_zeroes != BlockdevDetectZeroes::kOff) extra["detect-zeroes"] = detect_zeroes_name(a.detect_zeroes);
    Result<BlockNode *> n = add_temp_overlay(d.graph(), d.graph().find(*top), "nbd-overlay", extra);
    if (!n) return n.error();
    *top = n.value()->node_name();
    return {};
}

// -o: a raw node showing *top from the offset on.
Status add_offset(Daemon &d, const NbdArgs &a, std::string *top)
{
    BlockNode *base = d.graph().find(*top);
    int64_t len = base->getlength();
    if (a.offset > static_cast<uint64_t>(len)) {
        return make_error(EINVAL, "Offset (%llu) cannot be greater than size of the containing file (%lld)",
                          static_cast<unsigned long long>(a.offset), static_cast<long long>(len));
    }
    json tree = {
        {"driver", "raw"},
        {"node-name", "nbd-offset"},
        {"file", *top},
        {"offset", a.offset},
        {"read-only", a.read_only},
        {"detect-zeroes", detect_zeroes_name(a.detect_zeroes)},
    };
    Result<BlockNode *> n = d.graph().add_node_json(tree);
    if (!n) return n.error();
    *top = n.value()->node_name();
    return {};
}

// The NBD server and the export of s->top_node; without -t, a hook that
// stops the daemon once the last client that reached transmission is gone.
Status start_serving(Daemon &d, const NbdArgs &a, ServeState *s)
{
    NbdServerOptions so;
    so.addr = nbd_address(a);
    so.tls_creds = a.tls_creds;
    so.tls_authz = a.tls_authz.value_or("");
    so.max_connections = static_cast<uint32_t>(a.shared);
    BG_TRY(d.nbd_server_start(so));

    BlockExportOptions e;
    e.type = "nbd";
    e.id = "nbd-export";
    e.node_name = s->top_node;
    e.writable = !a.read_only;
    e.writethrough = a.cache.writethrough;
    e.nbd.name = a.export_name.value_or("");
    e.nbd.description = a.description.value_or("");
    // qemu-nbd offers the bitmaps in the reverse order of its -B options.
    for (auto it = a.bitmaps.rbegin(); it != a.bitmaps.rend(); ++it) {
        BlockExportOptionsNbd::Bitmap b;
        b.name = *it;
        e.nbd.bitmaps.push_back(b);
    }
    e.nbd.allocation_depth = a.allocation_depth;
    Status st = d.add_export(e);
    // "export 'nbd-export': " means nothing to the user of this command.
    const std::string prefix = "export '" + e.id + "': ";
    if (!st.ok() && st.msg().compare(0, prefix.size(), prefix) == 0) {
        return Error{st.err(), st.msg().substr(prefix.size())};
    }
    BG_TRY(st);
    if (!a.persistent) {
        nbd_server_set_client_hook([&d](size_t open, bool negotiated) {
            if (negotiated && open == 0) {
                log_info("the last client has gone; exiting (no -t)");
                d.request_stop();
            }
        });
    }
    return {};
}

Status setup(Daemon &d, const NbdArgs &a, ServeState *s)
{
    std::string top;
    BG_TRY(open_base(d, a, &top));
    if (a.snapshot) BG_TRY(add_overlay(d, a, &top));
    if (a.offset) BG_TRY(add_offset(d, a, &top));
    s->top_node = top;
    BG_TRY(start_serving(d, a, s));
    if (a.device) BG_TRY(nbd_kernel_connect(*a.device, *a.socket_path, a.export_name.value_or("")));
    return {};
}

// -c without -k: the server listens in a private directory of $TMPDIR
// (default /tmp), removed at exit. Returns the directory ("" on error,
// after printing it).
std::string private_socket(NbdArgs *a)
{
    const char *tmpdir = getenv("TMPDIR");
    std::string dir = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/blockgraph-nbd-XXXXXX";
    if (!mkdtemp(dir.data())) {
        std::fprintf(stderr, "%s: Could not create a directory for the server's socket in %s: %s\n", kNbdProg,
                     tmpdir && *tmpdir ? tmpdir : "/tmp", std::strerror(errno));
        return "";
    }
    a->socket_path = dir + "/nbd.sock";
    return dir;
}

} // namespace

int nbd_serve(const NbdArgs &args)
{
    NbdArgs a = args;
    std::string sock_dir;
    if (a.device && !a.socket_path) {
        sock_dir = private_socket(&a);
        if (sock_dir.empty()) return 1;
    }
    DaemonConfig cfg;
    cfg.prog = kNbdProg;
    // -c goes to the background once the device is connected, as qemu-nbd
    // does, unless -v keeps it in the foreground.
    cfg.daemonize = a.fork || (a.device && !a.verbose);
    cfg.pidfile = a.pid_file;
    ServeState state;
    // The NBD server removes its unix socket when it stops.
    cfg.on_exit = [sock_dir] {
        nbd_server_set_client_hook(nullptr);
        if (!sock_dir.empty()) rmdir(sock_dir.c_str());
    };
    int rc = daemon_run(cfg, [&a, &state](Daemon &d) -> Status { return setup(d, a, &state); });
    // A daemonized parent returns here too: the directory is the child's.
    if (rc != 0 && !sock_dir.empty()) rmdir(sock_dir.c_str());
    return rc;
}

} // namespace bg
