// monitor/qmp-block.cc -- the graph commands: blockdev-add, blockdev-del,
// block_resize, internal snapshots. (Bitmaps, external snapshots, reopen
// and transactions: qmp-graph.cc.)
#include <sys/time.h>

#include <cstring>

#include "monitor/daemon-state.h"
#include "monitor/qmp-block.h"
#include "monitor/qmp-internal.h"
#include "qapi/block-parse.h"

namespace bg {

// ---------------------------------------------------------------- helpers

std::string qmp_option_error(const std::string &msg, const std::string &prefix)
{
    // Our decoders' and the graph's messages: "blockdev 'q': [path: ]what",
    // likewise "export 'e': ..." and "object 'o': ..." (qapi/).
    std::string rest;
    for (const char *what : {"blockdev", "export", "object"}) {
        const std::string w = what;
        if (msg.rfind(w + " '", 0) == 0 || msg.rfind(w + ": ", 0) == 0) {
            size_t colon = msg.find(": ");
            if (colon != std::string::npos) rest = msg.substr(colon + 2);
        }
    }
    if (rest.empty()) return msg;
    {
        // A child given by a name no node has.
        const std::string nn = "no node named '";
        size_t p = rest.find(nn);
        if (p != std::string::npos) {
            size_t e = rest.find('\'', p + nn.size());
            if (e != std::string::npos) {
                const std::string name = rest.substr(p + nn.size(), e - p - nn.size());
                return "Cannot find device='" + name + "' nor node-name='" + name + "'";
            }
        }
    }
    // A dotted key path is followed by ": " and has no blank in it; the
    // message texts themselves start with words.
    std::string path;
    size_t colon = rest.find(": ");
    if (colon != std::string::npos && rest.find(' ') > colon && rest.find('\'') > colon) {
        path = rest.substr(0, colon);
        rest = rest.substr(colon + 2);
    }
    auto full = [&](const std::string &key) { return prefix + (path.empty() ? key : path + "." + key); };
    auto quoted = [&](const std::string &prefix) -> std::string {
        if (rest.rfind(prefix, 0) != 0) return "";
        size_t a = prefix.size();
        size_t b = rest.find('\'', a);
        return b == std::string::npos ? "" : rest.substr(a, b - a);
    };
    std::string k;
    if (!(k = quoted("unknown key '")).empty()) return "Parameter '" + full(k) + "' is unexpected";
    if (!(k = quoted("missing required key '")).empty()) return "Parameter '" + full(k) + "' is missing";
    if (!(k = quoted("unknown driver '")).empty()) {
        return "Parameter '" + full("driver") + "' does not accept value '" + k + "'";
    }
    if (path == "node-name" && !(k = quoted("'")).empty() && rest.find("is not a valid node name") != std::string::npos) {
        return k.size() > 31 ? "Node name too long" : "Invalid node-name: '" + k + "'";
    }
    static const struct {
        const char *ours, *qemu;
    } types[] = {{"expected a string", "string"}, {"expected an integer", "integer"},
                 {"expected a boolean", "boolean"}, {"expected an object", "object"},
                 {"expected a list", "array"},   {"expected an array", "array"}};
    for (auto &t : types) {
        if (rest == t.ours && !path.empty()) {
            return "Invalid parameter type for '" + prefix + path + "', expected: " + t.qemu;
        }
    }
    // Anything else (an open failing, a duplicate name) is QEMU's text
    // already, or ours: without our "blockdev 'q': file: " context, as QEMU
    // gives none.
    return rest;
}

Result<BlockNode *> qmp_find_node(Daemon &d, const std::string &device, const std::string &node_name)
{
    // A daemon has no devices (QEMU's named BlockBackends of guest
    // devices): only node_name can match.
    BlockNode *n = node_name.empty() ? nullptr : d.graph().find(node_name);
    if (!n) {
        return make_error(ENOENT, "Cannot find device='%s' nor node-name='%s'", device.c_str(), node_name.c_str());
    }
    return n;
}

Status qmp_need_root(BlockNode *n)
{
    for (BdrvChild *p : n->parents()) {
        if (p->parent_node()) return make_error(EINVAL, "Need a root block node");
    }
    return {};
}

std::string qmp_str(const nlohmann::json &args, const char *key)
{
    auto it = args.find(key);
    return it == args.end() ? std::string() : it->get<std::string>();
}

namespace {

// ---------------------------------------------------------------- commands

QmpResult cmd_blockdev_add(QmpCall &call)
{
    Result<BlockdevOptions> o = blockdev_options_from_tree(call.daemon.graph().registry(), call.args, false);
    if (!o) return qmp_error(qmp_option_error(o.msg()));
    Status st = call.daemon.add_blockdev(o.value());
    if (!st.ok()) return qmp_error(qmp_option_error(st.msg()));
    return qmp_ok();
}

QmpResult cmd_blockdev_del(QmpCall &call)
{
    Status st = call.daemon.del_blockdev(qmp_str(call.args, "node-name"));
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_block_resize(QmpCall &call)
{
    const std::string device = qmp_str(call.args, "device"), node_name = qmp_str(call.args, "node-name");
    const int64_t size = call.args["size"].get<int64_t>();
    if (size < 0) return qmp_error("Parameter 'size' expects a >0 size");
    Result<BlockNode *> n = qmp_find_node(call.daemon, device, node_name);
    if (!n) return qmp_error(n.error());
    // QEMU's op blocker text here names no device ("Device '(null)' is in
    // use"); we name the node.
    if (!call.daemon.jobs().check_node_free(n.value()).ok()) {
        return qmp_error("Device '" + n.value()->node_name() + "' is in use");
    }
    // A consumer of our own, as QEMU's command uses: it needs the RESIZE
    // permission, shares everything, and goes away with the command.
    if (n.value()->read_only()) return qmp_error("Image is read-only");
    auto blk = BlockBackend::create(n.value(), kPermResize, kPermAll, "an unnamed block device");
    if (!blk) return qmp_error(blk.error());
    int r = blk.value()->co_truncate(size, false, PreallocMode::kOff, 0);
    if (r == -ENOTSUP) return qmp_error("Image format driver does not support resize");
    if (r == -EINVAL && size % 512 != 0) return qmp_error("The new size must be a multiple of 512");
    if (r < 0) return qmp_error(std::string("Failed to resize: ") + strerror(-r));
    return qmp_ok();
}

QmpResult cmd_snapshot_internal(QmpCall &call)
{
    const std::string device = qmp_str(call.args, "device"), name = qmp_str(call.args, "name");
    Result<BlockNode *> n = qmp_find_node(call.daemon, device, device);
    if (!n) return qmp_error(n.error());
    Status st = call.daemon.jobs().check_node_free(n.value());
    if (st.ok()) st = qmp_snapshot_internal_create(n.value(), device, name);
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_snapshot_delete_internal(QmpCall &call)
{
    const std::string device = qmp_str(call.args, "device");
    std::optional<std::string> id, name;
    if (call.args.contains("id")) id = call.args["id"].get<std::string>();
    if (call.args.contains("name")) name = call.args["name"].get<std::string>();
    Result<BlockNode *> n = qmp_find_node(call.daemon, device, device);
    if (!n) return qmp_error(n.error());
    if (!id && !name) return qmp_error("Name or id must be provided");
    BlockNode *node = n.value();
    Status free = call.daemon.jobs().check_node_free(node);
    if (!free.ok()) return qmp_error(free);
    Status root = qmp_need_root(node);
    if (!root.ok()) return qmp_error(root);
    auto list = node->snapshot_list();
    if (!list) return qmp_error(std::string("Failed to get a snapshot list: ") + strerror(list.err()));
    const SnapshotInfo *found = nullptr;
    for (const SnapshotInfo &sn : list.value()) {
        if ((!id || sn.id == *id) && (!name || sn.name == *name)) {
            found = &sn;
            break;
        }
    }
    if (!found) {
        return qmp_error("Snapshot with id '" + id.value_or("null") + "' and name '" + name.value_or("null") +
                         "' does not exist on device '" + device + "'");
    }
    SnapshotInfo sn = *found;
    Status st = node->snapshot_delete(sn.id, sn.name);
    if (!st.ok()) return qmp_error(st);
    return qmp_ok(snapshot_info_json<nlohmann::json>(sn));
}

} // namespace

Status qmp_snapshot_internal_create(BlockNode *node, const std::string &device, const std::string &name)
{
    if (name.empty()) return make_error(EINVAL, "Name is empty");
    BG_TRY(qmp_need_root(node));
    if (node->read_only()) return make_error(EACCES, "Device '%s' is read only", device.c_str());
    auto list = node->snapshot_list();
    if (!list) {
        if (list.err() == ENOTSUP) {
            return make_error(ENOTSUP, "Block format '%s' used by device '%s' does not support internal snapshots",
                              node->driver_name(), device.c_str());
        }
        return list.error();
    }
    for (const SnapshotInfo &sn : list.value()) {
        if (sn.name == name) {
            return make_error(EEXIST, "Snapshot with name '%s' already exists on device '%s'", name.c_str(),
                              device.c_str());
        }
    }
    SnapshotInfo sn;
    sn.name = name;
    // QEMU's: the wall clock to the microsecond; a daemon has no guest, so
    // its virtual clock (vm-clock) is that same instant.
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    sn.date_sec = static_cast<uint32_t>(tv.tv_sec);
    sn.date_nsec = static_cast<uint32_t>(tv.tv_usec) * 1000u;
    sn.vm_clock_nsec = static_cast<uint64_t>(tv.tv_sec) * 1000000000ULL + sn.date_nsec;
    return node->snapshot_create(&sn);
}

// blockdev-add's branches: one per registered driver. Their own members
// are checked by each driver's decoder and not described here.
std::vector<QmpVariant> blockdev_variants()
{
    std::vector<QmpVariant> out;
    for (const BlockDriver *d : builtin_drivers().all()) out.push_back({d->name, {}});
    return out;
}

void qmp_block_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"blockdev-add",
                    {{"driver", "str", false},
                     {"node-name", "str", true},
                     {"discard", "enum:ignore|unmap", true},
                     {"cache", "object", true},
                     {"read-only", "bool", true},
                     {"auto-read-only", "bool", true},
                     {"force-share", "bool", true},
                     {"detect-zeroes", "enum:off|on|unmap", true}},
                    true,
                    "",
                    cmd_blockdev_add,
                    "driver",
                    blockdev_variants});
    out->push_back({"blockdev-del", {{"node-name", "str", false}}, false, "", cmd_blockdev_del});
    out->push_back({"block_resize", {{"device", "str", true}, {"node-name", "str", true}, {"size", "int", false}}, false,
                    "", cmd_block_resize});
    out->push_back({"blockdev-snapshot-internal-sync", {{"device", "str", false}, {"name", "str", false}}, false, "",
                    cmd_snapshot_internal});
    out->push_back({"blockdev-snapshot-delete-internal-sync",
                    {{"device", "str", false}, {"id", "str", true}, {"name", "str", true}}, false, "object",
                    cmd_snapshot_delete_internal});
    qmp_graph_commands(out);
}

} // namespace bg
