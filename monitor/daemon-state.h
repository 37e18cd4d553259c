// monitor/daemon-state.h -- what a running daemon serves: its block graph,
// iothreads and exports, changed by the command line at start-up and by QMP
// commands while it runs (one code path for both), plus its monitors.
//
// Threading model: main thread only. Exports may serve requests in
// iothreads; everything here runs in the main loop, in or outside a
// coroutine (the QMP commands run in coroutines; each method says whether
// it may yield).
#pragma once

#include <glib.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "block/job.h"
#include "export/export.h"
#include "qapi/block-options.h"
#include "qapi/export-options.h"
#include "qapi/tls-object.h"
#include "util/error.h"
#include "util/iothread.h"

namespace bg {

class QmpServer;

struct DaemonConfig {
    std::string prog = "blockgraph daemon";  // prefix of error lines
    bool daemonize = false;
    std::string pidfile;          // empty: none. Locked while the daemon runs, removed at exit.
    bool stats = false;           // print every export's stats_text() to stderr when it goes
    // Called once every export is up: in the serving process when not
    // daemonized, else in the parent just before it exits 0. May be empty.
    std::function<void()> on_ready;
    // Called in the serving process after every export has shut down, at
    // a normal stop and after a failed start-up alike. May be empty.
    std::function<void()> on_exit;
};

class Daemon {
  public:
    Daemon(const DaemonConfig &cfg, GMainLoop *loop);
    ~Daemon();   // teardown()
    Daemon(const Daemon &) = delete;
    Daemon &operator=(const Daemon &) = delete;

    BlockGraph &graph() { return *graph_; }
    // Replaces the (empty) graph, e.g. by one opened by open_image().
    // REQUIRES: no node was added yet.
    void use_graph(std::unique_ptr<BlockGraph> graph);

    // --blockdev / blockdev-add: opens a node. May yield. Errors: QEMU's
    //   "'node-name' must be specified for the root node", the graph's.
    Status add_blockdev(const BlockdevOptions &opts);
    // blockdev-del: closes a node that nothing uses. May yield. Errors
    // (QEMU's texts): "Failed to find node with node-name='x'",
    // "Node x is not owned by the monitor" (an implicit node), "Node x is
    // in use" (an export uses it), "Block device x is in use" (a node).
    Status del_blockdev(const std::string &node_name);
    // --object iothread / object-add: starts an iothread. Errors:
    //   "attempt to add duplicate property 'X' to object (type 'container')",
    //   and IoThread::create()'s.
    Status add_iothread(const IoThreadOptions &opts);
    // object-del. Errors: "object 'x' not found", "object 'x' is in use,
    // can not be deleted" (an export serves requests in it).
    Status del_iothread(const std::string &id);
    // --object tls-creds-x509|tls-creds-psk|authz-simple / object-add: adds
    // a TLS object (qapi/tls-object.h) to the process-wide table. Errors:
    // the duplicate-id text above (ids are shared with iothreads),
    // TlsCreds::create()'s.
    Status add_tls_object(const TlsObjectOptions &opts);
    // --object / object-add of qapi/user-object.h's types (secret,
    // secret_keyring, tls-creds-anon, tls-cipher-suites, authz-list,
    // throttle-group) from a tree that passed object_check_schema().
    // Errors: the duplicate-id text above (ids shared with iothreads and
    // TLS objects), then user_object_add_tree()'s (QEMU's texts).
    Status add_user_object(const nlohmann::json &tree, bool from_keyval);
    // object-del of any object: a util/user-objects.h object or a TLS object leaves its table (connections
    // already using credentials keep them, as in QEMU), else del_iothread().
    Status del_object(const std::string &id);
    // --export / block-export-add: creates an export. Errors:
    //   "Block export id 'e' is already in use"
    //   "mountpoint 'X' is used by export 'a' already"
    //   "export 'e': iothread 'x' does not exist"
    //   and block_export_create()'s (node, mountpoint, FUSE messages).
    Status add_export(const BlockExportOptions &opts);
    // block-export-del: shuts the export down (finishing its requests,
    // flushing, unmounting) and sends BLOCK_EXPORT_DELETED. hard: client
    // connections are dropped first (NBD); safe: an export with clients
    // is not deleted ("export 'x' still in use"); a FUSE export has none,
    // so both modes do the same. May yield. Error: "Export 'x' is not found".
    Status del_export(const std::string &id, bool hard);

    // --nbd-server / nbd-server-start: export/nbd.h's nbd_server_start().
    Status nbd_server_start(const NbdServerOptions &opts);
    // nbd-server-stop: deletes every NBD export (as block-export-del
    // mode=hard, with BLOCK_EXPORT_DELETED events), then stops the server.
    // Error: "NBD server not running". May yield.
    Status nbd_server_stop();
    bool nbd_server_running() const;

    struct ExportInfo {
        std::string id, type, node_name;
        bool shutting_down = false;
    };
    std::vector<ExportInfo> exports() const;
    // A graph change under node n (blockdev-snapshot, blockdev-reopen) would
    // be missed by an export whose requests the kernel passes to the host
    // file directly (FUSE passthrough): EBUSY naming it, else ok.
    Status check_no_bypass(BlockNode *n) const;
    struct IoThreadInfo {
        std::string id;
        int64_t thread_id = 0;
        IoThreadOptions opts;
    };
    std::vector<IoThreadInfo> iothreads() const;

    size_t export_count() const { return exports_.size(); }

    // The block jobs (block/job.h); their events go to the monitors.
    JobManager &jobs() { return *jobs_; }

    // The monitors (created on first use; closed by teardown()).
    QmpServer &qmp();
    bool has_monitors() const;
    // Sends a QMP event to every monitor in command mode (none: dropped).
    void emit_event(const std::string &name, const nlohmann::json &data);
    // Prints stats_text() of every export to stderr (SIGUSR1).
    void print_stats() const;
    // Asks the loop to stop (signal handlers); the daemon then tears down.
    void request_stop();
    bool stop_requested() const { return stop_requested_; }
    // Shuts down every export (printing stats with cfg.stats), stops the
    // iothreads and closes the graph. Idempotent.
    void teardown();

  private:
    struct Entry {
        std::unique_ptr<BlockExport> exp;
        std::string id;
        std::string mount_key;    // canonical_mountpoint()
        std::string mountpoint;   // as given
        std::string node_name;
        std::vector<std::string> iothreads;
        bool gone = false;        // went away on its own; reaped soon
        bool deleting = false;    // block-export-del is shutting it down
    };
    struct Thread {
        std::unique_ptr<IoThread> thread;
        IoThreadOptions opts;
        int64_t tid = 0;
    };
    void on_export_gone(BlockExport *e);
    static void reap_gone(void *opaque);
    void finish_export(Entry &e);
    IoThread *find_iothread(const std::string &id) const;

    const DaemonConfig &cfg_;
    GMainLoop *loop_;
    std::unique_ptr<BlockGraph> graph_;
    bool graph_used_ = false;
    std::vector<Thread> iothreads_;
    std::unique_ptr<QmpServer> qmp_;
    std::unique_ptr<JobManager> jobs_;
    std::vector<Entry> exports_;
    BottomHalf *reap_bh_ = nullptr;    // runs reap_gone()
    bool stop_requested_ = false;
    bool tearing_down_ = false;
};

// A path naming the same file as mountpoint, absolute, with the directory
// part resolved (realpath) but the last component not followed, so that it
// can be computed without touching a FUSE file we may be serving ourselves.
std::string canonical_mountpoint(const std::string &mountpoint);

} // namespace bg
