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
