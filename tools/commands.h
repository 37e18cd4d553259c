// tools/commands.h -- the blockgraph command-line tool's subcommands.
//
// Each subcommand is one function with main()'s signature.  tools/main.cc
// holds the one table that maps names to functions; adding a subcommand is a
// declaration here, a line in that table and a file tools/<name>.cc.
//
// Contract for every cmd_*():
//   - argv[0] is the subcommand name ("img"), argv[1..argc-1] its arguments;
//   - "--help" / "-h" prints the subcommand's usage to stdout and returns 0;
//   - returns the process exit status: 0 success, 1 error (after printing
//     "blockgraph <name>: <message>" to stderr);
//   - must not let an exception escape (main() catches any as a last resort
//     and reports an internal error).
// Subcommands run on the main thread before any event loop exists; those that
// need one create it themselves.

#pragma once

#include "util/version.h"

namespace bg {

struct Subcommand {
    const char *name;     // what the user types: "blockgraph <name> ..."
    const char *summary;  // one line for "blockgraph --help", no final period
    int (*fn)(int argc, char **argv);
};

// Defined in tools/main.cc.
int cmd_version(int argc, char **argv);
int cmd_help(int argc, char **argv);

int cmd_io(int argc, char **argv);         // tools/io.cc
int cmd_daemon(int argc, char **argv);     // tools/daemon.cc
int cmd_mount(int argc, char **argv);      // tools/mount.cc
int cmd_umount(int argc, char **argv);     // tools/mount.cc
int cmd_img(int argc, char **argv);        // tools/img.cc
int cmd_nbd(int argc, char **argv);        // tools/nbd.cc

}  // namespace bg
