// Levelled logging to stderr. Quiet by default: only errors and warnings are
// printed until the level is raised (blockgraph -v / BLOCKGRAPH_LOG=debug).
// Thread-safe: each message is written with one write(2).
#pragma once

#include <atomic>

namespace bg {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void log_set_level(LogLevel level);
LogLevel log_get_level();
// Parses "error|warn|info|debug"; returns false on an unknown name.
bool log_parse_level(const char *name, LogLevel *out);
// Reads BLOCKGRAPH_LOG from the environment, if set.
void log_init_from_env();

// The program name that starts log lines, or nullptr (the default) for
// "blockgraph: <level>: <msg>". With a name set (a drop-in for a QEMU tool,
// tools/dropin.h) lines are "<name>: <msg>" for errors and
// "<name>: <level>: <msg>" otherwise, as QEMU's error_report/warn_report
// lines are. Call once at start-up, before any thread starts; `name` must
// outlive the process.
void log_set_program(const char *name);
// The name set by log_set_program(), or nullptr.
const char *log_get_program();

void log_msg(LogLevel level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

bool log_enabled(LogLevel level);

#define BG_LOG(level, ...)                                                   \
    do {                                                                     \
        if (::bg::log_enabled(level)) ::bg::log_msg(level, __VA_ARGS__);     \
    } while (0)
#define log_error(...) BG_LOG(::bg::LogLevel::kError, __VA_ARGS__)
#define log_warn(...) BG_LOG(::bg::LogLevel::kWarn, __VA_ARGS__)
#define log_info(...) BG_LOG(::bg::LogLevel::kInfo, __VA_ARGS__)
#define log_debug(...) BG_LOG(::bg::LogLevel::kDebug, __VA_ARGS__)

} // namespace bg
