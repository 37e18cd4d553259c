// The NBD server (export/nbd/): one process-wide server that listens on a
// socket address, and exports of type "nbd" registered in it by name.
// Users' documentation: docs/nbd.md.
//
// Threading model: main thread only; the server and its exports serve
// every connection in the main loop (an export's "iothread" is accepted
// and not used).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "export/export.h"
#include "qapi/export-options.h"

namespace bg {

// nbd-server-start / --nbd-server: opens the listening socket. Errors, in
// QEMU's words: "NBD server already running", "No TLS credentials with id
// 'X'", "Expecting TLS credentials with a server endpoint" (a client
// object), socket_listen()'s ("Failed to bind socket to PATH: ..."). Over
// TCP without tls-creds a warning goes to the log (stderr) at start-up.
Status nbd_server_start(const NbdServerOptions &opts);
bool nbd_server_running();
// nbd-server-stop: closes the listener and drops every connection (the
// exports stay registered; the daemon deletes its NBD exports first).
// Error: "NBD server not running". Outside a coroutine it runs the loop
// while connections end; in one it yields.
Status nbd_server_stop();
// Connections currently open (negotiating or transmitting).
size_t nbd_server_client_count();
// Called in the main loop whenever a connection ends, with the count of
// connections still open and whether the one that ended had reached
// transmission (qemu-nbd without --persistent exits when a negotiated
// client leaves none behind). Empty: none.
using NbdClientHook = std::function<void(size_t open, bool negotiated)>;
void nbd_server_set_client_hook(NbdClientHook fn);
// Serves an already connected socket as one more client (takes fd).
// REQUIRES nbd_server_running().
void nbd_server_serve_fd(int fd);

// block-export-add type=nbd: "NBD server not running" without a server;
// "NBD server already has export named 'X'"; "export name 'X' too long";
// "description 'X' too long"; "Bitmap 'B' is not found" (a name) / "Dirty
// bitmap 'B' not found" (a node/name pair); "Enabled bitmap 'B'
// incompatible with readonly export"; the node's permission conflicts.
Result<std::unique_ptr<BlockExport>> nbd_export_create(BlockGraph &graph, const BlockExportOptions &opts);

} // namespace bg
