// monitor/qmp-job.cc -- QMP's job control: query-jobs, query-block-jobs,
// job-pause|resume|cancel|complete|finalize|dismiss and their block-job-*
// counterparts, block-job-set-speed, block-job-change. The jobs themselves
// (block/job.h) check the verbs; the commands that start jobs live with
// each job's arguments (qmp-commit.cc, qmp-mirror.cc, ...).
#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"

namespace bg {

namespace {

QmpResult to_result(const Status &st) { return st.ok() ? qmp_ok() : qmp_error(st); }

// job-* commands name any job; an unknown id is "Job not found".
Job *find_job(QmpCall &call, QmpResult *err)
{
    const std::string id = call.args["id"].get<std::string>();
    Job *j = call.daemon.jobs().find(id);
    if (!j) *err = qmp_error("Job not found");
    return j;
}

// block-job-* commands name block jobs by "device" (the job id) or "id";
// an unknown one is DeviceNotActive.
Job *find_block_job(QmpCall &call, const char *key, QmpResult *err)
{
    const std::string id = call.args[key].get<std::string>();
    Job *j = call.daemon.jobs().find(id);
    if (!j || !j->is_block_job()) {
        *err = qmp_error("Block job '" + id + "' not found", "DeviceNotActive");
        return nullptr;
    }
    return j;
}

QmpResult cmd_query_jobs(QmpCall &call)
{
    nlohmann::json list = nlohmann::json::array();
    for (Job *j : call.daemon.jobs().jobs()) list.push_back(j->query_job());
    return qmp_ok(list);
}

QmpResult cmd_query_block_jobs(QmpCall &call)
{
    nlohmann::json list = nlohmann::json::array();
    for (Job *j : call.daemon.jobs().jobs()) {
        if (j->is_block_job()) list.push_back(j->query_block_job());
    }
    return qmp_ok(list);
}

// job-VERB {id}
template <Status (Job::*Verb)()>
QmpResult cmd_job_verb(QmpCall &call)
{
    QmpResult err;
    Job *j = find_job(call, &err);
    if (!j) return err;
    return to_result((j->*Verb)());
}

QmpResult cmd_job_cancel(QmpCall &call)
{
    QmpResult err;
    Job *j = find_job(call, &err);
    if (!j) return err;
    return to_result(j->cancel(true));   // job-cancel always forces
}

// block-job-VERB {KEY}
template <Status (Job::*Verb)(), const char *Key>
QmpResult cmd_block_job_verb(QmpCall &call)
{
    QmpResult err;
    Job *j = find_block_job(call, Key, &err);
    if (!j) return err;
    return to_result((j->*Verb)());
}

QmpResult cmd_block_job_cancel(QmpCall &call)
{
    QmpResult err;
    Job *j = find_block_job(call, "device", &err);
    if (!j) return err;
    bool force = call.args.value("force", false);
    if (j->user_paused() && !force) {
        return qmp_error("The block job for device '" + j->id() + "' is currently paused");
    }
    return to_result(j->cancel(force));
}

QmpResult cmd_block_job_set_speed(QmpCall &call)
{
    QmpResult err;
    Job *j = find_block_job(call, "device", &err);
    if (!j) return err;
    return to_result(j->set_speed(call.args["speed"].get<int64_t>()));
}

QmpResult cmd_block_job_change(QmpCall &call)
{
    QmpResult err;
    Job *j = find_block_job(call, "id", &err);
    if (!j) return err;
    const std::string type = call.args["type"].get<std::string>();
    if (type != j->type()) {
        return qmp_error("Job type does not match specified type '" + type + "'");
    }
    nlohmann::json opts = call.args;
    opts.erase("id");
    opts.erase("type");
    return to_result(j->change(opts));
}

constexpr char kDevice[] = "device";
constexpr char kId[] = "id";

} // namespace

Result<JobCommonOptions> qmp_job_common(const nlohmann::json &a)
{
    JobCommonOptions c;
    c.id = a.value("job-id", std::string());
    c.speed = a.value("speed", int64_t{0});
    if (c.speed < 0) return make_error(EINVAL, "Parameter 'speed' expects a non-negative value");
    c.auto_finalize = a.value("auto-finalize", true);
    c.auto_dismiss = a.value("auto-dismiss", true);
    return c;
}

BlockdevOnError qmp_on_error(const nlohmann::json &a, const char *key)
{
    BlockdevOnError e = BlockdevOnError::kReport;
    if (a.contains(key)) (void)parse_on_error(a[key].get<std::string>(), &e);
    return e;
}

void qmp_job_commands(std::vector<QmpCommand> *out)
{
    const std::vector<QmpMember> id = {{"id", "str", false}};
    const std::vector<QmpMember> device = {{"device", "str", false}};
    out->push_back({"query-jobs", {}, false, "[object]", cmd_query_jobs});
    out->push_back({"query-block-jobs", {}, false, "[object]", cmd_query_block_jobs});
    out->push_back({"job-pause", id, false, "", cmd_job_verb<&Job::pause>});
    out->push_back({"job-resume", id, false, "", cmd_job_verb<&Job::resume>});
    out->push_back({"job-cancel", id, false, "", cmd_job_cancel});
    out->push_back({"job-complete", id, false, "", cmd_job_verb<&Job::complete>});
    out->push_back({"job-finalize", id, false, "", cmd_job_verb<&Job::finalize>});
    out->push_back({"job-dismiss", id, false, "", cmd_job_verb<&Job::dismiss>});
    out->push_back({"block-job-pause", device, false, "", cmd_block_job_verb<&Job::pause, kDevice>});
    out->push_back({"block-job-resume", device, false, "", cmd_block_job_verb<&Job::resume, kDevice>});
    out->push_back({"block-job-cancel", {{"device", "str", false}, {"force", "bool", true}}, false, "",
                    cmd_block_job_cancel});
    out->push_back({"block-job-complete", device, false, "", cmd_block_job_verb<&Job::complete, kDevice>});
    out->push_back({"block-job-finalize", id, false, "", cmd_block_job_verb<&Job::finalize, kId>});
    out->push_back({"block-job-dismiss", id, false, "", cmd_block_job_verb<&Job::dismiss, kId>});
    out->push_back({"block-job-set-speed", {{"device", "str", false}, {"speed", "int", false}}, false, "",
                    cmd_block_job_set_speed});
    out->push_back({"block-job-change",
                    {{"id", "str", false}, {"type", "enum:commit|stream|mirror|backup|create", false},
                     {"copy-mode", "enum:background|write-blocking", true}},
                    false, "", cmd_block_job_change});
}

} // namespace bg
