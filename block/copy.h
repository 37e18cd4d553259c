// block/copy.h -- the copy engine: moves the data of one or more source
// backends into a destination backend, driven by block status, sparse and
// with several requests in flight.
//
// It is the common core of the jobs that copy data between images:
// `blockgraph img convert` (sources concatenated into a new image),
// `img commit` (an overlay's allocated data into its base), `img rebase`
// (the data an overlay loses when its backing file changes) and, later,
// the block jobs (commit, stream). It knows backends and nodes, never a
// tool.
//
// How a copy runs. The destination range [0, total) is cut into chunks in
// order. Planning a chunk asks the source for block status (through its
// backing chain down to CopySource::base, or of the top layer alone) and
// classifies it:
//   - skip  (not allocated where the options say unallocated data is left
//            alone, or allocated in CopyOptions::skip_allocated_in),
//   - zero  (reads as zeros: nothing is written when the destination reads
//            as zeros already, else write-zeroes),
//   - data  (read, then written; with sparse detection, aligned runs of at
//            least sparse_size zero bytes inside it are treated as zero).
// Up to max_workers coroutines each plan a chunk (planning is serialised),
// read it, and write it. Without out_of_order, writes happen in chunk order
// (a worker waits for the previous chunk's write before it writes), which
// keeps the destination's allocation sequential as qemu-img does; reads
// still overlap.
//
// Threading model: co_copy() is called from a coroutine of one thread. The
// workers run in that thread's AioContext, or spread over
// CopyOptions::contexts (e.g. iothreads), whose coroutines then issue
// requests on the same backends concurrently (the block layer allows
// requests from several threads; CPU-heavy driver work such as compression
// then runs on several cores). The sources must not change during the copy
// (the caller holds the permissions that ensure it).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "block/block.h"
#include "util/error.h"

namespace bg {

// One input. Sources are concatenated in order in the destination.
struct CopySource {
    BlockBackend *blk = nullptr;
    // Block status is asked through the backing chain down to (not
    // including) base; nullptr: the whole chain.
    BlockNode *base = nullptr;
    // Only the top layer's allocation counts: ranges it does not allocate
    // are skipped (their data comes from the destination's backing file).
    bool top_only = false;
    // With base == nullptr: ranges that no layer of the chain allocates are
    // skipped too (streaming a whole chain copies only allocated data).
    bool allocated_only = false;
    // Flags of the data reads (kReqCopyOnRead...).
    ReqFlags read_flags = 0;
    // Bytes of this source in the destination; -1: the backend's length.
    // Past the backend's end the source reads as zeros.
    int64_t length = -1;
    // Name for error messages (a file name).
    std::string name;
};

struct CopyProgress {
    int64_t done = 0;    // bytes of the destination range handled
    int64_t total = 0;   // bytes in the destination range
};

// What a copy does after an I/O error of a chunk (CopyOptions::on_error).
enum class CopyErrorAction {
    kFail,    // the copy fails with its message
    kRetry,   // the chunk is tried again (before_chunk is called first)
    kSkip,    // the chunk is left as it is and the copy goes on
};

struct CopyIoError {
    int64_t offset = 0;    // destination offset of the chunk
    int64_t bytes = 0;
    bool is_read = false;  // a source (or comparison) read, else a write
    int err = 0;           // positive errno
    std::string msg;       // the message a failure would report
};

struct CopyOptions {
    // Coroutines with a request in flight, 1..kCopyMaxWorkers.
    int max_workers = 8;
    // Writes may complete in any order (qemu-img convert -W). Without it,
    // each chunk is written after the previous one completed, except with
    // compress, where a write includes the compression and chunks are
    // written as soon as they are read so that compression runs in
    // parallel (compressed clusters are appended to the image anyway).
    bool out_of_order = false;
    // Bytes per chunk (rounded to alignment). 0: 2 MiB.
    int64_t chunk_size = 0;
    // Chunk boundaries are cut at multiples of this where the status allows
    // (the destination's cluster size; compressed copies need it). 1: none.
    int64_t alignment = 1;
    // Minimum run of zero bytes (multiple of 512) inside read data that is
    // not written as data; 0: sparse detection off, and zero ranges are
    // written as data too (fully allocated destination).
    int64_t sparse_size = 4096;
    // With sparse_size > 0: false writes data ranges as read, without
    // looking for zeros in them (zero ranges of the block status are still
    // zero writes): what QEMU's commit (a mirror job) does.
    bool scan_data_for_zeroes = true;
    // The destination reads as zeros everywhere before the copy (a freshly
    // created image without backing file): zero ranges need no write.
    bool dest_is_zero = false;
    // Writes use kReqWriteCompressed, one request per aligned chunk.
    bool compress = false;
    // Ranges allocated in this node's top layer are skipped (rebase: the
    // overlay's own data stays).
    BlockNode *skip_allocated_in = nullptr;
    // Only data that differs from what this backend reads at the same
    // destination offset is written (rebase onto a new backing file; past
    // its end it reads as zeros). Compared in 512-byte sectors.
    BlockBackend *diff_against = nullptr;
    // The same against all zeros (rebase onto no backing file: the overlay
    // must then hold every non-zero byte). Ignored if diff_against is set.
    bool diff_against_zeros = false;
    // Contexts the workers run in, round robin; empty: the caller's.
    std::vector<AioContext *> contexts;
    // Bytes per second of data chunks (read and written), 0: no limit
    // (qemu-img convert -r, commit -r). Zero and skipped ranges are free.
    // The first chunk goes at once; each later one waits until the bytes
    // before it are paid for (util/ratelimit.h).
    uint64_t rate_limit = 0;
    // A source read that fails is retried sector by sector (512 bytes);
    // sectors that still fail are copied as zeros and reported through
    // salvaged (destination offset, positive errno) instead of failing the
    // copy (qemu-img convert --salvage). Block status errors still fail.
    bool salvage = false;
    std::function<void(int64_t offset, int err)> salvaged;
    // Called after each chunk (and at the end), serialised, from whichever
    // thread completed the chunk.
    std::function<void(const CopyProgress &)> progress;

