// block/jobs.h -- the block jobs' start functions: QEMU's block-commit,
// block-stream, blockdev-mirror, blockdev-backup and blockdev-create, with
// their arguments as plain data (the monitor decodes QMP into these).
//
// Each start function checks its arguments against the graph (QEMU's
// texts), builds its job (block/job.h), inserts its filter nodes, adds the
// job to the manager and, unless told otherwise, starts it. On failure it
// leaves the graph as it was and no job exists.
//
// Threading model: main loop, outside the nodes' requests; may be called
// from a QMP coroutine (they drain nodes and change the graph; graph
// changes that must not run in a coroutine are deferred to the job).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "block/job.h"
#include "util/error.h"

namespace bg {

class BlockGraph;
class BlockNode;

// block-commit (block/commit.cc; active commit runs on mirror's code).
struct CommitJobOptions {
    JobCommonOptions common;
    std::string device;                 // a root node
    std::string top_node, base_node;    // empty: the active layer / the bottom of the chain
    std::string top, base;              // deprecated: file names in the chain
    std::optional<std::string> backing_file;
    bool backing_mask_protocol = false;
    BlockdevOnError on_error = BlockdevOnError::kReport;
    std::string filter_node_name;       // the commit_top / mirror_top filter's; empty: automatic
};
Result<Job *> block_commit_start(JobManager &mgr, BlockGraph &graph, const CommitJobOptions &opts);

// block-stream (block/stream.cc).
struct StreamJobOptions {
    JobCommonOptions common;
    std::string device;                 // any node
    std::string base, base_node, bottom;   // at most one
    std::optional<std::string> backing_file;
    bool backing_mask_protocol = false;
    BlockdevOnError on_error = BlockdevOnError::kReport;
    std::string filter_node_name;       // the copy-on-read filter's
};
Result<Job *> block_stream_start(JobManager &mgr, BlockGraph &graph, const StreamJobOptions &opts);

// blockdev-mirror (block/mirror.cc).
enum class MirrorSync { kTop, kFull, kNone };
enum class MirrorCopyMode { kBackground, kWriteBlocking };
struct MirrorJobOptions {
    JobCommonOptions common;
    std::string device, target;
    std::string replaces;               // empty: device below its implicit filters
    MirrorSync sync = MirrorSync::kFull;
    int64_t granularity = 0;            // 0: the target's cluster size in [4 KiB, 64 KiB], else 64 KiB
    int64_t buf_size = 0;               // 0: 16 MiB
    MirrorCopyMode copy_mode = MirrorCopyMode::kBackground;
    BlockdevOnError on_source_error = BlockdevOnError::kReport;
    BlockdevOnError on_target_error = BlockdevOnError::kReport;
    std::string filter_node_name;       // the mirror_top filter's
    bool unmap = true;
};
Result<Job *> blockdev_mirror_start(JobManager &mgr, BlockGraph &graph, const MirrorJobOptions &opts);
// Active commit: block_commit_start() calls it when top is the active layer
// (after its own argument checks): mirrors top (and what lies between it
// and base) into base; ready when in sync; job-complete switches every
// parent of top to base. Job type "commit".
Result<Job *> mirror_active_commit_start(JobManager &mgr, BlockGraph &graph, const CommitJobOptions &opts,
                                         BlockNode *top, BlockNode *base);

// blockdev-backup (block/backup.cc, with the copy-before-write filter).
enum class BackupSync { kFull, kTop, kNone, kBitmap, kIncremental };
enum class BitmapSyncMode { kOnSuccess, kNever, kAlways };
struct BackupJobOptions {
    JobCommonOptions common;
    std::string device, target;
    BackupSync sync = BackupSync::kFull;
    std::string bitmap;                 // empty: none
    std::optional<BitmapSyncMode> bitmap_mode;
    bool compress = false;
    BlockdevOnError on_source_error = BlockdevOnError::kReport;
    BlockdevOnError on_target_error = BlockdevOnError::kReport;
    std::string filter_node_name;
    bool discard_source = false;
    int max_workers = 64;               // x-perf
    int64_t max_chunk = 0;
    int64_t min_cluster_size = 0;
};
// txn: the transaction the job joins (grouped completion); start=false
// leaves it created (a transaction starts it once every action succeeded,
// or calls early_fail()).
Result<Job *> blockdev_backup_start(JobManager &mgr, BlockGraph &graph, const BackupJobOptions &opts,
                                    const std::shared_ptr<JobTxn> &txn = nullptr, bool start = true);

// blockdev-create (block/create-job.cc): options is QEMU's
// BlockdevCreateOptions tree ({"driver": "qcow2", "file": NODE, "size": N, ...}).
// Not a block job: only JOB_STATUS_CHANGE events; auto-dismiss off.
Result<Job *> blockdev_create_start(JobManager &mgr, BlockGraph &graph, const std::string &job_id,
                                    const nlohmann::json &options);

} // namespace bg
