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

} // namespace

int parse_trace_option(const char *arg, const char *prog)
{
    std::map<std::string, std::string> opts;   // the last value of a key wins
    std::vector<std::string> elems = split_opts(arg);
    for (size_t i = 0; i < elems.size(); i++) {
        const std::string &e = elems[i];
        size_t eq = e.find('=');
        if (eq != std::string::npos) {
            std::string key = e.substr(0, eq);
            if (key != "enable" && key != "events" && key != "file") {
                std::fprintf(stderr, "%s: Invalid parameter '%s'\n", prog, key.c_str());
                return 1;
            }
            opts[key] = e.substr(eq + 1);
        } else if (i == 0) {
            opts["enable"] = e;
        } else {
            // A short-form boolean ("x" for x=on, "nox" for x=off).
            bool no = e.compare(0, 2, "no") == 0;
            std::string key = no ? e.substr(2) : e;
            std::fprintf(stderr, "%s: warning: short-form boolean option '%s' deprecated\n", prog, e.c_str());
            std::fprintf(stderr, "Please use %s=%s instead\n", key.c_str(), no ? "off" : "on");
            std::fprintf(stderr, "%s: Invalid parameter '%s'\n", prog, key.c_str());
            return 1;
        }
    }
    auto en = opts.find("enable");
    if (en != opts.end() && en->second == "help") return 0;   // no events to list
    auto ev = opts.find("events");
    if (ev != opts.end()) {
        std::ifstream in(ev->second);
        if (!in) {
            std::fprintf(stderr, "%s:%s: %s\n", prog, ev->second.c_str(), std::strerror(errno ? errno : ENOENT));
            return 1;
        }
        // Each line is a pattern; none matches an event of ours.
    }
    auto file = opts.find("file");
    if (file != opts.end()) {
        int fd = open(file->second.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0) {
            std::fprintf(stderr, "%s: Error opening logfile %s: %s\n", prog, file->second.c_str(),
                         std::strerror(errno));
            return 1;
        }
        close(fd);
    }
    return -1;
}

} // namespace bg
