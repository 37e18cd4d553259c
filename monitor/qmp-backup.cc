// monitor/qmp-backup.cc -- blockdev-backup: decodes QEMU's BlockdevBackup
// arguments into BackupJobOptions (block/jobs.h) and starts the job; the
// same decoding serves the transaction action (monitor/qmp-graph.cc),
// which creates the job unstarted in its transaction.
#include "block/jobs.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-block.h"
#include "monitor/qmp-internal.h"

namespace bg {

const std::vector<QmpMember> &qmp_backup_args()
{
    static const std::vector<QmpMember> args = {
        {"job-id", "str", true},
        {"device", "str", false},
        {"target", "str", false},
        {"sync", "enum:top|full|none|incremental|bitmap", false},
        {"speed", "int", true},
        {"bitmap", "str", true},
        {"bitmap-mode", "enum:on-success|never|always", true},
        {"compress", "bool", true},
        {"on-source-error", "enum:report|ignore|enospc|stop|auto", true},
        {"on-target-error", "enum:report|ignore|enospc|stop|auto", true},
        {"auto-finalize", "bool", true},
        {"auto-dismiss", "bool", true},
        {"filter-node-name", "str", true},
        {"discard-source", "bool", true},
        {"x-perf", "object", true},
    };
    return args;
}

Result<Job *> qmp_backup_create(Daemon &d, const nlohmann::json &a, const std::shared_ptr<JobTxn> &txn, bool start)
{
    BackupJobOptions o;
    BG_TRY_ASSIGN(o.common, qmp_job_common(a));
    o.device = qmp_str(a, "device");
    o.target = qmp_str(a, "target");
    const std::string sync = qmp_str(a, "sync");
    o.sync = sync == "full" ? BackupSync::kFull
             : sync == "top" ? BackupSync::kTop
             : sync == "none" ? BackupSync::kNone
             : sync == "bitmap" ? BackupSync::kBitmap
                                : BackupSync::kIncremental;
    o.bitmap = qmp_str(a, "bitmap");
    if (a.contains("bitmap-mode")) {
        const std::string m = a["bitmap-mode"].get<std::string>();
        o.bitmap_mode = m == "never" ? BitmapSyncMode::kNever
                        : m == "always" ? BitmapSyncMode::kAlways
                                        : BitmapSyncMode::kOnSuccess;
    }
    o.compress = a.value("compress", false);
    o.on_source_error = qmp_on_error(a, "on-source-error");
    o.on_target_error = qmp_on_error(a, "on-target-error");
    o.filter_node_name = qmp_str(a, "filter-node-name");
    o.discard_source = a.value("discard-source", false);
    if (a.contains("x-perf")) {
        const nlohmann::json &p = a["x-perf"];
        BG_TRY(qmp_check_args({{"use-copy-range", "bool", true},
                               {"max-workers", "int", true},
                               {"max-chunk", "int", true},
                               {"min-cluster-size", "int", true}},
                              false, p, "x-perf."));
        o.max_workers = static_cast<int>(std::clamp<int64_t>(p.value("max-workers", int64_t(64)), -1, INT32_MAX));
        o.max_chunk = p.value("max-chunk", int64_t(0));
        o.min_cluster_size = p.value("min-cluster-size", int64_t(0));
        if (o.min_cluster_size < 0) return make_error(EINVAL, "Parameter 'x-perf.min-cluster-size' expects a size");
    }
    if (BlockNode *n = d.graph().find(o.device)) BG_TRY(d.check_no_bypass(n));
    return blockdev_backup_start(d.jobs(), d.graph(), o, txn, start);
}

namespace {

QmpResult cmd_blockdev_backup(QmpCall &call)
{
    Result<Job *> j = qmp_backup_create(call.daemon, call.args, nullptr, true);
    if (!j) return qmp_error(j.error());
    return qmp_ok();
}

} // namespace

void qmp_backup_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"blockdev-backup", qmp_backup_args(), false, "", cmd_blockdev_backup});
}

} // namespace bg
