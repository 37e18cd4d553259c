// monitor/qmp-commit.cc -- the QMP commands that start the commit and
// stream jobs (block-commit, block-stream): QEMU's arguments decoded into
// block/jobs.h's options; the jobs themselves are block/commit.cc and
// block/stream.cc, their control the job commands (qmp-job.cc).
#include <cerrno>

#include "block/jobs.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-block.h"

namespace bg {

namespace {

const char *const kOnError = "enum:report|ignore|enospc|stop|auto";

QmpResult cmd_block_commit(QmpCall &call)
{
    const nlohmann::json &a = call.args;
    CommitJobOptions o;
    Result<JobCommonOptions> common = qmp_job_common(a);
    if (!common) return qmp_error(common.error());
    o.common = common.value();
    o.device = qmp_str(a, "device");
    o.top_node = qmp_str(a, "top-node");
    o.base_node = qmp_str(a, "base-node");
    o.top = qmp_str(a, "top");
    o.base = qmp_str(a, "base");
    if (a.contains("backing-file")) o.backing_file = a["backing-file"].get<std::string>();
    o.backing_mask_protocol = a.value("backing-mask-protocol", false);
    o.on_error = qmp_on_error(a, "on-error");
    o.filter_node_name = qmp_str(a, "filter-node-name");
    // The node the filter goes above must not be bypassed by an export.
    if (BlockNode *dev = call.daemon.graph().find(o.device)) {
        BlockNode *top = o.top_node.empty() ? dev : call.daemon.graph().find(o.top_node);
        if (top) {
            Status st = call.daemon.check_no_bypass(top);
            if (!st.ok()) return qmp_error(st);
        }
    }
    Result<Job *> j = block_commit_start(call.daemon.jobs(), call.daemon.graph(), o);
    if (!j) return qmp_error(j.msg(), j.error().err == ENODEV ? "DeviceNotFound" : "GenericError");
    return qmp_ok();
}

QmpResult cmd_block_stream(QmpCall &call)
{
    const nlohmann::json &a = call.args;
    StreamJobOptions o;
    Result<JobCommonOptions> common = qmp_job_common(a);
    if (!common) return qmp_error(common.error());
    o.common = common.value();
    o.device = qmp_str(a, "device");
    o.base = qmp_str(a, "base");
    o.base_node = qmp_str(a, "base-node");
    o.bottom = qmp_str(a, "bottom");
    if (a.contains("backing-file")) o.backing_file = a["backing-file"].get<std::string>();
    o.backing_mask_protocol = a.value("backing-mask-protocol", false);
    o.on_error = qmp_on_error(a, "on-error");
    o.filter_node_name = qmp_str(a, "filter-node-name");
    if (BlockNode *dev = call.daemon.graph().find(o.device)) {
        Status st = call.daemon.check_no_bypass(dev);
        if (!st.ok()) return qmp_error(st);
    }
    Result<Job *> j = block_stream_start(call.daemon.jobs(), call.daemon.graph(), o);
    if (!j) return qmp_error(j.error());
    return qmp_ok();
}

} // namespace

void qmp_commit_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"block-commit",
                    {{"job-id", "str", true},
                     {"device", "str", false},
                     {"base-node", "str", true},
                     {"base", "str", true},
                     {"top-node", "str", true},
                     {"top", "str", true},
                     {"backing-file", "str", true},
                     {"backing-mask-protocol", "bool", true},
                     {"speed", "int", true},
                     {"on-error", kOnError, true},
                     {"filter-node-name", "str", true},
                     {"auto-finalize", "bool", true},
                     {"auto-dismiss", "bool", true}},
                    false,
                    "",
                    cmd_block_commit});
    out->push_back({"block-stream",
                    {{"job-id", "str", true},
                     {"device", "str", false},
                     {"base", "str", true},
                     {"base-node", "str", true},
                     {"backing-file", "str", true},
                     {"backing-mask-protocol", "bool", true},
                     {"bottom", "str", true},
                     {"speed", "int", true},
                     {"on-error", kOnError, true},
                     {"filter-node-name", "str", true},
                     {"auto-finalize", "bool", true},
                     {"auto-dismiss", "bool", true}},
                    false,
                    "",
                    cmd_block_stream});
}

} // namespace bg
