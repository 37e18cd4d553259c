// tools/io-table.cc -- "blockgraph io": the command table (names, argument
// counts, permissions, help texts), usage() and the 'help' command. See
// tools/io-cmd.h.
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "tools/io-cmd.h"

namespace bg {
namespace io {
namespace {

// ---- command table, sorted by name as qemu-io's help lists it

const char kReadHelp[] =
    "\n"
    " reads a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the image\n"
    "\n"
    " -b, -- read from the VM state (not supported: fails with ENOTSUP)\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -l, -- length for pattern verification (only with -P)\n"
    " -p, -- ignored for backwards compatibility\n"
    " -P, -- verify that every byte read equals this pattern byte\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -s, -- start offset for pattern verification (only with -P)\n"
    " -v, -- dump the buffer to standard output\n"
    "\n";
const char kReadvHelp[] =
    "\n"
    " reads a range of bytes from the given offset into several buffers\n"
    "\n"
    " Example:\n"
    " 'readv -v 512 1k 1k' - dumps 2 kilobytes read from 512 bytes into the image\n"
    "\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -P, -- verify that every byte read equals this pattern byte\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -v, -- dump the buffer to standard output\n"
    "\n";
const char kWriteHelp[] =
    "\n"
    " writes a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the image\n"
    "\n"
    " The buffer is filled with the byte 0xcd unless -P, -s or -z says otherwise.\n"
    " -b, -- write to the VM state (not supported: fails with ENOTSUP)\n"
    " -c, -- write compressed data (where the format supports it)\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -n, -- with -z, don't allow slow fallback\n"
    " -p, -- ignored for backwards compatibility\n"
    " -P, -- fill the buffer with this pattern byte\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -s, -- fill the buffer with the contents of this file, repeated\n"
    " -u, -- with -z, allow unmapping\n"
    " -z, -- write zeroes (a write-zeroes request, no buffer)\n"
    "\n";
const char kWritevHelp[] =
    "\n"
    " writes a range of bytes from the given offset from several buffers\n"
    "\n"
    " Example:\n"
    " 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the image\n"
    "\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -P, -- fill the buffers with this pattern byte (default 0xcd)\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";
const char kAioReadHelp[] =
    "\n"
    " starts an asynchronous read of a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'aio_read -v 512 1k 1k' - dumps 2 kilobytes read from 512 bytes into the image\n"
    "\n"
    " The command returns at once; the result is printed when the request\n"
    " completes. aio_flush waits for every outstanding request. The command\n"
    " succeeds once the request is started, whatever its outcome.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -i, -- only print that an invalid request would be injected\n"
    " -P, -- verify that every byte read equals this pattern byte\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -v, -- dump the buffer to standard output\n"
    "\n";
const char kAioWriteHelp[] =
    "\n"
    " starts an asynchronous write of a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the image\n"
    "\n"
    " The command returns at once; the result is printed when the request\n"
    " completes. aio_flush waits for every outstanding request. The command\n"
    " succeeds once the request is started, whatever its outcome.\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -f, -- use Force Unit Access semantics\n"
    " -i, -- only print that an invalid request would be injected\n"
    " -P, -- fill the buffers with this pattern byte (default 0xcd)\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    " -u, -- with -z, allow unmapping\n"
    " -z, -- write zeroes (a write-zeroes request, no buffer)\n"
    "\n";
const char kAioDiscardHelp[] =
    "\n"
    " starts an asynchronous discard of a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'aio_discard 512 1k' - discards 1 kilobyte from 512 bytes into the image\n"
    "\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";
const char kDiscardHelp[] =
    "\n"
    " discards a range of bytes from the given offset\n"
    "\n"
    " Example:\n"
    " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the image\n"
    "\n"
    " -C, -- report statistics in a machine parsable format\n"
    " -q, -- quiet mode, do not show I/O statistics\n"
    "\n";
const char kOpenHelp[] =
    "\n"
    " opens an image (a file name, json:{...}, or options with --image-opts)\n"
    "\n"
    " Example:\n"
    " 'open -f raw -t none /tmp/data' - opens a raw image read-write, uncached\n"
    "\n"
    " -r, -- open read-only\n"
    " -s, -- snapshot mode: writes go to a temporary overlay, deleted at close\n"
    " -n, -- disable the host cache, short for -t none\n"
    " -U, -- force shared permissions\n"
    " -C, -- use copy-on-read\n"
    " -k, -- native AIO, short for -i native\n"
    " -f, -- format of the image (default: probed)\n"
    " -i, -- AIO mode (threads, native or io_uring)\n"
    " -t, -- cache mode (none, writeback, writethrough, directsync, unsafe)\n"
    " -d, -- discard mode (ignore or unmap)\n"
    " -o, -- options for the top node, keyval syntax\n"
    "\n";

const char kReopenHelp[] =
    "\n"
    " changes the options of the open image\n"
    "\n"
    " Example:\n"
    " 'reopen -o lazy-refcounts=on' - turns lazy refcounts on for a qcow2 image\n"
    "\n"
    " -r, -- make the image read-only\n"
    " -w, -- make the image read-write\n"
    " -c, -- change the cache mode (none, writeback, writethrough, directsync, unsafe)\n"
    " -o, -- options of the top node to change, keyval syntax (as for 'open')\n"
    "\n";
const char kSigraiseHelp[] =
    "\n"
    " sends the given signal to this process (to simulate a crash)\n"
    "\n"
    " Example:\n"
    " 'sigraise 15' - raises SIGTERM\n"
    "\n"
    " The signal number is the only argument; stdout and stderr are flushed\n"
    " first, the image is neither flushed nor closed.\n"
    "\n";

const Command kCommands[] = {
    {"abort", nullptr, &IoShell::cmd_abort, 0, 0, kCmdNoFileOk, 0, nullptr,
     "simulate a program crash using abort(3)", nullptr},
    {"aio_discard", nullptr, &IoShell::cmd_aio_discard, 2, -1, 0, kPermWrite, "[-Cq] off len",
     "asynchronously discards a number of bytes", kAioDiscardHelp},
    {"aio_flush", nullptr, &IoShell::cmd_aio_flush, 0, 0, 0, 0, nullptr, "completes all outstanding aio requests",
     nullptr},
    {"aio_read", nullptr, &IoShell::cmd_aio_read, 2, -1, 0, 0, "[-Ciqv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes", kAioReadHelp},
    {"aio_write", nullptr, &IoShell::cmd_aio_write, 2, -1, 0, kPermWrite, "[-Cfiquz] [-P pattern] off len [len..]",
     "asynchronously writes a number of bytes", kAioWriteHelp},
    {"alloc", "a", &IoShell::cmd_alloc, 1, 2, 0, 0, "offset [count]", "checks if offset is allocated in the file",
     nullptr},
    {"break", nullptr, &IoShell::cmd_break, 2, 2, 0, 0, "event tag",
     "sets a breakpoint on event and tags the stopped request as tag", nullptr},
    {"close", "c", &IoShell::cmd_close, 0, 0, 0, 0, nullptr, "close the current open file", nullptr},
    {"discard", "d", &IoShell::cmd_discard, 2, -1, 0, kPermWrite, "[-Cq] off len",
     "discards a number of bytes at a specified offset", kDiscardHelp},
    {"flush", "f", &IoShell::cmd_flush, 0, 0, 0, 0, nullptr, "flush all in-core file state to disk", nullptr},
    {"help", "?", &IoShell::cmd_help, 0, 1, kCmdGlobal, 0, "[command]", "help for one or all commands", nullptr},
    {"info", "i", &IoShell::cmd_info, 0, 0, 0, 0, nullptr, "prints information about the current file", nullptr},
    {"length", "l", &IoShell::cmd_length, 0, 0, 0, 0, nullptr, "gets the length of the current file", nullptr},
    {"map", nullptr, &IoShell::cmd_map, 0, 0, 0, 0, "", "prints the allocated areas of a file", nullptr},
    {"open", "o", &IoShell::cmd_open, 1, -1, kCmdNoFileOk, 0,
     "[-rsnkUC] [-f fmt] [-i aio] [-t cache] [-d discard] [-o options] [path]", "open the file specified by path",
     kOpenHelp},
    {"quit", "q", &IoShell::cmd_quit, -1, -1, kCmdGlobal, 0, nullptr, "exit the program", nullptr},
    {"read", "r", &IoShell::cmd_read, 2, -1, 0, 0, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset", kReadHelp},
    {"readv", nullptr, &IoShell::cmd_readv, 2, -1, 0, 0, "[-Cqv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset", kReadvHelp},
    {"remove_break", nullptr, &IoShell::cmd_remove_break, 1, 1, 0, 0, "tag", "remove a breakpoint by tag",
     nullptr},
    {"reopen", nullptr, &IoShell::cmd_reopen, 0, -1, 0, 0, "[(-r|-w)] [-c cache] [-o options]",
     "reopens an image with new options", kReopenHelp},
    {"resume", nullptr, &IoShell::cmd_resume, 1, 1, 0, 0, "tag", "resumes the request tagged as tag", nullptr},
    {"sigraise", nullptr, &IoShell::cmd_sigraise, 1, 1, kCmdNoFileOk, 0, "signal", "raises a signal",
     kSigraiseHelp},
    {"sleep", nullptr, &IoShell::cmd_sleep, 1, 1, kCmdNoFileOk, 0, nullptr,
     "waits for the given value in milliseconds", nullptr},
    {"truncate", "t", &IoShell::cmd_truncate, 1, 3, 0, kPermWrite | kPermResize, "[-m prealloc_mode] off",
     "truncates the current file at the given offset", nullptr},
    {"wait_break", nullptr, &IoShell::cmd_wait_break, 1, 1, 0, 0, "tag", "waits for the suspension of a request",
     nullptr},
    {"write", "w", &IoShell::cmd_write, 2, -1, 0, kPermWrite, "[-bcCfnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset", kWriteHelp},
    {"writev", nullptr, &IoShell::cmd_writev, 2, -1, 0, kPermWrite, "[-Cfq] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset", kWritevHelp},
};

const Command *command_by_fn(int (IoShell::*fn)(int, char **))
{
    for (const Command &c : kCommands) {
        if (c.fn == fn) return &c;
    }
    return nullptr;
}

void help_oneline(const char *name, const Command &ct)
{
    std::printf("%s ", name);
    if (ct.args) std::printf("%s ", ct.args);
    std::printf("-- %s\n", ct.oneline);
}

} // namespace

const Command *find_command(const char *name)
{
    for (const Command &c : kCommands) {
        if (std::strcmp(c.name, name) == 0 || (c.altname && std::strcmp(c.altname, name) == 0)) return &c;
    }
    return nullptr;
}

// Prints "name args -- oneline" and returns -EINVAL.
int usage(int (IoShell::*fn)(int, char **))
{
    const Command *c = command_by_fn(fn);
    std::printf("%s %s -- %s\n", c->name, c->args ? c->args : "", c->oneline);
    return -EINVAL;
}

int IoShell::cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        for (const Command &ct : kCommands) help_oneline(ct.name, ct);
        std::printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    const Command *ct = find_command(argv[1]);
    if (!ct) {
        std::printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], *ct);
    if (ct->help) std::fputs(ct->help, stdout);
    return 0;
}

} // namespace io
} // namespace bg
