// monitor/qmp-control.cc -- QMP's control commands: qmp_capabilities (in
// the table for introspection; the session answers it), query-version,
// query-commands, query-qmp-schema, quit.
#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"
#include "util/log.h"

namespace bg {

namespace {

QmpResult cmd_qmp_capabilities(QmpCall &)
{
    // Reached only in command mode (the session handles negotiation).
    return qmp_error("Capabilities negotiation is already complete, command ignored", "CommandNotFound");
}

QmpResult cmd_query_version(QmpCall &) { return qmp_ok(qmp_version()); }

QmpResult cmd_query_commands(QmpCall &)
{
    nlohmann::json list = nlohmann::json::array();
    for (const QmpCommand &c : qmp_commands()) list.push_back({{"name", c.name}});
    return qmp_ok(list);
}

QmpResult cmd_query_qmp_schema(QmpCall &) { return qmp_ok(qmp_schema()); }

QmpResult cmd_quit(QmpCall &call)
{
    log_info("quit requested by a monitor");
    call.daemon.request_stop();
    return qmp_ok();
}

} // namespace

void qmp_control_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"qmp_capabilities", {{"enable", "[enum:oob]", true}}, false, "", cmd_qmp_capabilities});
    out->push_back({"query-version", {}, false, "object", cmd_query_version});
    out->push_back({"query-commands", {}, false, "[object]", cmd_query_commands});
    out->push_back({"query-qmp-schema", {}, false, "[object]", cmd_query_qmp_schema});
    out->push_back({"quit", {}, false, "", cmd_quit});
}

} // namespace bg
