// tools/main.cc -- entry point of the blockgraph binary: dispatches to the
// subcommands declared in tools/commands.h.

#include "tools/commands.h"
#include "tools/dropin.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

namespace bg {
namespace {

// The one table of subcommands, in the order "blockgraph --help" lists them.
// Adding a subcommand: declare cmd_<name> in tools/commands.h, add one line
// here, e.g.
//     {"io", "Run I/O requests against an image", cmd_io},
//     {"daemon", "Run a block graph with exports until stopped", cmd_daemon},
//     {"mount", "Export an image as a file over FUSE", cmd_mount},
//     {"umount", "Remove a FUSE export", cmd_umount},
//     {"img", "Create, inspect and convert images", cmd_img},
constexpr Subcommand kSubcommands[] = {
    {"version", "Print the version and exit", cmd_version},
    {"help", "Show this help, or a command's help", cmd_help},
    {"io", "Run I/O requests against an image", cmd_io},
    {"daemon", "Run a block graph with exports until stopped", cmd_daemon},
    {"mount", "Export an image as a file over FUSE", cmd_mount},
    {"umount", "Remove a FUSE export", cmd_umount},
    {"img", "Create, inspect and convert images", cmd_img},
    {"nbd", "Serve an image over NBD (qemu-nbd), or list a server's exports", cmd_nbd},
};

const Subcommand *find_subcommand(const char *name) noexcept
{
    for (const Subcommand &cmd : kSubcommands) {
        if (std::strcmp(cmd.name, name) == 0) {
            return &cmd;
        }
    }
    return nullptr;
}

void print_usage(std::FILE *out) noexcept
{
    std::fputs("Usage: blockgraph <command> [arguments]\n"
               "       blockgraph --version | --help\n"
               "\n"
               "A user-space block layer: image formats, a block graph and exports.\n"
               "\n"
               "Commands:\n",
               out);
    for (const Subcommand &cmd : kSubcommands) {
        std::fprintf(out, "  %-10s %s\n", cmd.name, cmd.summary);
    }
    std::fputs("\n"
               "Run 'blockgraph help <command>' or 'blockgraph <command> --help'\n"
               "for a command's options.\n",
               out);
}

bool is_help_flag(const char *arg) noexcept
{
    return std::strcmp(arg, "--help") == 0 || std::strcmp(arg, "-h") == 0;
}

bool is_version_flag(const char *arg) noexcept
{
    return std::strcmp(arg, "--version") == 0 || std::strcmp(arg, "-V") == 0;
}

int unknown_command(const char *name) noexcept
{
    std::fprintf(stderr, "blockgraph: unknown command '%s'; see 'blockgraph --help'\n", name);
    return 1;
}

// argv[0] is the subcommand name.
int dispatch(int argc, char **argv)
{
    const char *name = argv[0];
    if (is_help_flag(name)) {
        print_usage(stdout);
        return 0;
    }
    if (is_version_flag(name)) {
        return cmd_version(1, argv);
    }
    if (name[0] == '-') {
        std::fprintf(stderr, "blockgraph: unknown option '%s'; see 'blockgraph --help'\n", name);
        return 1;
    }
    const Subcommand *cmd = find_subcommand(name);
    if (cmd == nullptr) {
        return unknown_command(name);
    }
    return cmd->fn(argc, argv);
}

// Run as a drop-in (tools/dropin.h): the subcommand `tool` names with
// argv[1..] as its arguments.
int dispatch_dropin(const DropinTool *tool, int argc, char **argv)
{
    dropin_select(tool);
    const Subcommand *cmd = find_subcommand(tool->subcommand);
    if (cmd == nullptr) return unknown_command(tool->subcommand);
    char name[32];
    std::snprintf(name, sizeof(name), "%s", tool->subcommand);
    argv[0] = name;
    return cmd->fn(argc, argv);
}

// Report a failed write to stdout (e.g. "blockgraph --help > /dev/full").
int finish_stdout(int status) noexcept
{
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        std::fprintf(stderr, "%s: error writing to standard output: %s\n", tool_prog("blockgraph"),
                     std::strerror(errno));
        return status == 0 ? 1 : status;
    }
    return status;
}

}  // namespace

int cmd_version(int argc, char **argv)
{
    if (argc > 1 && is_help_flag(argv[1])) {
        std::puts("Usage: blockgraph version\n"
                  "Print the version of blockgraph and exit.");
        return 0;
    }
    if (argc > 1) {
        std::fprintf(stderr, "blockgraph version: unexpected argument '%s'\n", argv[1]);
        return 1;
    }
    std::puts("blockgraph version " BG_VERSION);
    return 0;
}

int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stdout);
        return 0;
    }
    if (argc > 2) {
        std::fprintf(stderr, "blockgraph help: expected at most one command name\n");
        return 1;
    }
    if (is_help_flag(argv[1])) {
        std::puts("Usage: blockgraph help [<command>]\n"
                  "Show the list of commands, or the help of <command>.");
        return 0;
    }
    const Subcommand *cmd = find_subcommand(argv[1]);
    if (cmd == nullptr) {
        return unknown_command(argv[1]);
    }
    // Every subcommand answers "--help"; run it as "<command> --help".
    char help_flag[] = "--help";
    char *sub_argv[] = {argv[1], help_flag, nullptr};
    return cmd->fn(2, sub_argv);
}

}  // namespace bg

int main(int argc, char **argv)
{
    const bg::DropinTool *dropin = bg::dropin_find(argc > 0 ? argv[0] : nullptr);
    if (dropin == nullptr && argc < 2) {
        bg::print_usage(stderr);
        return 1;
    }
    int status;
    try {
        status = dropin ? bg::dispatch_dropin(dropin, argc, argv) : bg::dispatch(argc - 1, argv + 1);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s: internal error: uncaught exception: %s\n", bg::tool_prog("blockgraph"), e.what());
        status = 1;
    } catch (...) {
        std::fprintf(stderr, "%s: internal error: uncaught exception\n", bg::tool_prog("blockgraph"));
        status = 1;
    }
    return bg::finish_stdout(status);
}
