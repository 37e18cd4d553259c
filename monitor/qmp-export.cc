// monitor/qmp-export.cc -- exports and objects: block-export-add,
// block-export-del, query-block-exports, object-add, object-del,
// query-iothreads. The same Daemon methods serve --export and --object.
#include "export/nbd.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"
#include "monitor/qmp-block.h"
#include "qapi/export-parse.h"
#include "qapi/tls-object.h"
#include "qapi/user-object.h"

namespace bg {

namespace {

// The text after "what 'x': " in msg if it has that shape, else "".
std::string after_prefix(const std::string &msg, const std::string &what)
{
    if (msg.rfind(what + " '", 0) != 0) return "";
    size_t q = msg.find("': ", what.size() + 2);
    return q == std::string::npos ? "" : msg.substr(q + 3);
}

// Our export messages (shared with --export) in QEMU's words.
std::string export_error(const std::string &msg)
{
    std::string rest = after_prefix(msg, "export");
    if (rest.rfind("invalid id", 0) == 0) return "Invalid block export id";
    if (rest.rfind("iothread '", 0) == 0 && rest.find("' does not exist") != std::string::npos) {
        return "iothread \"" + rest.substr(10, rest.find("' does not exist") - 10) + "\" not found";
    }
    if (rest.rfind("mountpoint '", 0) == 0) {
        size_t q = rest.find("': ", 12);
        if (q != std::string::npos) return "Failed to stat '" + rest.substr(12, q - 12) + "': " + rest.substr(q + 3);
    }
    if (msg.rfind("mountpoint '", 0) == 0 && msg.find("' is used by export") != std::string::npos) {
        return "There already is a FUSE export on '" + msg.substr(12, msg.find("' is used by export") - 12) + "'";
    }
    return qmp_option_error(msg);
}

// Our --object messages in QEMU's words.
std::string object_error(const std::string &msg)
{
    std::string rest = after_prefix(msg, "object");
    if (rest.rfind("invalid id", 0) == 0) return "Parameter 'id' expects an identifier";
    size_t one_of = rest.find("' is not one of: ");
    if (one_of != std::string::npos && rest.find(": '") != std::string::npos) {
        // "endpoint: 'foo' is not one of: server, client"
        size_t colon = rest.find(": '");
        return "Parameter '" + rest.substr(0, colon) + "' does not accept value '" +
               rest.substr(colon + 3, one_of - colon - 3) + "'";
    }
    size_t range = rest.find(" is out of range (0 to ");
    if (range != std::string::npos) {
        // "poll-max-ns: -1 is out of range (0 to N)"
        const std::string key = rest.substr(0, rest.find(':'));
        std::string max = rest.substr(range + 23);
        if (!max.empty() && max.back() == ')') max.pop_back();
        return key + " value must be in range [0, " + max + "]";
    }
    return qmp_option_error(msg);
}

QmpResult cmd_block_export_add(QmpCall &call)
{
    Result<BlockExportOptions> o = export_options_from_tree(call.args, false);
    if (!o) return qmp_error(export_error(o.msg()));
    Result<BlockNode *> n = qmp_find_node(call.daemon, "", o.value().node_name);
    if (!n) return qmp_error(n.error());
    if (o.value().writable && n.value()->read_only()) return qmp_error("Cannot export read-only node as writable");
    Status st = call.daemon.add_export(o.value());
    if (!st.ok()) return qmp_error(export_error(st.msg()));
    return qmp_ok();
}

// nbd-server-start: addr as QEMU's SocketAddressLegacy ({"type": "unix",
// "data": {"path": P}}), what qemu-storage-daemon takes, or flat
// ({"type": "unix", "path": P}) as --nbd-server has it.
QmpResult cmd_nbd_server_start(QmpCall &call)
{
    Result<NbdServerOptions> o = nbd_server_options_from_tree(call.args, false, true);
    if (!o) {
        std::string m = o.msg();
        if (m.rfind("nbd-server: ", 0) == 0) m = m.substr(12);
        return qmp_error(m);
    }
    if (call.daemon.nbd_server_running()) return qmp_error("NBD server already running");
    Status st = call.daemon.nbd_server_start(o.value());
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_nbd_server_stop(QmpCall &call)
{
    Status st = call.daemon.nbd_server_stop();
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
    Status schema = object_check_schema(call.args, false);
    if (!schema.ok()) return qmp_error(schema.msg().substr(0, schema.msg().find('\n')));   // no hint line
    if (is_user_object_type(type)) {
        Status st = call.daemon.add_user_object(call.args, false);
        if (!st.ok()) return qmp_error(st);
        return qmp_ok();
    }
    if (is_tls_object_type(type)) {
        Result<TlsObjectOptions> t = tls_object_options_from_tree(call.args, false);
        if (!t) return qmp_error(object_error(t.msg()));
        Status st = call.daemon.add_tls_object(t.value());
        if (!st.ok()) return qmp_error(st);
        return qmp_ok();
    }
    if (type != "iothread") return qmp_error("object type '" + type + "' is not supported");
    Result<IoThreadOptions> o = object_options_from_tree(call.args, false);
    if (!o) return qmp_error(object_error(o.msg()));
    Status st = call.daemon.add_iothread(o.value());
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_object_del(QmpCall &call)
{
    Status st = call.daemon.del_object(call.args["id"].get<std::string>());
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
                        {"aio-max-batch", static_cast<int64_t>(t.opts.aio_max_batch)}});
    }
    return qmp_ok(list);
}

// block-export-add's branches: the FUSE and the NBD members.
std::vector<QmpVariant> export_variants()
{
    return {{"fuse",
             {{"mountpoint", "str", false},
              {"growable", "bool", true},
              {"allow-other", "enum:on|off|auto", true},
              {"io-uring", "any", true},
              {"passthrough", "any", true}}},
            {"nbd",
             {{"name", "str", true},
              {"description", "str", true},
              {"bitmaps", "[any]", true},
              {"allocation-depth", "bool", true}}}};
}

} // namespace

void qmp_export_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"block-export-add",
                    {{"type", "enum:fuse|nbd", false}, {"id", "str", false}, {"node-name", "str", false},
                     {"writable", "bool", true}, {"writethrough", "bool", true}, {"iothread", "any", true},
                     {"fixed-iothread", "bool", true}, {"allow-inactive", "bool", true}, {"mountpoint", "str", true},
                     {"growable", "bool", true}, {"allow-other", "enum:on|off|auto", true},
                     {"io-uring", "any", true}, {"passthrough", "any", true}, {"name", "str", true},
                     {"description", "str", true}, {"bitmaps", "[any]", true}, {"allocation-depth", "bool", true}},
                    false, "", cmd_block_export_add, "type", export_variants});
    out->push_back({"nbd-server-start",
                    {{"addr", "object", false}, {"tls-creds", "str", true}, {"tls-authz", "str", true},
                     {"max-connections", "int", true}},
                    false, "", cmd_nbd_server_start});
    out->push_back({"nbd-server-stop", {}, false, "", cmd_nbd_server_stop});
    out->push_back({"block-export-del", {{"id", "str", false}, {"mode", "enum:safe|hard", true}}, false, "",
                    cmd_block_export_del});
    out->push_back({"query-block-exports", {}, false, "[object]", cmd_query_block_exports});
    out->push_back({"object-add", {{"qom-type", "str", false}, {"id", "str", false}}, true, "", cmd_object_add});
    out->push_back({"object-del", {{"id", "str", false}}, false, "", cmd_object_del});
    out->push_back({"query-iothreads", {}, false, "[object]", cmd_query_iothreads});
}

} // namespace bg
