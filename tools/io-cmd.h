// tools/io-cmd.h -- shared pieces of "blockgraph io" (tools/io*.cc).
//
// Private to the io tool:
//   tools/io.cc        cmd_io() (command line, command loop), the IoShell
//                      session (open/close, dispatch, stdin), 'open', 'close'
//   tools/io-format.cc numbers (parse_num) and qemu-io's output formats
//   tools/io-table.cc  the command table, its help texts, usage(), 'help'
//   tools/io-rw.cc     I/O buffers, read/readv/write/writev, the aio_* family
//   tools/io-misc.cc   discard, flush, truncate, length, map, alloc, sleep, quit,
//                      sigraise, abort, break, remove_break, resume, wait_break
//   tools/io-reopen.cc 'reopen'
//
// Threading model: main thread only (see IoShell).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "block/block.h"
#include "tools/image-open.h"
#include "util/aio.h"
#include "util/coroutine-lock.h"
#include "util/iov.h"

namespace bg {
namespace io {

// The program name that starts messages: "blockgraph io", or "qemu-io" as a
// drop-in (set by cmd_io() from tools/dropin.h before anything is printed).
inline const char *kProg = "blockgraph io";

// Buffers are offset by this many bytes from an aligned address with -m.
constexpr size_t kMisalignOffset = 16;

// ---------------------------------------------------------------- numbers and formatting (io-format.cc)

// The one way a command reads a number argument: qemu-io's cvtnum, a byte
// count with qemu_strtosz syntax, at most INT64_MAX. On success stores it in
// *out and returns 0; otherwise prints qemu-io's "Parsing error: ..." line
// naming `shown` (default: arg) to stdout and returns -EINVAL (not a number)
// or -ERANGE (too large).
int parse_num(const char *arg, int64_t *out);
int parse_num(const char *arg, const char *shown, int64_t *out);

// -P argument: a byte value in any strtol base. -1 (after a message) if bad.
int parse_pattern(const char *arg);

// qemu-io's cvtstr: "4 KiB", "1.500 MiB", "512 bytes".
std::string cvtstr(double value);

// Time since a CLOCK_MONOTONIC reading, split as a timespec.
struct Elapsed {
    int64_t sec;
    int64_t nsec;
    double seconds() const { return static_cast<double>(sec) + static_cast<double>(nsec) / 1e9; }
};
Elapsed elapsed_since(const struct timespec &t1);

// The two report lines (or the -C line) of a completed request.
void print_report(const char *op, const Elapsed &t, int64_t offset, int64_t count, int64_t total, int cnt,
                  bool cflag);

// -v: a hex and ASCII dump of len bytes at p, addressed from offset.
void dump_buffer(const uint8_t *p, int64_t offset, int64_t len);

// Splits a command line at single spaces, dropping empty words (qemu-io's
// breakline: tabs are not separators).
std::vector<std::string> breakline(const std::string &line);

// ---------------------------------------------------------------- buffers

// An I/O buffer aligned for the image (misaligned by 16 bytes with -m).
class IoBuffer {
  public:
    IoBuffer(size_t len, int fill, size_t align, bool misalign)
        : off_(misalign ? kMisalignOffset : 0), mem_(aligned_alloc_buf(align, len + off_)), len_(len)
    {
        std::memset(mem_.get(), fill, len + off_);
    }
    uint8_t *data() { return mem_.get() + off_; }
    size_t size() const { return len_; }

  private:
    size_t off_;
    AlignedBuf mem_;
    size_t len_;
};

// ---------------------------------------------------------------- the shell

class IoShell;

// Command flags.
constexpr unsigned kCmdGlobal = 1;     // runs with or without an image, no checks
constexpr unsigned kCmdNoFileOk = 2;   // runs without an image

struct Command {
    const char *name;
    const char *altname;
    int (IoShell::*fn)(int argc, char **argv);
    int argmin;
    int argmax;              // -1: no limit
    unsigned flags;
    BlockPerm perm;          // permissions the command needs on the backend
    const char *args;        // nullptr: none
    const char *oneline;
    const char *help;        // extended help, or nullptr
};

// The command interpreter: at most one open image, the outstanding aio
// requests, and the stdin line buffer.
//
// Threading model: main thread only. run_line() runs each command in a
// coroutine (run_in_coroutine), so the cmd_* functions are coroutine_fn: they
// may yield in I/O and must not run the loop themselves. Each cmd_* gets the
// command's words (argv[0] is the command name, as qemu-io passes them to
// getopt) and returns 0 or a negative errno after printing its error. aio
// requests run in coroutines of their own; aio_in_flight_ counts them and
// aio_idle_ wakes whoever waits for them (aio_flush, open, close).
class IoShell {
  public:
    IoShell(AioContext *ctx, bool image_opts, bool misalign)
        : ctx_(ctx), image_opts_(image_opts), misalign_(misalign) {}

