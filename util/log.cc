#include "util/log.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace bg {

namespace {
// Process-wide setting, not state: written at start-up, read everywhere.
std::atomic<int> g_level{static_cast<int>(LogLevel::kWarn)};
const char *g_program = nullptr;  // see log_set_program()

const char *level_name(LogLevel l)
{
    switch (l) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarn: return "warning";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
    }
    return "?";
}
} // namespace

void log_set_level(LogLevel level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }
LogLevel log_get_level() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }
bool log_enabled(LogLevel level) { return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed); }

bool log_parse_level(const char *name, LogLevel *out)
{
    static const struct { const char *n; LogLevel l; } names[] = {
        {"error", LogLevel::kError}, {"warn", LogLevel::kWarn}, {"warning", LogLevel::kWarn},
        {"info", LogLevel::kInfo},   {"debug", LogLevel::kDebug},
    };
    for (auto &e : names) {
        if (strcmp(e.n, name) == 0) {
            *out = e.l;
            return true;
        }
    }
    return false;
}

void log_init_from_env()
{
    const char *s = getenv("BLOCKGRAPH_LOG");
    LogLevel l;
    if (s && log_parse_level(s, &l)) log_set_level(l);
}

void log_set_program(const char *name) { g_program = name; }
const char *log_get_program() { return g_program; }

void log_msg(LogLevel level, const char *fmt, ...)
{
    char buf[1024];
    int n;
    if (g_program == nullptr) {
        n = snprintf(buf, sizeof(buf), "blockgraph: %s: ", level_name(level));
    } else if (level == LogLevel::kError) {
        n = snprintf(buf, sizeof(buf), "%.200s: ", g_program);
    } else {
        n = snprintf(buf, sizeof(buf), "%.200s: %s: ", g_program, level_name(level));
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
    va_end(ap);
    size_t len = n + (m < 0 ? 0 : std::min<size_t>(m, sizeof(buf) - n - 2));
    buf[len++] = '\n';
    ssize_t r = write(STDERR_FILENO, buf, len);
    (void)r;
}

} // namespace bg
