// tools/trace-opt.cc -- the -T/--trace option (see tools/trace-opt.h).
#include "tools/trace-opt.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace bg {

namespace {

// The trace events that can be enabled: none.
const std::vector<std::string> kTraceEvents;

// Splits at ',' (",," is a literal comma), as QEMU's option strings are.
std::vector<std::string> split_opts(const char *arg)
{
    std::vector<std::string> out(1);
    for (const char *p = arg; *p; p++) {
        if (*p == ',' && p[1] == ',') {
            out.back() += ',';
            p++;
        } else if (*p == ',') {
            out.emplace_back();
        } else {
            out.back() += *p;
        }
    }
    return out;
}

// One enable pattern ("name", "-name", "prefix*"): a name without a
// wildcard that is no event is warned about, as QEMU's tools do; where is
// the "FILE:LINE:" of an events file, or empty.
void trace_pattern(std::string pat, const std::string &where, const char *prog)
{
    if (!pat.empty() && pat[0] == '-') pat.erase(0, 1);
    if (pat.find('*') != std::string::npos) return;
    for (const std::string &e : kTraceEvents) {
        if (e == pat) return;
    }
    std::fflush(stdout);
    std::fprintf(stderr, "%s:%s warning: trace event '%s' does not exist\n", prog, where.c_str(), pat.c_str());
}

// events=FILE: one pattern a line; blank lines and '#' comments skipped.
// false after printing the error ("PROG:FILE: <errno text>").
bool trace_events_file(const std::string &file, const char *prog)
{
    errno = 0;
    std::ifstream in(file);
    if (!in) {
        std::fflush(stdout);
        std::fprintf(stderr, "%s:%s: %s\n", prog, file.c_str(), std::strerror(errno ? errno : ENOENT));
        return false;
    }
    std::string line;
    for (int n = 1; std::getline(in, line); n++) {
        const size_t b = line.find_first_not_of(" \t\r");
        const size_t e = line.find_last_not_of(" \t\r");
        if (b == std::string::npos || line[b] == '#') continue;
        trace_pattern(line.substr(b, e - b + 1), file + ":" + std::to_string(n) + ":", prog);
    }
    return true;
}

// The elements as key=value (a first element without '=' is "enable").
// false after printing the error.
bool trace_opts(const char *arg, const char *prog, std::map<std::string, std::string> *opts)
{
    std::vector<std::string> elems = split_opts(arg);
    for (size_t i = 0; i < elems.size(); i++) {
        const std::string &e = elems[i];
        size_t eq = e.find('=');
        if (eq != std::string::npos) {
            std::string key = e.substr(0, eq);
            if (key != "enable" && key != "events" && key != "file") {
                std::fflush(stdout);
                std::fprintf(stderr, "%s: Invalid parameter '%s'\n", prog, key.c_str());
                return false;
            }
            (*opts)[key] = e.substr(eq + 1);   // the last value of a key wins
        } else if (i == 0) {
            (*opts)["enable"] = e;
        } else {
            // A short-form boolean ("x" for x=on, "nox" for x=off).
            bool no = e.compare(0, 2, "no") == 0;
            std::string key = no ? e.substr(2) : e;
            std::fflush(stdout);
            std::fprintf(stderr, "%s: warning: short-form boolean option '%s' deprecated\n", prog, e.c_str());
            std::fprintf(stderr, "Please use %s=%s instead\n", key.c_str(), no ? "off" : "on");
            std::fprintf(stderr, "%s: Invalid parameter '%s'\n", prog, key.c_str());
            return false;
        }
    }
    return true;
}

} // namespace

int parse_trace_option(const char *arg, const char *prog)
{
    std::map<std::string, std::string> opts;
    if (!trace_opts(arg, prog, &opts)) return 1;
    auto en = opts.find("enable");
    if (en != opts.end() && en->second == "help") {
        for (const std::string &e : kTraceEvents) std::printf("%s\n", e.c_str());
        return 0;
    }
    if (en != opts.end() && !en->second.empty()) trace_pattern(en->second, "", prog);
    auto ev = opts.find("events");
    if (ev != opts.end() && !trace_events_file(ev->second, prog)) return 1;
    auto file = opts.find("file");
    if (file != opts.end()) {
        // The trace output goes there: created (emptied), nothing written.
        int fd = open(file->second.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0) {
            std::fflush(stdout);
            std::fprintf(stderr, "%s: Error opening logfile %s: %s\n", prog, file->second.c_str(),
                         std::strerror(errno));
            return 1;
        }
        close(fd);
    }
    return -1;
}

} // namespace bg
