// monitor/qmp-graph.cc -- the graph commands that change a live graph's
// shape or its bitmaps: blockdev-snapshot, blockdev-reopen,
// block-dirty-bitmap-*, transaction, and query-named-block-nodes.
//
// Each transaction action is one function that applies the change and
// records how to undo it (and what to do once every action succeeded).
// The standalone commands run the same function and keep the change; a
// transaction drains every node its actions name, applies them in order,
// and on the first failure undoes the applied ones in reverse order, so
// that either every action took effect or none did.
#include <functional>

#include "block/job.h"
#include "monitor/block-info.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-block.h"
#include "qapi/block-parse.h"

namespace bg {

namespace {

// What an applied action leaves for the transaction: how to take it back,
// and what to do when the whole transaction succeeded.
struct Applied {
    std::function<void()> undo;
    std::function<void()> commit;
    // In: the jobs' transaction when completion-mode is grouped (else null).
    std::shared_ptr<JobTxn> group;
};

using ActionFn = Status (*)(Daemon &d, const nlohmann::json &data, Applied *out);

Result<BlockNode *> node_arg(Daemon &d, const nlohmann::json &data, const char *key)
{
    const std::string name = qmp_str(data, key);
    BG_TRY_ASSIGN(BlockNode *n, qmp_find_node(d, name, name));
    BG_TRY(d.jobs().check_node_free(n));   // a job's node stays where the job put it
    return n;
}

// The node of a bitmap command other than add (QEMU's lookup there has
// its own text).
Result<BlockNode *> bitmap_node(Daemon &d, const nlohmann::json &data)
{
    const std::string name = qmp_str(data, "node");
    BlockNode *n = d.graph().find(name);
    if (!n) return make_error(ENOENT, "Node '%s' not found", name.c_str());
    return n;
}

// ---------------------------------------------------------------- bitmaps

const std::vector<QmpMember> kBitmapArgs = {{"node", "str", false}, {"name", "str", false}};
const std::vector<QmpMember> kBitmapAddArgs = {{"node", "str", false},
                                               {"name", "str", false},
                                               {"granularity", "int", true},
                                               {"persistent", "bool", true},
                                               {"disabled", "bool", true}};
const std::vector<QmpMember> kBitmapMergeArgs = {
    {"node", "str", false}, {"target", "str", false}, {"bitmaps", "[any]", false}};

Status bitmap_add(Daemon &d, const nlohmann::json &a, Applied *out)
{
    const std::string name = qmp_str(a, "name");
    if (name.empty()) return make_error(EINVAL, "Bitmap name cannot be empty");
    BG_TRY_ASSIGN(BlockNode *n, node_arg(d, a, "node"));
    std::optional<uint32_t> gran;
    if (a.contains("granularity")) {
        if (!a["granularity"].is_number_unsigned() || a["granularity"].get<uint64_t>() > UINT32_MAX) {
            return make_error(EINVAL, "Parameter 'granularity' expects uint32_t");
        }
        gran = static_cast<uint32_t>(a["granularity"].get<uint64_t>());
    }
    BG_TRY(n->dirty_bitmap_add(name, gran, a.value("persistent", false), a.value("disabled", false)));
    out->undo = [n, name] { (void)n->dirty_bitmap_remove(name); };
    return {};
}

// The state of one bitmap, enough to recreate it.
struct BitmapCopy {
    DirtyBitmapInfo info;
    DirtyBitmapData bits;
};

Result<BitmapCopy> bitmap_copy(BlockNode *n, const std::string &name)
{
    BitmapCopy c;
    for (const DirtyBitmapInfo &i : n->dirty_bitmaps()) {
        if (i.name == name) c.info = i;
    }
    if (c.info.name.empty()) return make_error(ENOENT, "Dirty bitmap '%s' not found", name.c_str());
    if (!c.info.inconsistent) {
        BG_TRY_ASSIGN(c.bits, n->dirty_bitmap_get(name));
    }
    return c;
}

Status bitmap_remove(Daemon &d, const nlohmann::json &a, Applied *out)
{
    BG_TRY_ASSIGN(BlockNode *n, bitmap_node(d, a));
    const std::string name = qmp_str(a, "name");
    Result<BitmapCopy> copy = bitmap_copy(n, name);
    BG_TRY(n->dirty_bitmap_remove(name));
    if (copy && !copy.value().info.inconsistent) {
        BitmapCopy c = std::move(copy.value());
        out->undo = [n, c] {
            if (n->dirty_bitmap_add(c.info.name, c.info.granularity, c.info.persistent, !c.info.recording).ok()) {
                (void)n->dirty_bitmap_restore(c.info.name, c.bits);
            }
        };
    }
    return {};
}

Status bitmap_clear(Daemon &d, const nlohmann::json &a, Applied *out)
{
    BG_TRY_ASSIGN(BlockNode *n, bitmap_node(d, a));
    const std::string name = qmp_str(a, "name");
    auto backup = std::make_shared<DirtyBitmapData>();
    BG_TRY(n->dirty_bitmap_clear(name, backup.get()));
    out->undo = [n, name, backup] { (void)n->dirty_bitmap_restore(name, *backup); };
    return {};
}

Status bitmap_enable_disable(Daemon &d, const nlohmann::json &a, Applied *out, bool enable)
{
    BG_TRY_ASSIGN(BlockNode *n, bitmap_node(d, a));
    const std::string name = qmp_str(a, "name");
    bool was = false;
    for (const DirtyBitmapInfo &i : n->dirty_bitmaps()) {
        if (i.name == name) was = i.recording;
    }
    BG_TRY(enable ? n->dirty_bitmap_enable(name) : n->dirty_bitmap_disable(name));
    if (was != enable) {
        out->undo = [n, name, enable] {
            (void)(enable ? n->dirty_bitmap_disable(name) : n->dirty_bitmap_enable(name));
        };
    }
    return {};
}

Status bitmap_enable(Daemon &d, const nlohmann::json &a, Applied *out) { return bitmap_enable_disable(d, a, out, true); }
Status bitmap_disable(Daemon &d, const nlohmann::json &a, Applied *out) { return bitmap_enable_disable(d, a, out, false); }

Status bitmap_merge(Daemon &d, const nlohmann::json &a, Applied *out)
{
    BG_TRY_ASSIGN(BlockNode *n, bitmap_node(d, a));
    const std::string target = qmp_str(a, "target");
    std::vector<DirtyBitmapSource> sources;
    const nlohmann::json &list = a["bitmaps"];
    for (size_t i = 0; i < list.size(); i++) {
        const nlohmann::json &e = list[i];
        if (e.is_string()) {
            sources.push_back({"", e.get<std::string>()});
        } else if (e.is_object()) {
            BG_TRY(qmp_check_args({{"node", "str", false}, {"name", "str", false}}, false, e,
                                  "bitmaps[" + std::to_string(i) + "]."));
            sources.push_back({e["node"].get<std::string>(), e["name"].get<std::string>()});
        } else {
            // (QEMU names no member here: its text says 'null'.)
            return make_error(EINVAL, "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr");
        }
    }
    auto backup = std::make_shared<DirtyBitmapData>();
    BG_TRY(n->dirty_bitmap_merge(target, sources, backup.get()));
    out->undo = [n, target, backup] { (void)n->dirty_bitmap_restore(target, *backup); };
    return {};
}

// ---------------------------------------------------------------- snapshots

const std::vector<QmpMember> kSnapshotArgs = {{"node", "str", false}, {"overlay", "str", false}};
const std::vector<QmpMember> kInternalSnapshotArgs = {{"device", "str", false}, {"name", "str", false}};

Status external_snapshot(Daemon &d, const nlohmann::json &a, Applied *out)
{
    BG_TRY_ASSIGN(BlockNode *node, node_arg(d, a, "node"));
    BG_TRY_ASSIGN(BlockNode *overlay, node_arg(d, a, "overlay"));
    BG_TRY(d.check_no_bypass(node));
    BG_TRY(d.graph().snapshot_overlay(node, overlay));
    BlockGraph *g = &d.graph();
    out->undo = [g, node, overlay] { g->snapshot_overlay_undo(node, overlay); };
    // QEMU makes the old top read-only once the change stands.
    out->commit = [g, node] {
        if (!node->read_only()) (void)g->set_read_only(node, true);
    };
    return {};
}

Status internal_snapshot(Daemon &d, const nlohmann::json &a, Applied *out)
{
    const std::string device = qmp_str(a, "device"), name = qmp_str(a, "name");
    BG_TRY_ASSIGN(BlockNode *n, qmp_find_node(d, device, device));
    BG_TRY(d.jobs().check_node_free(n));
    BG_TRY(qmp_snapshot_internal_create(n, device, name));
    out->undo = [n, name] { (void)n->snapshot_delete(std::nullopt, name); };
    return {};
}

// A backup job, created unstarted: started once every action succeeded,
// dropped (early_fail) on rollback.
Status backup_action(Daemon &d, const nlohmann::json &a, Applied *out)
{
    BG_TRY_ASSIGN(Job *j, qmp_backup_create(d, a, out->group, false));
    out->undo = [j] { j->early_fail(); };
    out->commit = [j] { j->start(); };
    return {};
}

Status abort_action(Daemon &, const nlohmann::json &, Applied *)
{
    return make_error(ECANCELED, "Transaction aborted using Abort action");
}

// ---------------------------------------------------------------- the actions

struct Action {
    const char *type;
    const std::vector<QmpMember> *args;
    ActionFn fn;
};

const std::vector<QmpMember> kNoArgs;

const Action kActions[] = {
    {"abort", &kNoArgs, abort_action},
    {"block-dirty-bitmap-add", &kBitmapAddArgs, bitmap_add},
    {"block-dirty-bitmap-remove", &kBitmapArgs, bitmap_remove},
    {"block-dirty-bitmap-clear", &kBitmapArgs, bitmap_clear},
    {"block-dirty-bitmap-enable", &kBitmapArgs, bitmap_enable},
    {"block-dirty-bitmap-disable", &kBitmapArgs, bitmap_disable},
    {"block-dirty-bitmap-merge", &kBitmapMergeArgs, bitmap_merge},
    {"blockdev-backup", &qmp_backup_args(), backup_action},
    {"blockdev-snapshot", &kSnapshotArgs, external_snapshot},
    {"blockdev-snapshot-internal-sync", &kInternalSnapshotArgs, internal_snapshot},
};

const Action *find_action(const std::string &type)
{
    for (const Action &a : kActions) {
        if (type == a.type) return &a;
    }
    return nullptr;
}

// A standalone command: the action, kept.
template <ActionFn Fn>
QmpResult run_action(QmpCall &call)
{
    Applied applied;
    Status st = Fn(call.daemon, call.args, &applied);
    if (!st.ok()) return qmp_error(st);
    if (applied.commit) applied.commit();
    return qmp_ok();
}

// The nodes an action names (drained around a transaction).
void named_nodes(Daemon &d, const nlohmann::json &data, std::vector<BlockNode *> *out)
{
    for (const char *key : {"node", "overlay", "device"}) {
        auto it = data.find(key);
        if (it == data.end() || !it->is_string()) continue;
        BlockNode *n = d.graph().find(it->get<std::string>());
        if (n && std::find(out->begin(), out->end(), n) == out->end()) out->push_back(n);
    }
}

QmpResult cmd_transaction(QmpCall &call)
{
    const nlohmann::json &actions = call.args["actions"];
    std::shared_ptr<JobTxn> group;
    if (call.args.contains("properties")) {
        const nlohmann::json &p = call.args["properties"];
        Status st = qmp_check_args({{"completion-mode", "enum:individual|grouped", true}}, false, p, "properties.");
        if (!st.ok()) return qmp_error(st);
        // Only backup jobs support grouped: they then share one JobTxn.
        // Other actions refuse it when their turn comes (as QEMU's
        // prepare steps, so that the actions before are rolled back).
        if (p.value("completion-mode", std::string("individual")) == "grouped") group = std::make_shared<JobTxn>();
    }
    // Every action checked before any is applied.
    std::vector<const Action *> plan;
    for (size_t i = 0; i < actions.size(); i++) {
        const nlohmann::json &a = actions[i];
        const std::string at = "actions[" + std::to_string(i) + "]";
        if (!a.is_object()) return qmp_error("Invalid parameter type for '" + at + "', expected: object");
        Status st = qmp_check_args({{"type", "str", false}, {"data", "object", true}}, false, a, at + ".");
        if (!st.ok()) return qmp_error(st);
        const Action *act = find_action(a["type"].get<std::string>());
        if (!act) {
            return qmp_error("Parameter 'type' does not accept value '" + a["type"].get<std::string>() + "'");
        }
        static const nlohmann::json empty = nlohmann::json::object();
        st = qmp_check_args(*act->args, false, a.contains("data") ? a["data"] : empty, at + ".data.");
        if (!st.ok()) return qmp_error(st);
        plan.push_back(act);
    }

    std::vector<BlockNode *> drained;
    for (const auto &a : actions) {
        if (a.contains("data")) named_nodes(call.daemon, a["data"], &drained);
    }
    for (BlockNode *n : drained) n->drained_begin();
    std::vector<Applied> done;
    Status failed;
    for (size_t i = 0; i < plan.size(); i++) {
        static const nlohmann::json empty = nlohmann::json::object();
        Applied applied;
        applied.group = group;
        if (group && std::string(plan[i]->type) != "blockdev-backup") {
            failed = make_error(EINVAL, "Action '%s' does not support Transaction property completion-mode = grouped",
                                plan[i]->type);
            break;
        }
        failed = plan[i]->fn(call.daemon, actions[i].contains("data") ? actions[i]["data"] : empty, &applied);
        if (!failed.ok()) break;
        done.push_back(std::move(applied));
    }
    if (!failed.ok()) {
        for (auto it = done.rbegin(); it != done.rend(); ++it) {
            if (it->undo) it->undo();
        }
    } else {
        for (Applied &a : done) {
            if (a.commit) a.commit();
        }
    }
    for (BlockNode *n : drained) n->drained_end();
    if (!failed.ok()) return qmp_error(failed);
    return qmp_ok();
}

// ---------------------------------------------------------------- reopen, query

QmpResult cmd_blockdev_reopen(QmpCall &call)
{
    std::vector<BlockdevOptions> opts;
    const nlohmann::json &list = call.args["options"];
    for (size_t i = 0; i < list.size(); i++) {
        if (!list[i].is_object()) {
            return qmp_error("Invalid parameter type for 'options[" + std::to_string(i) + "]', expected: object");
        }
        Result<BlockdevOptions> o = blockdev_options_from_tree(call.daemon.graph().registry(), list[i], false);
        if (!o) return qmp_error(qmp_option_error(o.msg(), "options[" + std::to_string(i) + "]."));
        if (BlockNode *n = call.daemon.graph().find(o.value().node_name)) {
            Status busy = call.daemon.check_no_bypass(n);
            if (!busy.ok()) return qmp_error(busy);
        }
        opts.push_back(std::move(o.value()));
    }
    Status st = call.daemon.graph().reopen(opts);
    if (!st.ok()) return qmp_error(st);
    return qmp_ok();
}

QmpResult cmd_query_named_block_nodes(QmpCall &call)
{
    const bool flat = call.args.value("flat", false);
    QmpResult r = qmp_ok(query_named_block_nodes(call.daemon.graph(), flat));
    // Compact replies print members in QEMU's order.
    r.raw = qdict_json_string(query_named_block_nodes_ordered(call.daemon.graph(), flat));
    return r;
}

} // namespace

void qmp_graph_commands(std::vector<QmpCommand> *out)
{
    out->push_back({"query-named-block-nodes", {{"flat", "bool", true}}, false, "[object]", cmd_query_named_block_nodes});
    out->push_back({"blockdev-reopen", {{"options", "[object]", false}}, false, "", cmd_blockdev_reopen});
    out->push_back({"blockdev-snapshot", kSnapshotArgs, false, "", run_action<external_snapshot>});
    out->push_back({"block-dirty-bitmap-add", kBitmapAddArgs, false, "", run_action<bitmap_add>});
    out->push_back({"block-dirty-bitmap-remove", kBitmapArgs, false, "", run_action<bitmap_remove>});
    out->push_back({"block-dirty-bitmap-clear", kBitmapArgs, false, "", run_action<bitmap_clear>});
    out->push_back({"block-dirty-bitmap-enable", kBitmapArgs, false, "", run_action<bitmap_enable>});
    out->push_back({"block-dirty-bitmap-disable", kBitmapArgs, false, "", run_action<bitmap_disable>});
    out->push_back({"block-dirty-bitmap-merge", kBitmapMergeArgs, false, "", run_action<bitmap_merge>});
    out->push_back({"transaction", {{"actions", "[object]", false}, {"properties", "object", true}}, false, "",
                    cmd_transaction});
}

} // namespace bg
