// monitor/qmp-export.cc -- exports and objects: block-export-add,
// block-export-del, query-block-exports, object-add, object-del,
// query-iothreads. The same Daemon methods serve --export and --object.
#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"
#include "monitor/qmp-block.h"
#include "qapi/export-parse.h"

namespace bg {

namespace {

QmpResult cmd_block_export_add(QmpCall &call)
{
    Result<BlockExportOptions> o = export_options_from_tree(call.args, false);
    if (!o) return qmp_error(qmp_option_error(o.msg()));
    Result<BlockNode *> n = qmp_find_node(call.daemon, "", o.value().node_name);
    if (!n) return qmp_error(n.error());
    Status st = call.daemon.add_export(o.value());
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_block_export_del(QmpCall &call)
{
    const std::string id = call.args["id"].get<std::string>();
    const bool hard = call.args.value("mode", std::string("safe")) == "hard";
    Status st = call.daemon.del_export(id, hard);
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_query_block_exports(QmpCall &call)
{
    nlohmann::json list = nlohmann::json::array();
    for (const Daemon::ExportInfo &e : call.daemon.exports()) {
        list.push_back({{"id", e.id}, {"type", e.type}, {"node-name", e.node_name}, {"shutting-down", e.shutting_down}});
    }
    return qmp_ok(list);
}

QmpResult cmd_object_add(QmpCall &call)
{
    const std::string type = call.args["qom-type"].get<std::string>();
    if (type != "iothread") return qmp_error("Invalid parameter 'qom-type': object type '" + type + "' is not supported");
    Result<IoThreadOptions> o = object_options_from_tree(call.args, false);
    if (!o) return qmp_error(qmp_option_error(o.msg()));
    Status st = call.daemon.add_iothread(o.value());
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_object_del(QmpCall &call)
{
    Status st = call.daemon.del_iothread(call.args["id"].get<std::string>());
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_query_iothreads(QmpCall &call)
{
    nlohmann::json list = nlohmann::json::array();
    for (const Daemon::IoThreadInfo &t : call.daemon.iothreads()) {
        const int64_t max = t.opts.poll.max_ns ? static_cast<int64_t>(*t.opts.poll.max_ns) : AioContext::kDefaultPollMaxNs;
        list.push_back({{"id", t.id},
                        {"thread-id", t.thread_id},
                        {"poll-max-ns", max},
                        {"poll-grow", static_cast<int64_t>(t.opts.poll.grow)},
                        {"poll-shrink", static_cast<int64_t>(t.opts.poll.shrink)},
                        {"aio-max-batch", 0}});
    }
    return qmp_ok(list);
}

} // namespace

void qmp_export_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"block-export-add",
                    {{"type", "enum:fuse", false}, {"id", "str", false}, {"node-name", "str", false},
                     {"writable", "bool", true}, {"writethrough", "bool", true}, {"iothread", "any", true},
                     {"fixed-iothread", "bool", true}, {"allow-inactive", "bool", true}, {"mountpoint", "str", true},
                     {"growable", "bool", true}, {"allow-other", "enum:on|off|auto", true},
                     {"io-uring", "any", true}, {"passthrough", "any", true}},
                    false, "", cmd_block_export_add});
    out->push_back({"block-export-del", {{"id", "str", false}, {"mode", "enum:safe|hard", true}}, false, "",
                    cmd_block_export_del});
    out->push_back({"query-block-exports", {}, false, "[object]", cmd_query_block_exports});
    out->push_back({"object-add", {{"qom-type", "str", false}, {"id", "str", false}}, true, "", cmd_object_add});
    out->push_back({"object-del", {{"id", "str", false}}, false, "", cmd_object_del});
    out->push_back({"query-iothreads", {}, false, "[object]", cmd_query_iothreads});
}

} // namespace bg
