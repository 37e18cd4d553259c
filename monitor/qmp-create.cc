// monitor/qmp-create.cc -- blockdev-create: starts a "create" job
// (block/create-job.cc) that makes an image from QEMU's
// BlockdevCreateOptions. The options' schema errors are the command's;
// what goes wrong while creating is the job's (query-jobs "error").
#include "block/jobs.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"

namespace bg {

namespace {

QmpResult qmp_blockdev_create(QmpCall &call)
{
    // "options" is checked member by member by the start function, with
    // QEMU's paths ("options.size").
    auto job = blockdev_create_start(call.daemon.jobs(), call.daemon.graph(), call.args["job-id"].get<std::string>(),
                                     call.args["options"]);
    if (!job) return qmp_error(job.error().qemu_text());
    return qmp_ok();
}

} // namespace

void qmp_create_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"blockdev-create", {{"job-id", "str", false}, {"options", "object", false}}, false, "",
                    qmp_blockdev_create});
}

} // namespace bg
