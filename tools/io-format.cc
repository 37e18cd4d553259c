// tools/io-format.cc -- "blockgraph io": number arguments and qemu-io's
// output formats (sizes, timings, reports, hex dumps). See tools/io-cmd.h.
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "qapi/size.h"
#include "tools/io-cmd.h"

namespace bg {
namespace io {
namespace {

// qemu-io's cvtnum: a byte count in QEMU's size syntax (qapi/size.h), at
// most INT64_MAX. Returns the value, -EINVAL (not a number) or -ERANGE (too
// large). A hex number with a unit suffix gets QEMU's deprecation warning.
int64_t cvtnum(const char *s)
{
    uint64_t v = 0;
    bool hex_suffix = false;
    int err = strtosz(s, &v, &hex_suffix);
    if (hex_suffix) std::fprintf(stderr, "%s: warning: Using a multiplier suffix on hex numbers is deprecated: %s\n", kProg, s);
    if (err) return err;
    if (v > static_cast<uint64_t>(INT64_MAX)) return -ERANGE;
    return static_cast<int64_t>(v);
}

void print_cvtnum_err(int64_t rc, const char *arg)
{
    if (rc == -EINVAL) {
        std::printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", arg);
    } else if (rc == -ERANGE) {
        std::printf("Parsing error: argument too large -- %s\n", arg);
    } else {
        std::printf("Parsing error: %s\n", arg);
    }
}

// timestr: "0:00:01.50" (verbose or a second or more) or "00.25 sec".
std::string timestr(const Elapsed &t, bool verbose)
{
    char buf[64];
    double frac = static_cast<double>(t.nsec) / 1e9;
    if (verbose || t.sec) {
        std::snprintf(buf, sizeof(buf), "%u:%02u:%05.2f", static_cast<unsigned>(t.sec / 3600),
                      static_cast<unsigned>((t.sec % 3600) / 60), static_cast<double>(t.sec % 60) + frac);
    } else {
        std::snprintf(buf, sizeof(buf), "%05.2f sec", frac);
    }
    return buf;
}

} // namespace

int parse_num(const char *arg, const char *shown, int64_t *out)
{
    int64_t v = cvtnum(arg);
    if (v < 0) {
        print_cvtnum_err(v, shown);
        return static_cast<int>(v);
    }
    *out = v;
    return 0;
}

int parse_num(const char *arg, int64_t *out)
{
    return parse_num(arg, arg, out);
}

int parse_pattern(const char *arg)
{
    char *end = nullptr;
    long pattern = std::strtol(arg, &end, 0);
    if (pattern < 0 || pattern > UCHAR_MAX || *end != '\0') {
        std::printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return static_cast<int>(pattern);
}

// qemu-io's cvtstr: "4 KiB", "1.500 MiB", "512 bytes".
std::string cvtstr(double value)
{
    static const struct {
        int shift;
        const char *suffix;
    } units[] = {{60, " EiB"}, {50, " PiB"}, {40, " TiB"}, {30, " GiB"}, {20, " MiB"}, {10, " KiB"}};
    char buf[64];
    const char *suffix = " bytes";
    bool done = false;
    for (const auto &u : units) {
        double unit = static_cast<double>(1LL << u.shift);
        if (value >= unit) {
            std::snprintf(buf, sizeof(buf), "%.3f", value / unit);
            suffix = u.suffix;
            done = true;
            break;
        }
    }
    if (!done) std::snprintf(buf, sizeof(buf), "%f", value);
    std::string s = buf;
    size_t trim = s.find(".000");
    if (trim != std::string::npos) s.erase(trim);
    return s + suffix;
}

Elapsed elapsed_since(const struct timespec &t1)
{
    struct timespec t2;
    clock_gettime(CLOCK_MONOTONIC, &t2);
    Elapsed e{t2.tv_sec - t1.tv_sec, t2.tv_nsec - t1.tv_nsec};
    if (e.nsec < 0) {
        e.nsec += 1000000000;
        e.sec--;
    }
    return e;
}

// The two report lines (or the -C line) of a completed request.
void print_report(const char *op, const Elapsed &t, int64_t offset, int64_t count, int64_t total, int cnt,
                  bool cflag)
{
    std::string ts = timestr(t, cflag);
    double secs = t.seconds();
    if (!cflag) {
        std::printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op, total, count, offset);
        std::printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", cvtstr(static_cast<double>(total)).c_str(), cnt,
                    ts.c_str(), cvtstr(static_cast<double>(total) / secs).c_str(), cnt / secs);
    } else {
        std::printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts.c_str(), static_cast<double>(total) / secs,
                    cnt / secs);
    }
}

void dump_buffer(const uint8_t *p, int64_t offset, int64_t len)
{
    for (int64_t i = 0; i < len; i += 16) {
        std::printf("%08" PRIx64 ":  ", static_cast<uint64_t>(offset + i));
        for (int64_t j = 0; j < 16 && i + j < len; j++) std::printf("%02x ", p[i + j]);
        std::printf(" ");
        for (int64_t j = 0; j < 16 && i + j < len; j++) {
            std::putchar(std::isalnum(p[i + j]) ? p[i + j] : '.');
        }
        std::printf("\n");
    }
}

// Splits a command line at single spaces, dropping empty words (qemu-io's
// breakline: tabs are not separators).
std::vector<std::string> breakline(const std::string &line)
{
    std::vector<std::string> words;
    size_t pos = 0;
    while (pos <= line.size()) {
        size_t sp = line.find(' ', pos);
        if (sp == std::string::npos) sp = line.size();
        if (sp > pos) words.push_back(line.substr(pos, sp - pos));
        pos = sp + 1;
    }
    return words;
}

} // namespace io
} // namespace bg
