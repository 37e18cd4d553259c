// tools/img.h -- shared pieces of "blockgraph img" (tools/img*.cc).
//
// blockgraph img takes qemu-img's subcommands, arguments and output; see
// docs/img.md. Each subcommand is one function img_<name>(argc, argv) with
// argv[0] the subcommand name; it returns the process exit status.
//
// Threading model: main thread; the dispatcher creates the AioContext
// before a subcommand runs (ImgContext), so every helper here may use
// run_in_coroutine().
#pragma once

#include <getopt.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "block/block.h"
#include "tools/image-open.h"
#include "util/error.h"

namespace bg {
namespace img {

// The program name that starts messages: "blockgraph img", or "qemu-img" as a
// drop-in (set by cmd_img() from tools/dropin.h before anything is printed).
inline const char *kProg = "blockgraph img";

// ---- messages ----
// "blockgraph img: <msg>\n" on stderr (qemu-img's error_report).
void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Like error() plus qemu-img's "Try ... --help" line; returns 1.
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// getopt's failure for argv: unknown option or missing argument. Returns 1.
int bad_option(int argc, char **argv, const char *with_arg_opts);

// printf unless quiet (-q).
extern bool g_quiet;
void qprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- numbers ----
// A number in QEMU's size syntax (qapi/size.h strtosz: suffixes k/M/G/T/P/E,
// fractions, hex) within [min, max], as qemu-img reads its numeric options
// (its cvtnum): a hex number with a suffix prints QEMU's deprecation
// warning. Errors, qemu-img's texts for the option's name:
//   EINVAL "Invalid NAME specified. You may use k, M, G, T, P or E suffixes
//          for\n<prog>: kilobytes, megabytes, gigabytes, terabytes, petabytes
//          and exabytes." (two lines when printed with error())
//   ERANGE "Invalid NAME specified. Must be between MIN and MAX."
Result<int64_t> parse_img_number(const std::string &s, const char *name, int64_t min, int64_t max);
// parse_img_number(s, "image size", 0, INT64_MAX).
Result<int64_t> parse_img_size(const std::string &s);
// -r of convert and commit: bytes per second (0: no limit), with the size
// syntax. false (after printing qemu-img's message, parse_img_number's for
// "rate limit") if bad.
bool parse_rate_limit(const char *arg, uint64_t *out);
// qemu's size_to_str: "64 MiB", "1.26 MiB", "0 B".
std::string size_to_str(uint64_t v);
// A positive decimal integer (for counts like -m, -c, -d). false if bad.
bool parse_int(const char *s, int64_t min, int64_t max, int64_t *out);

// ---- output format ----
enum class OutputFormat { kHuman, kJson };
bool parse_output_format(const char *arg, OutputFormat *out);
// JSON as QEMU prints it (4-space indent, ": " separators), object keys in
// the order QEMU's QDict iterates them (see qdict_bucket).
std::string json_pretty(const nlohmann::json &j);
// The bucket (0..511) of key in a QEMU QDict: QEMU prints a dictionary in
// bucket order, the most recently added key first within a bucket.
unsigned qdict_bucket(const std::string &key);

// ---- opening images ----
struct OpenArgs {
    std::string name;          // file name, json:{...}, or with image_opts a description
    std::string format;        // -f; empty: probe
    bool image_opts = false;
    bool read_only = true;
    bool check_repair = false; // check -r: the top node opens for repair
    bool force_share = false;  // -U
    std::string cache = "writeback";   // -t / -T
    bool no_backing = false;   // open without the backing chain (backing: null)
    std::optional<BlockdevAioOptions> aio;   // -i, for file nodes
    nlohmann::json extra;      // extra top-node options (object) or null
    // What the image is to the command, for the open error ("new backing
    // file": "Could not open new backing file 'x': ..."); empty: none.
    std::string role;
};
// Opens an image; on failure prints one line naming the image and the
// cause and returns nullptr. Prints the probed-raw warning when writable.
std::unique_ptr<OpenImage> open_img(const OpenArgs &a);
// -l of convert and measure: "snapshot.id=ID[,snapshot.name=NAME]" (either
// key) or a bare id-or-name.
struct SnapshotSpec {
    std::optional<std::string> id, name;   // from snapshot.* keys
    std::string id_or_name;                // bare form
};
// false (after printing "Invalid parameter 'KEY'; failed in parsing
// snapshot param 'ARG'", qemu-img's two lines in one) if bad.
bool parse_snapshot_param(const char *arg, std::optional<SnapshotSpec> *out);
// Opens a as a read-only view of the snapshot s names (a bare name: by id
// first, then by name, as qemu-img). On failure prints one line
// ("Failed to load snapshot: Can't find snapshot", ...) and returns nullptr.
std::unique_ptr<OpenImage> open_img_snapshot(OpenArgs a, const SnapshotSpec &s);
// The message open_img prints, without printing it.
std::string open_error_message(const std::string &name, const Error &e);

// ---- progress (-p) ----
// qemu-img's progress output on stdout, on a terminal, pipe or file alike:
// "    (45.12/100%)" and a carriage return, printed at 0%, at 100% and
// whenever the percentage moved by more than one point since the last
// print; finish() (or the destructor) ends the output with a newline.
// Disabled by -q. Not thread-safe: main thread only.
class Progress {
  public:
    explicit Progress(bool enabled);
    ~Progress();
    // fraction in [0, 1] (clamped); bytes_done is unused (kept for callers).
    void update(double fraction, int64_t bytes_done = 0);
    // The final newline (once; nothing when disabled).
    void finish();
    bool active() const { return active_; }

  private:
    bool active_ = false;
    bool finished_ = false;
    float last_print_ = 0;
};

// ---- shared image information ----
// The ImageInfo of one node as qemu-img info prints it (QEMU's field
// names). Fills what the node and its driver can tell.
nlohmann::json image_info(BlockNode *node, const std::string &filename);
void print_image_info_human(const nlohmann::json &info);
// "Format specific information:" and the indented dump, as qemu-img info
// (and qemu-io's info) print it; nothing when specific is not a dict.
void print_format_specific_human(const InfoValue &specific);

// Writes the create options of a format for "-o help" / "-o ?".
int print_create_options_help(const std::string &format);

// ---- subcommands ----
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_check(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_map(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);
int img_bitmap(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_amend(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_bench(int argc, char **argv);
int img_dd(int argc, char **argv);

}  // namespace img
}  // namespace bg
