// tools/img-trace.cc -- "blockgraph img -T/--trace SPEC": qemu-img's trace
// option, taken with its syntax and messages. blockgraph has no QEMU trace
// events, so every pattern matches none (see docs/img.md, -T).
//
// Threading: main thread, before the subcommand runs.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "tools/img.h"

namespace bg {
namespace img {

namespace {

// The trace events that can be enabled: none.
const std::vector<std::string> kTraceEvents;

// One enable pattern ("name", "-name", "prefix*"): a name without a
// wildcard that is no event is warned about, as qemu-img does; where is
// the "FILE:LINE:" of an events file, or empty.
void trace_pattern(std::string pat, const std::string &where)
{
    if (!pat.empty() && pat[0] == '-') pat.erase(0, 1);
    if (pat.find('*') != std::string::npos) return;
    for (const std::string &e : kTraceEvents) {
        if (e == pat) return;
    }
    std::fflush(stdout);
    std::fprintf(stderr, "%s:%s warning: trace event '%s' does not exist\n", kProg, where.c_str(), pat.c_str());
}

// events=FILE: one pattern a line; blank lines and '#' comments skipped.
// false after printing the error.
bool trace_events_file(const std::string &file)
{
    std::ifstream in(file);
    if (!in) {
        const int e = errno;
        std::fflush(stdout);
        std::fprintf(stderr, "%s:%s: %s\n", kProg, file.c_str(), std::strerror(e));
        return false;
    }
    std::string line;
    for (int n = 1; std::getline(in, line); n++) {
        const size_t b = line.find_first_not_of(" \t\r");
        const size_t e = line.find_last_not_of(" \t\r");
        if (b == std::string::npos || line[b] == '#') continue;
        trace_pattern(line.substr(b, e - b + 1), file + ":" + std::to_string(n) + ":");
    }
    return true;
}

// SPEC split at single commas (",," is a comma) into key=value pairs; a
// first item without '=' is the value of "enable".
std::vector<std::pair<std::string, std::string>> trace_spec_items(const std::string &spec)
{
    std::vector<std::string> parts(1);
    for (size_t i = 0; i < spec.size(); i++) {
        if (spec[i] == ',' && i + 1 < spec.size() && spec[i + 1] == ',') {
            parts.back() += ',';
            i++;
        } else if (spec[i] == ',') {
            parts.emplace_back();
        } else {
            parts.back() += spec[i];
        }
    }
    std::vector<std::pair<std::string, std::string>> items;
    for (size_t i = 0; i < parts.size(); i++) {
        const size_t eq = parts[i].find('=');
        if (eq == std::string::npos && i == 0) {
            items.emplace_back("enable", parts[i]);
        } else if (eq == std::string::npos) {
            items.emplace_back(parts[i], "on");
        } else {
            items.emplace_back(parts[i].substr(0, eq), parts[i].substr(eq + 1));
        }
    }
    return items;
}

} // namespace

int trace_option(const std::string &spec)
{
    if (spec == "help") {
        // The list of trace events: empty.
        for (const std::string &e : kTraceEvents) std::printf("%s\n", e.c_str());
        return 0;
    }
    std::string enable, events, file;
    for (const auto &[key, value] : trace_spec_items(spec)) {
        if (key == "enable") {
            enable = value;
        } else if (key == "events") {
            events = value;
        } else if (key == "file") {
            file = value;
        } else {
            error("Invalid parameter '%s'", key.c_str());
            return 1;
        }
    }
    if (!enable.empty()) trace_pattern(enable, "");
    if (!events.empty() && !trace_events_file(events)) return 1;
    if (!file.empty()) {
        // The trace output goes there: created (emptied), nothing written.
        std::FILE *f = std::fopen(file.c_str(), "w");
        if (!f) {
            error("Error opening logfile %s: %s", file.c_str(), std::strerror(errno));
            return 1;
        }
        std::fclose(f);
    }
    return -1;
}

} // namespace img
} // namespace bg
