// monitor/qmp-dispatch.cc -- the command table, argument checks and the
// introspection data (query-commands, query-qmp-schema) derived from it.
#include <map>

#include "monitor/qmp-internal.h"

namespace bg {

const std::vector<QmpCommand> &qmp_commands()
{
    static const std::vector<QmpCommand> table = [] {
        std::vector<QmpCommand> t;
        qmp_control_commands(&t);
        qmp_block_commands(&t);
        qmp_export_commands(&t);
        qmp_job_commands(&t);
        qmp_mirror_commands(&t);
        qmp_create_commands(&t);
        qmp_commit_commands(&t);
        qmp_backup_commands(&t);
        return t;
    }();
    return table;
}

const QmpCommand *qmp_find_command(const std::string &name)
{
    for (const QmpCommand &c : qmp_commands()) {
        if (name == c.name) return &c;
    }
    return nullptr;
}

namespace {

// QEMU's name for a JSON type in "expected: ..." messages.
const char *expected_name(const std::string &type)
{
    if (type == "int") return "integer";
    if (type == "str" || type.rfind("enum:", 0) == 0) return "string";
    if (type == "bool") return "boolean";
    if (type == "number") return "number";
    if (type == "object") return "object";
    if (type[0] == '[') return "array";
    return "value";
}

bool has_type(const std::string &type, const nlohmann::json &v)
{
    if (type == "any") return true;
    if (type == "int") return v.is_number_integer();
    if (type == "str" || type.rfind("enum:", 0) == 0) return v.is_string();
    if (type == "bool") return v.is_boolean();
    if (type == "number") return v.is_number();
    if (type == "object") return v.is_object();
    if (type[0] == '[') return v.is_array();
    return false;
}

Status check_value(const std::string &type, const nlohmann::json &v, const std::string &path)
{
    if (!has_type(type, v)) {
        return make_error(EINVAL, "Invalid parameter type for '%s', expected: %s", path.c_str(), expected_name(type));
    }
    if (type.rfind("enum:", 0) == 0) {
        const std::string val = v.get<std::string>();
        std::string values = type.substr(5);
        size_t start = 0;
        for (;;) {
            size_t bar = values.find('|', start);
            if (values.compare(start, bar == std::string::npos ? std::string::npos : bar - start, val) == 0 &&
                val.size() == (bar == std::string::npos ? values.size() : bar) - start) {
                return {};
            }
            if (bar == std::string::npos) break;
            start = bar + 1;
        }
        return make_error(EINVAL, "Parameter '%s' does not accept value '%s'", path.c_str(), val.c_str());
    }
    if (type[0] == '[') {
        const std::string elem = type.substr(1, type.size() - 2);
        for (size_t i = 0; i < v.size(); i++) {
            BG_TRY(check_value(elem, v[i], path + "[" + std::to_string(i) + "]"));
        }
    }
    return {};
}

} // namespace

Status qmp_check_args(const std::vector<QmpMember> &members, bool extra, const nlohmann::json &args,
                      const std::string &prefix)
{
    for (const QmpMember &m : members) {
        auto it = args.find(m.name);
        if (it == args.end()) {
            if (!m.optional) return make_error(EINVAL, "Parameter '%s%s' is missing", prefix.c_str(), m.name);
            continue;
        }
        BG_TRY(check_value(m.type, *it, prefix + m.name));
    }
    if (extra) return {};
    for (auto it = args.begin(); it != args.end(); ++it) {
        bool known = false;
        for (const QmpMember &m : members) known = known || it.key() == m.name;
        if (!known) return make_error(EINVAL, "Parameter '%s%s' is unexpected", prefix.c_str(), it.key().c_str());
    }
    return {};
}

QmpResult qmp_dispatch(QmpServer &server, const std::string &name, const nlohmann::json &args)
{
    const QmpCommand *cmd = qmp_find_command(name);
    if (!cmd) return qmp_error("The command " + name + " has not been found", "CommandNotFound");
    Status st = qmp_check_args(cmd->args, cmd->extra_args, args);
    if (!st.ok()) return qmp_error(st);
    QmpCall call{server, server.daemon(), args};
    return cmd->fn(call);
}

// ---------------------------------------------------------------- schema

namespace {

// Builds SchemaInfo entries. Like QEMU, types other than builtins, commands
// and events get numbered names in order of first use ("0" is the empty
// object type).
class SchemaBuilder {
  public:
    nlohmann::json out = nlohmann::json::array();

