// block/mirror.cc -- placeholder until the mirror job lands (this session).
#include <cerrno>

#include "block/jobs.h"

namespace bg {

Result<Job *> blockdev_mirror_start(JobManager &, BlockGraph &, const MirrorJobOptions &)
{
    return make_error(ENOTSUP, "blockdev-mirror is not available");
}

Result<Job *> mirror_active_commit_start(JobManager &, BlockGraph &, const CommitJobOptions &, BlockNode *,
                                         BlockNode *)
{
    return make_error(ENOTSUP, "active commit is not available");
}

} // namespace bg