    // Opens the image; prints the error and returns false on failure.
    bool open_image_spec(const ImageOpenSpec &spec);
    // Runs one command line; returns 0 or a negative errno.
    int run_line(const std::string &line);
    // Reads the next line of stdin while running the loop; false at EOF.
    bool fetch_line(std::string *line);
    bool quit() const { return quit_; }
    // Waits (outside coroutines) until every aio request has completed.
    void wait_aio_outside();
    void close_image();

    // Commands (run in a coroutine, see the class comment).
    // tools/io-rw.cc
    int coroutine_fn cmd_read(int argc, char **argv);
    int coroutine_fn cmd_readv(int argc, char **argv);
    int coroutine_fn cmd_write(int argc, char **argv);
    int coroutine_fn cmd_writev(int argc, char **argv);
    int coroutine_fn cmd_aio_read(int argc, char **argv);
    int coroutine_fn cmd_aio_write(int argc, char **argv);
    int coroutine_fn cmd_aio_discard(int argc, char **argv);
    int coroutine_fn cmd_aio_flush(int argc, char **argv);
    // tools/io-misc.cc
    int coroutine_fn cmd_flush(int argc, char **argv);
    int coroutine_fn cmd_discard(int argc, char **argv);
    int coroutine_fn cmd_truncate(int argc, char **argv);
    int coroutine_fn cmd_info(int argc, char **argv);
    int coroutine_fn cmd_length(int argc, char **argv);
    int coroutine_fn cmd_map(int argc, char **argv);
    int coroutine_fn cmd_alloc(int argc, char **argv);
    int coroutine_fn cmd_sleep(int argc, char **argv);
    int coroutine_fn cmd_quit(int argc, char **argv);
    int coroutine_fn cmd_sigraise(int argc, char **argv);
    int coroutine_fn cmd_break(int argc, char **argv);
    int coroutine_fn cmd_remove_break(int argc, char **argv);
    int coroutine_fn cmd_resume(int argc, char **argv);
    int coroutine_fn cmd_wait_break(int argc, char **argv);
    [[noreturn]] int coroutine_fn cmd_abort(int argc, char **argv);
    // tools/io.cc
    int coroutine_fn cmd_open(int argc, char **argv);
    int coroutine_fn cmd_close(int argc, char **argv);
    // tools/io-reopen.cc
    int coroutine_fn cmd_reopen(int argc, char **argv);
    // tools/io-table.cc
    int coroutine_fn cmd_help(int argc, char **argv);

  private:
    struct AioRequest;
    static void aio_entry(void *opaque);
    // Counts req as in flight and starts it in a coroutine of its own.
    void start_aio(std::unique_ptr<AioRequest> req);

    BlockBackend *blk() const { return img_ ? img_->blk.get() : nullptr; }
    size_t buf_align() const;
    std::unique_ptr<IoBuffer> alloc_buf(size_t len, int fill) const
    {
        return std::make_unique<IoBuffer>(len, fill, buf_align(), misalign_);
    }
    std::unique_ptr<IoBuffer> alloc_buf_from_file(size_t len, const char *file_name) const;
    bool create_iovec(char **argv, int n, int fill, std::unique_ptr<IoBuffer> *buf, IOVector *qiov) const;
    int coroutine_fn is_allocated(int64_t offset, int64_t bytes, int64_t *pnum);
    int coroutine_fn map_is_allocated(int64_t offset, int64_t bytes, int64_t *pnum);
    void coroutine_fn co_wait_aio();
    int coroutine_fn dispatch(const Command *ct, int argc, char **argv);

    AioContext *ctx_;
    bool image_opts_;
    bool misalign_;
    std::unique_ptr<OpenImage> img_;
    bool quit_ = false;

    int aio_in_flight_ = 0;
    CoQueue aio_idle_;        // woken whenever an aio request completes

    std::string inbuf_;       // stdin bytes not yet consumed
    bool in_eof_ = false;
    bool stdin_readable_ = false;
};

// ---------------------------------------------------------------- the command table (io-table.cc)

// The command named name (or its alternative name); nullptr if none.
const Command *find_command(const char *name);
// Prints the command's "name args -- oneline" line to stdout; returns -EINVAL.
int usage(int (IoShell::*fn)(int, char **));

} // namespace io
} // namespace bg