    SchemaBuilder()
    {
        static const char *const builtins[][2] = {{"str", "string"}, {"int", "int"},   {"bool", "boolean"},
                                                  {"number", "number"}, {"null", "null"}, {"any", "value"}};
        for (auto &b : builtins) out.push_back({{"name", b[0]}, {"meta-type", "builtin"}, {"json-type", b[1]}});
        empty_ = object_type({});
    }

    std::string type_name(const std::string &type)
    {
        if (type == "str" || type == "int" || type == "bool" || type == "number" || type == "any") return type;
        if (type == "object") return "any";
        if (type == "[object]") return type_name("[any]");
        auto it = named_.find(type);
        if (it != named_.end()) return it->second;
        std::string name;
        if (type[0] == '[') {
            std::string elem = type_name(type.substr(1, type.size() - 2));
            name = "[" + elem + "]";
            out.push_back({{"name", name}, {"meta-type", "array"}, {"element-type", elem}});
        } else {   // enum:a|b
            name = next_name();
            nlohmann::json values = nlohmann::json::array(), members = nlohmann::json::array();
            std::string rest = type.substr(5);
            size_t start = 0;
            for (;;) {
                size_t bar = rest.find('|', start);
                std::string v = rest.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
                values.push_back(v);
                members.push_back({{"name", v}});
                if (bar == std::string::npos) break;
                start = bar + 1;
            }
            out.push_back({{"name", name}, {"meta-type", "enum"}, {"members", members}, {"values", values}});
        }
        named_[type] = name;
        return name;
    }

    // An object type; with tag, a union whose tag member is an enum of the
    // variants' values and whose branches are the variants.
    std::string object_type(const std::vector<QmpMember> &members, const char *tag = nullptr,
                            const std::vector<QmpVariant> &variants = {})
    {
        if (members.empty() && !empty_.empty() && !tag) return empty_;
        std::string tag_type;
        nlohmann::json vs = nlohmann::json::array();
        if (tag) {
            std::string e = "enum:";
            for (size_t i = 0; i < variants.size(); i++) e += (i ? "|" : "") + variants[i].value;
            tag_type = type_name(e);
            for (const QmpVariant &v : variants) vs.push_back({{"case", v.value}, {"type", object_type(v.members)}});
        }
        nlohmann::json ms = nlohmann::json::array();
        for (const QmpMember &m : members) {
            bool in_variant = false;   // a branch's member, listed there
            for (const QmpVariant &v : variants) {
                for (const QmpMember &vm : v.members) in_variant = in_variant || std::string(vm.name) == m.name;
            }
            if (in_variant) continue;
            nlohmann::json e = {{"name", m.name}, {"type", tag && std::string(m.name) == tag ? tag_type : type_name(m.type)}};
            if (m.optional) e["default"] = nullptr;
            ms.push_back(e);
        }
        std::string name = next_name();
        nlohmann::json o = {{"name", name}, {"meta-type", "object"}, {"members", ms}};
        if (tag) {
            o["tag"] = tag;
            o["variants"] = vs;
        }
        out.push_back(o);
        return name;
    }

    std::string ret_type(const std::string &ret)
    {
        if (ret.empty()) return empty_;
        if (ret == "object") return "any";
        if (ret == "[object]") return type_name("[any]");
        return type_name(ret);
    }

  private:
    std::string next_name() { return std::to_string(seq_++); }
    std::map<std::string, std::string> named_;
    std::string empty_;
    int seq_ = 0;
};

} // namespace

nlohmann::json qmp_schema()
{
    SchemaBuilder b;
    for (const QmpCommand &c : qmp_commands()) {
        std::string arg = c.tag ? b.object_type(c.args, c.tag, c.variants()) : b.object_type(c.args);
        std::string ret = b.ret_type(c.ret);
        b.out.push_back({{"name", c.name}, {"meta-type", "command"}, {"arg-type", arg}, {"ret-type", ret}});
    }
    b.out.push_back({{"name", "BLOCK_EXPORT_DELETED"},
                     {"meta-type", "event"},
                     {"arg-type", b.object_type({{"id", "str", false}})}});
    return b.out;
}

} // namespace bg
