// tools/daemon.h -- the serving half of "blockgraph daemon" and "blockgraph
// mount": a block graph with exports in a GLib main loop, run until a signal
// or the last export going away stops it.
//
// The caller parses its command line, then hands daemon_run() a DaemonConfig
// and a setup function. daemon_run() forks first when asked to daemonize
// (before any thread, AioContext or mount exists), then, in the process that
// will serve:
//   1. creates the main AioContext on the default GMainContext, a GMainLoop
//      and the signal handlers (g_unix_signal_add): SIGTERM, SIGINT, SIGHUP
//      stop the daemon; SIGUSR1 prints every export's stats to stderr;
//   2. writes and locks the pidfile, if any;
//   3. calls setup(daemon), which adds iothreads, nodes and exports in the
//      order it likes (Daemon::add_*);
//   4. reports success (daemonized: through a pipe to the parent, which
//      then calls on_ready and exits 0; otherwise on_ready is called in
//      place), and runs the loop until stopped;
//   5. stops: shutdown() on every export (stop taking requests, finish those
//      in flight, flush, unmount), --stats, iothreads stopped, graph closed,
//      on_exit, pidfile removed.
// If anything in 2-3 fails, the exports created so far are shut down the
// same way (no mount is left behind) and the error is printed (by the parent
// when daemonized) as one line "<prog>: <message>"; the status is 1.
//
// Threading model: main thread only. Exports may serve requests in
// iothreads; everything here runs in the main loop.
#pragma once

#include <glib.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "export/export.h"
#include "qapi/block-options.h"
#include "qapi/export-options.h"
#include "util/error.h"
#include "util/iothread.h"

namespace bg {

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

    // --blockdev: opens a node. Errors: the graph's message.
    Status add_blockdev(const BlockdevOptions &opts);
    // --object iothread: starts an iothread. Errors:
    //   "object id 'X' is used twice", and IoThread::create()'s.
    Status add_iothread(const IoThreadOptions &opts);
    // --export: creates an export. Errors:
    //   "export id 'e' is used twice"
    //   "mountpoint 'X' is used by export 'a' already"
    //   "export 'e': iothread 'x' does not exist"
    //   and block_export_create()'s (node, mountpoint, FUSE messages).
    Status add_export(const BlockExportOptions &opts);

    size_t export_count() const { return exports_.size(); }
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
        bool gone = false;        // went away on its own; reaped soon
    };
    void on_export_gone(BlockExport *e);
    static void reap_gone(void *opaque);
    void finish_export(Entry &e);

    const DaemonConfig &cfg_;
    GMainLoop *loop_;
    std::unique_ptr<BlockGraph> graph_;
    bool graph_used_ = false;
    std::vector<std::unique_ptr<IoThread>> iothreads_;
    std::vector<Entry> exports_;
    BottomHalf *reap_bh_ = nullptr;    // runs reap_gone()
    bool stop_requested_ = false;
    bool tearing_down_ = false;
};

// Runs setup and serves until stopped; see the file comment. Returns the
// process exit status (0, or 1 after printing the error); in a daemonized
// parent, returns once the child has reported.
int daemon_run(const DaemonConfig &cfg, const std::function<Status(Daemon &)> &setup);

// A path naming the same file as mountpoint, absolute, with the directory
// part resolved (realpath) but the last component not followed, so that it
// can be computed without touching a FUSE file we may be serving ourselves.
std::string canonical_mountpoint(const std::string &mountpoint);

} // namespace bg
