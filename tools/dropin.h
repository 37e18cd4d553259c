// tools/dropin.h -- blockgraph as a drop-in for QEMU's tools (busybox-style).
//
// Run through a link (or with argv[0]) named "qemu-img", "qemu-io",
// "qemu-nbd" or "qemu-storage-daemon", blockgraph behaves as the matching
// subcommand ("img", "io", "nbd", "daemon") and every message it prints starts
// with that program name, as QEMU's do. Run as "blockgraph <subcommand>", the
// messages keep the "blockgraph <subcommand>" prefix.
//
// Threading: dropin_select() is called once by main() before anything else
// runs; the readers may then be called from any thread.
#pragma once

namespace bg {

struct DropinTool {
    const char *link;        // the QEMU program name: "qemu-img"
    const char *subcommand;  // the blockgraph subcommand it runs: "img"
};

// The tool whose QEMU name is the last component of argv0, or nullptr.
const DropinTool *dropin_find(const char *argv0) noexcept;

// The table of drop-in names, terminated by {nullptr, nullptr}.
const DropinTool *dropin_tools() noexcept;

// Records that blockgraph runs as `tool` (never nullptr) and makes the log
// messages start with its QEMU name.
void dropin_select(const DropinTool *tool) noexcept;

// The QEMU program name blockgraph runs as ("qemu-img"), or nullptr when it
// runs as "blockgraph".
const char *dropin_prog() noexcept;

// The program name for messages: dropin_prog() when set, else `fallback`
// ("blockgraph img").
const char *tool_prog(const char *fallback) noexcept;

// Prints the "--version" text of the tool to stdout. As a drop-in, the first
// line has the form of QEMU's ("qemu-img version 7.2.0 (blockgraph 0.1.0)";
// qemu-nbd's is "qemu-nbd 7.2.0 (blockgraph 0.1.0)"): the QEMU version is the
// one whose behaviour blockgraph follows. Otherwise "<fallback> version 0.1.0".
void print_tool_version(const char *fallback) noexcept;

} // namespace bg
