// libFuzzer target: arbitrary bytes as a QMP client's input.
//
// The bytes go through the same JsonStreamer and QmpProtocol that a
// connection uses (monitor/qmp-internal.h), against a daemon whose graph
// starts with two nodes (null-co "n0" and raw "r0" over it) and whose
// registry has only drivers that touch nothing on the host (null-co,
// null-aio, raw, qcow2): no file is opened and no export is mounted
// (block-export-add is not run: it would mount). The first input bytes
// decide whether capabilities are negotiated up front, so the fuzzer reaches
// command mode without having to find "qmp_capabilities" itself.
//
// Checked besides ASan/UBSan/leaks: every reply is one JSON object with
// exactly one of "return"/"error" (the greeting aside), and a command that
// failed changed nothing: the graph's nodes (names, drivers, read-only,
// length) and the iothreads are what they were before it.
//
// Build and run: make fuzz / make check-fuzz (tests/fuzz/fuzz.mk).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "monitor/daemon-state.h"
#include "monitor/qmp-internal.h"
#include "util/aio.h"
#include "util/log.h"

using namespace bg;

namespace {

struct Env {
    std::unique_ptr<AioContext> ctx;
    GMainLoop *loop = nullptr;
    DriverRegistry registry;
    DaemonConfig cfg;
    Env()
    {
        log_set_level(LogLevel::kError);
        ctx = AioContext::create(g_main_context_default());
        AioContext::set_current(ctx.get());
        loop = g_main_loop_new(g_main_context_default(), FALSE);
        for (const char *name : {"null-co", "null-aio", "raw", "qcow2"}) {
            if (const BlockDriver *d = builtin_drivers().find(name)) registry.add(d);
        }
    }
};

Env &env()
{
    static Env *e = new Env();   // lives for the process (libFuzzer never exits cleanly)
    return *e;
}

// What a rejected command must leave unchanged.
std::string state_of(Daemon &d)
{
    std::string s;
    for (BlockNode *n : d.graph().nodes()) {
        s += n->node_name() + ":" + n->driver_name() + ":" + (n->read_only() ? "ro" : "rw") + ":" +
             std::to_string(n->getlength()) + ";";
    }
    for (auto &t : d.iothreads()) s += "io:" + t.id + ";";
    for (auto &e : d.exports()) s += "exp:" + e.id + ";";
    return s;
}

void check_reply(const std::string &text)
{
    auto r = nlohmann::json::parse(text, nullptr, false);
    if (r.is_discarded() || !r.is_object() || (r.contains("return") == r.contains("error"))) {
        std::fprintf(stderr, "bad reply: %s\n", text.c_str());
        abort();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Env &e = env();
    {
        Daemon daemon(e.cfg, e.loop);
        daemon.use_graph(std::make_unique<BlockGraph>(&e.registry));
        QmpServer &server = daemon.qmp();
        QmpProtocol proto;
        proto.pretty_ = size > 0 && (data[0] & 2);
        if (size > 0 && (data[0] & 1)) proto.command_mode_ = true;
        (void)daemon.graph().add_node_json({{"driver", "null-co"}, {"node-name", "n0"}, {"size", 1 << 20}});
        (void)daemon.graph().add_node_json({{"driver", "raw"}, {"node-name", "r0"}, {"file", "n0"}});

        std::vector<Result<nlohmann::json>> msgs;
        JsonStreamer streamer([&](Result<nlohmann::json> &&m) { msgs.push_back(std::move(m)); });
        streamer.feed(reinterpret_cast<const char *>(data) + (size > 0 ? 1 : 0), size > 0 ? size - 1 : 0);
        streamer.finish();

        for (auto &m : msgs) {
            if (m && m.value().is_object()) {
                auto it = m.value().find("execute");
                if (it != m.value().end() && it->is_string() &&
                    (*it == "block-export-add" || *it == "quit" || *it == "object-add" || *it == "nbd-server-start")) {
                    continue;   // would mount, stop, or start threads: not what this target fuzzes
                }
            }
            const std::string before = state_of(daemon);
            std::string reply = run_in_coroutine([&] { return proto.handle(server, std::move(m)); });
            check_reply(reply);
            if (reply.find("\"error\"") != std::string::npos && reply.find("\"return\"") == std::string::npos &&
                state_of(daemon) != before) {
                std::fprintf(stderr, "a failed command changed the daemon: %s\n", reply.c_str());
                abort();
            }
        }
        daemon.teardown();
    }
    return 0;
}
