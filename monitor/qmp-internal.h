// monitor/qmp-internal.h -- shared between the QMP files of monitor/: the
// session (one client connection), and the command table.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/job.h"
#include "monitor/json-stream.h"
#include "monitor/qmp.h"
#include "util/coroutine.h"

namespace bg {

struct Coroutine;
class Job;
struct JobTxn;

// A listening chardev with its monitor: where sessions come from.
struct QmpListener {
    QmpServer *server = nullptr;
    std::string chardev;
    int listen_fd = -1;         // a server socket; -1 for stdio / a connected client socket
    bool pretty = false;
    QmpSession *active = nullptr;   // the session being served, if any
};

// The protocol state of one connection: negotiation, and the checks and
// replies around each command.
struct QmpProtocol {
    bool pretty_ = false;
    bool command_mode_ = false;     // capabilities negotiated
    bool oob_enabled_ = false;
    // Checks one message (a parse error, a non-object, bad members,
    // negotiation), runs its command in the calling coroutine, and returns
    // the reply text without its line end. May yield.
    std::string handle(QmpServer &server, Result<nlohmann::json> &&m);
};

// One client connection speaking QMP. Owned by the server; freed (by the
// server, in a bottom half) once its input ended and no command runs.
class QmpSession {
  public:
    QmpSession(QmpServer &server, QmpListener *listener, int in_fd, int out_fd, bool pretty);
    ~QmpSession();
    QmpSession(const QmpSession &) = delete;
    QmpSession &operator=(const QmpSession &) = delete;

    // Sends the greeting and starts reading.
    void start();
    // In command mode (capabilities negotiated): events are sent.
    bool command_mode() const { return proto_.command_mode_; }
    void send_event(const std::string &name, const nlohmann::json &data);
    // Stops reading; queued commands are dropped, a running one finishes.
    void stop();
    // True once the input has ended and nothing runs any more.
    bool finished() const { return stopped_ && !running_; }
    bool running() const { return running_; }
    QmpListener *listener() const { return listener_; }

  private:
    static void on_readable(void *opaque);
    static void on_writable(void *opaque);
    static void process_entry(void *opaque);
    void on_message(Result<nlohmann::json> &&m);
    void update_handlers();
    void pump();
    void process();
    std::string handle(Result<nlohmann::json> &&m);
    void send_text(const std::string &text);
    void try_write();

    QmpServer &server_;
    QmpListener *listener_;
    int in_fd_, out_fd_;
    bool pretty_;
    JsonStreamer streamer_;
    std::deque<Result<nlohmann::json>> queue_;
    std::string out_;               // not yet written
    QmpProtocol proto_;
    bool running_ = false;          // the processing coroutine exists
    bool stopped_ = false;          // no more input is read
    bool out_dead_ = false;         // writing failed: replies are dropped
    bool reading_ = false, writing_ = false;   // fd handler state
};

// A command's view of its call.
struct QmpCall {
    QmpServer &server;
    Daemon &daemon;
    const nlohmann::json &args;     // an object, validated against the table's members
};

// Argument member of a command: type is "str", "int", "bool", "number",
// "any", "object" (any object), "[str]", "[any]", or "enum:a|b|c".
struct QmpMember {
    const char *name;
    const char *type;
    bool optional;
};

// One branch of a union's arguments (introspection only).
struct QmpVariant {
    std::string value;              // the tag's value
    std::vector<QmpMember> members; // the branch's own members
};

struct QmpCommand {
    const char *name;
    std::vector<QmpMember> args;
    bool extra_args;                // members beyond args allowed (the command checks them)
    const char *ret;                // introspection: "" no value, else a builtin or "object"/"[object]"
    QmpResult (*fn)(QmpCall &call); // runs in a coroutine; may yield
    // Arguments that are a union (introspection): the tag member, and the
    // branches (a function: blockdev-add's come from the driver registry).
    const char *tag = nullptr;
    std::vector<QmpVariant> (*variants)() = nullptr;
};

// Every command, in the order query-commands lists them.
const std::vector<QmpCommand> &qmp_commands();
const QmpCommand *qmp_find_command(const std::string &name);
// Checks args (an object) against cmd's members: QEMU's texts
// "Parameter 'x' is missing", "Invalid parameter type for 'x', expected:
// integer", "Parameter 'x' is unexpected", "Parameter 'x' does not accept
// value 'v'". prefix is prepended to member names ("data." in transactions).
Status qmp_check_args(const std::vector<QmpMember> &members, bool extra, const nlohmann::json &args,
                      const std::string &prefix = "");
// Runs one request object (after the protocol checks) in the calling
// coroutine: looks the command up, checks its arguments, calls it.
QmpResult qmp_dispatch(QmpServer &server, const std::string &name, const nlohmann::json &args);

// The command groups (qmp-control.cc, qmp-block.cc, qmp-export.cc).
void qmp_control_commands(std::vector<QmpCommand> *out);
void qmp_block_commands(std::vector<QmpCommand> *out);
void qmp_export_commands(std::vector<QmpCommand> *out);
void qmp_job_commands(std::vector<QmpCommand> *out);
// The members every job-starting command shares (qmp-job.cc): job-id,
// speed, auto-finalize, auto-dismiss. Error: "Parameter 'speed' expects a
// non-negative value".
Result<JobCommonOptions> qmp_job_common(const nlohmann::json &args);
// An on-error / on-source-error / on-target-error member (the command
// table's enum checked its value); absent: report.
BlockdevOnError qmp_on_error(const nlohmann::json &args, const char *key);
void qmp_mirror_commands(std::vector<QmpCommand> *out);
void qmp_create_commands(std::vector<QmpCommand> *out);   // qmp-create.cc: blockdev-create
void qmp_commit_commands(std::vector<QmpCommand> *out);   // qmp-commit.cc: block-commit, block-stream
void qmp_backup_commands(std::vector<QmpCommand> *out);

// blockdev-backup (qmp-backup.cc): its arguments, and the job they start,
// for the command and the transaction action (start false: left created
// in txn, for the transaction to start or early_fail()).
const std::vector<QmpMember> &qmp_backup_args();
Result<Job *> qmp_backup_create(Daemon &d, const nlohmann::json &args, const std::shared_ptr<JobTxn> &txn,
                                bool start);

// The introspection data (query-qmp-schema) of the command table.
nlohmann::json qmp_schema();

// The QEMU version the protocol answers with (query-version, greeting).
nlohmann::json qmp_version();

} // namespace bg
