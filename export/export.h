// Block exports: consumers that show a graph node to the outside world
// (FUSE now; NBD and others later). An export holds a BlockBackend on its
// node and never reaches into a driver.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "qapi/export-options.h"
#include "util/error.h"
#include "util/iothread.h"

namespace bg {

// Counters per export (issue 4; used by --stats and SIGUSR1).
struct ExportStats {
    uint64_t requests[8] = {};       // by kind, see ExportStats::kind_name
    uint64_t bytes_read = 0;
    uint64_t bytes_written = 0;
    uint64_t errors = 0;
    uint64_t coroutine_switches = 0; // in the threads serving this export
    uint64_t io_submissions = 0;     // io_uring SQEs (or pool jobs)
    uint64_t io_enters = 0;          // io_uring_enter system calls
    uint64_t fuse_reads = 0;         // read(2)/readv(2) calls on /dev/fuse that returned a request
                                     // (stats_text shows fuse_reads + ring_fetches: requests received)
    uint64_t ring_fetches = 0;       // requests that came through FUSE-over-io_uring
    uint64_t ring_enters = 0;        // io_uring_enter calls on the FUSE rings (not in io_enters)
    uint64_t wakeups = 0;            // fd-handler invocations
    // Of the serving threads (shared with anything else they serve):
    uint64_t io_inline = 0;          // page-cache transfers done in the thread (IoBackend inline_if_idle)
    uint64_t loop_poll_hits = 0;     // loop waits that ended while polling (AioContext::poll_hits)
    uint64_t loop_sleeps = 0;        // loop waits that slept (AioContext::poll_sleeps)
    enum Kind { kRead, kWrite, kFlush, kGetattr, kSetattr, kFallocate, kLseek, kOther };
    static const char *kind_name(int k);
};

class BlockExport {
  public:
    virtual ~BlockExport() = default;
    const std::string &id() const { return id_; }
    const std::string &type() const { return type_; }
    // Stops taking requests, finishes those in flight, flushes, and
    // releases the outside resource (unmounts). Idempotent. Main thread;
    // in a coroutine it yields while waiting, outside one it runs the loop.
    virtual void shutdown() = 0;
    virtual ExportStats stats() const = 0;
    // True if the outside world may reach the node's host file without
    // going through the graph (FUSE passthrough): then nothing under the
    // export's node may be replaced or reopened while the export exists.
    virtual bool bypasses_graph() const { return false; }
    // block-export-del mode=safe: an error if deleting now would cut off
    // clients (NBD: "export 'e' still in use"); ok by default.
    virtual Status check_safe_delete() const { return {}; }
    // block-export-del mode=hard: disconnects clients before shutdown()
    // (NBD); nothing by default.
    virtual void drop_clients() {}
    // The node the export shows now (a graph change such as
    // blockdev-snapshot may have moved it); nullptr once shut down.
    virtual BlockNode *node() const = 0;
    // One human-readable paragraph describing the export and its counters.
    virtual std::string stats_text() const = 0;

  protected:
    std::string id_;
    std::string type_;
};

// Called in the main loop when an export went away on its own (e.g. an
// external "fusermount3 -u"); the export has shut down already.
using ExportGoneFn = std::function<void(BlockExport *)>;

// Creates an export of the given type. iothreads are the threads named by
// opts.iothreads, resolved by the caller (empty: main loop). On failure
// nothing stays mounted or attached.
Result<std::unique_ptr<BlockExport>> block_export_create(BlockGraph &graph, const BlockExportOptions &opts,
                                                         const std::vector<IoThread *> &iothreads,
                                                         ExportGoneFn on_gone);

} // namespace bg
