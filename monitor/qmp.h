// monitor/qmp.h -- QMP, the QEMU Machine Protocol: the daemon's monitors.
//
// A chardev is where a client connects: a listening Unix or TCP socket
// (server=on), a socket we connect to (server=off), or the daemon's own
// stdin/stdout. A monitor (--monitor chardev=ID) speaks QMP on it: a
// greeting, capabilities negotiation (only qmp_capabilities is accepted
// before it), then commands, one JSON object each, answered in order with
// {"return": ...} or {"error": {"class", "desc"}} and the request's "id"
// echoed; events ({"timestamp", "event", "data"}) go to every monitor in
// command mode. A socket chardev serves one client at a time, as QEMU's
// does; the next one is accepted (and greeted) when it leaves.
//
// Execution: every command runs in a coroutine of the main loop, so a
// command that waits (a drain, a flush) lets the loop, the exports and the
// other monitors go on; the commands of one monitor run one after another,
// in order. A client that disconnects mid-command does not cancel it: it
// completes (its reply is dropped) before the connection is freed;
// commands it had queued behind it are dropped unrun. Reading stops while
// kMaxQueued commands wait, so a client cannot queue without bound.
//
// The command table and the protocol checks are in qmp-dispatch.cc,
// the commands in qmp-*.cc; docs/qmp.md is the user's reference.
//
// Threading model: main thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace bg {

class Daemon;
class QmpSession;
struct QmpListener;

// --chardev (the socket and stdio backends of QEMU's ChardevBackend).
struct ChardevOptions {
    std::string id;
    std::string backend;          // "socket" or "stdio"
    std::string path;             // socket: Unix socket path, or
    std::string host, port;       // socket: TCP
    bool server = false;          // listen (on) or connect (off)
    bool wait = true;             // server=on: block start-up until a client connects
};

// --monitor [chardev=]ID[,mode=control][,pretty=on|off]
struct MonitorOptions {
    std::string chardev;
    bool pretty = false;
};

// Parses the argument of --chardev / --monitor (keyval, QEMU's keys).
// Errors name the option and key, e.g. "chardev: missing required key 'id'",
// "chardev 'm': backend 'pty' is not supported (socket, stdio)",
// "monitor: Only QMP is supported".
Result<ChardevOptions> parse_chardev_arg(const std::string &arg);
Result<MonitorOptions> parse_monitor_arg(const std::string &arg);

// One reply or error of a command.
struct QmpResult {
    nlohmann::json ret = nlohmann::json::object();
    std::string error_class;      // empty: success
    std::string desc;
    bool ok() const { return error_class.empty(); }
};
QmpResult qmp_ok(nlohmann::json ret = nlohmann::json::object());
QmpResult qmp_error(const std::string &desc, const char *cls = "GenericError");
QmpResult qmp_error(const Status &st);

// Formats a value the way QEMU writes QMP: ", " and ": " separators, or
// indented by 4 with pretty; non-ASCII as \uXXXX; invalid UTF-8 replaced.
std::string qmp_format(const nlohmann::json &v, bool pretty);

class QmpServer {
  public:
    static constexpr size_t kMaxQueued = 8;

    explicit QmpServer(Daemon &daemon);
    ~QmpServer();   // close_all()
    QmpServer(const QmpServer &) = delete;
    QmpServer &operator=(const QmpServer &) = delete;

    Daemon &daemon() { return daemon_; }

    // --chardev: creates the chardev (listens, connects, or takes stdio).
    // With server=on,wait=on it blocks until the first client connects.
    // Errors: "chardev 'm': ..." with the system's reason, or a duplicate id.
    Status add_chardev(const ChardevOptions &opts);
    // --monitor: starts QMP on a chardev. Errors: chardev "x" not found;
    // a chardev already used by a monitor.
    Status add_monitor(const MonitorOptions &opts);
    size_t monitor_count() const { return listeners_.size(); }

    // Sends an event to every connected monitor in command mode.
    void broadcast_event(const std::string &name, const nlohmann::json &data);

    // Stops accepting and reading, waits (running the loop; not from a
    // coroutine) until every running command has finished, and closes
    // every connection and socket. Idempotent.
    void close_all();
    bool closing() const { return closing_; }

    // For sessions: a connection ended.
    void session_gone(QmpSession *s);

  private:
    friend struct QmpListener;
    struct Chardev;
    Chardev *find_chardev(const std::string &id);
    void start_session(QmpListener *l, int in_fd, int out_fd);
    static void on_accept(void *opaque);
    static void reap(void *opaque);

    Daemon &daemon_;
    std::vector<std::unique_ptr<Chardev>> chardevs_;
    std::vector<std::unique_ptr<QmpListener>> listeners_;
    std::vector<std::unique_ptr<QmpSession>> sessions_;
    bool closing_ = false;
};

} // namespace bg