    // ---- for the block jobs (block/commit.cc, block/stream.cc). The hooks
    // run in the worker coroutines; with max_workers 1 and no contexts the
    // one worker is the caller's coroutine itself, so the hooks may call
    // helpers that must run there (a job's pause points).
    // Called before each chunk is issued, with the bytes it will read as
    // data (0 for zero and skipped ranges, and for a retry); may yield (a
    // pause point, a speed limit). A negative errno stops the copy with
    // that error (-ECANCELED: "Operation canceled").
    std::function<int(int64_t data_bytes)> before_chunk;
    // Decides what an I/O error of a chunk leads to; may yield (a job
    // stopped on error waits here for its resume). Unset: kFail.
    std::function<CopyErrorAction(const CopyIoError &)> on_error;
    // Data chunks are read only, never written: the reads do the work
    // (through a copy-on-read filter with CopySource::read_flags). dst may
    // then be nullptr; zero ranges are read like data.
    bool read_only = false;
};

constexpr int kCopyMaxWorkers = 16;

struct CopyStats {
    int64_t bytes_read = 0;      // read from the sources
    int64_t bytes_written = 0;   // written as data
    int64_t bytes_zeroed = 0;    // written with write-zeroes
    int64_t bytes_skipped = 0;   // left alone (zero in a zero destination, unallocated, equal)
    int64_t bytes_salvaged = 0;  // unreadable, copied as zeros (salvage)
};

// Copies the concatenated sources into dst from offset 0. dst must be at
// least as long as the sources together (unless read_only). Yields; runs the workers as
// coroutines of the current AioContext and returns when all are done.
// Errors (nothing more is started after the first; requests in flight
// finish):
//   "error while reading block status at byte N of 'NAME': <strerror>"
//   "error while reading at byte N of 'NAME': <strerror>"
//   "error while writing at byte N of 'NAME': <strerror>" (NAME: the
//   destination node's file name)
//   EINVAL for bad options (workers, sizes) or a destination too short.
Result<CopyStats> coroutine_fn co_copy(const std::vector<CopySource> &sources, BlockBackend *dst,
                                       const CopyOptions &opts);

// Synchronous wrapper (run_in_coroutine). REQUIRES AioContext::current().
Result<CopyStats> copy_sync(const std::vector<CopySource> &sources, BlockBackend *dst, const CopyOptions &opts);

// Helpers shared by the jobs built on the engine.
// Length of the leading run of 512-byte sectors of buf (len bytes) that are
// equal (*same = true) or different (*same = false) between a and b.
int64_t compare_sectors(const uint8_t *a, const uint8_t *b, int64_t len, bool *same);

} // namespace bg
