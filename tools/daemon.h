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

#include "monitor/daemon-state.h"

namespace bg {

// Runs setup and serves until stopped; see the file comment. Returns the
// process exit status (0, or 1 after printing the error); in a daemonized
// parent, returns once the child has reported.
int daemon_run(const DaemonConfig &cfg, const std::function<Status(Daemon &)> &setup);

} // namespace bg
