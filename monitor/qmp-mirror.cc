// monitor/qmp-mirror.cc -- QMP's blockdev-mirror: decodes QEMU's arguments
// into MirrorJobOptions and starts the job (block/mirror.cc).
#include "block/jobs.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-block.h"
#include "monitor/qmp-internal.h"

namespace bg {

namespace {

const std::vector<QmpMember> kMirrorArgs = {
    {"job-id", "str", true},
    {"device", "str", false},
    {"target", "str", false},
    {"replaces", "str", true},
    {"sync", "enum:top|full|none|incremental|bitmap", false},
    {"speed", "int", true},
    {"granularity", "int", true},
    {"buf-size", "int", true},
    {"on-source-error", "enum:report|ignore|enospc|stop|auto", true},
    {"on-target-error", "enum:report|ignore|enospc|stop|auto", true},
    {"filter-node-name", "str", true},
    {"copy-mode", "enum:background|write-blocking", true},
    {"auto-finalize", "bool", true},
    {"auto-dismiss", "bool", true},
    {"unmap", "bool", true},
};

QmpResult cmd_blockdev_mirror(QmpCall &call)
{
    const nlohmann::json &a = call.args;
    MirrorJobOptions o;
    Result<JobCommonOptions> common = qmp_job_common(a);
    if (!common) return qmp_error(common.error());
    o.common = common.value();
    o.device = qmp_str(a, "device");
    o.target = qmp_str(a, "target");
    o.replaces = qmp_str(a, "replaces");
    const std::string sync = qmp_str(a, "sync");
    if (sync == "incremental" || sync == "bitmap") return qmp_error("Sync mode '" + sync + "' not supported");
    o.sync = sync == "top" ? MirrorSync::kTop : sync == "none" ? MirrorSync::kNone : MirrorSync::kFull;
    if (a.contains("granularity")) o.granularity = a["granularity"].get<int64_t>();
    if (a.contains("buf-size")) o.buf_size = a["buf-size"].get<int64_t>();
    o.on_source_error = qmp_on_error(a, "on-source-error");
    o.on_target_error = qmp_on_error(a, "on-target-error");
    o.filter_node_name = qmp_str(a, "filter-node-name");
    if (qmp_str(a, "copy-mode") == "write-blocking") o.copy_mode = MirrorCopyMode::kWriteBlocking;
    if (a.contains("unmap")) o.unmap = a["unmap"].get<bool>();

    Result<BlockNode *> dev = qmp_find_node(call.daemon, o.device, o.device);
    if (!dev) return qmp_error(dev.error());
    // The device must be a root (QEMU's qmp_get_root_bs), the target any node.
    // (A node a job works on has the job as a parent in QEMU: not a root.)
    Status root = call.daemon.jobs().check_node_free(dev.value()).ok()
                      ? qmp_need_root(dev.value())
                      : Status(make_error(EINVAL, "Need a root block node"));
    if (!root.ok()) return qmp_error(root);
    Result<BlockNode *> tgt = qmp_find_node(call.daemon, o.target, o.target);
    if (!tgt) return qmp_error(tgt.error());
    Status st = call.daemon.check_no_bypass(dev.value());
    if (!st.ok()) return qmp_error(st);
    Result<Job *> j = blockdev_mirror_start(call.daemon.jobs(), call.daemon.graph(), o);
    if (!j) return qmp_error(j.error());
    return qmp_ok();
}

} // namespace

void qmp_mirror_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"blockdev-mirror", kMirrorArgs, false, "", cmd_blockdev_mirror});
}

} // namespace bg
