// tools/trace-opt.h -- the -T/--trace option of QEMU's tools.
//
// QEMU's tools take "-T [[enable=]PATTERN][,events=FILE][,file=FILE]" to
// enable trace events. blockgraph has no QEMU trace events, so the option
// is accepted and checked as QEMU checks it, with the same messages, but
// enables nothing: a pattern matches no event (an exact name gets QEMU's
// "trace event 'X' does not exist" warning), "help" lists no events,
// events=FILE is read (its lines are patterns like the above, warned about
// with "FILE:LINE:"), and file=FILE is created empty (truncated), the log
// no event writes to. Used by img, io and nbd alike.
//
// Threading model: main thread, while parsing the command line.
#pragma once

namespace bg {

// Parses one -T argument. Returns -1 to go on; 0 after "help" (the event
// list, which is empty: the caller exits with status 0); 1 after printing
// the error to stderr prefixed "PROG: " (QEMU's texts):
//   "Invalid parameter 'KEY'" (an unknown key, or a short-form boolean
//   after the first element, which first gets QEMU's deprecation warning),
//   "PROG:FILE: <errno text>" (events=FILE unreadable, QEMU's spacing),
//   "Error opening logfile FILE: <errno text>" (file=FILE).
int parse_trace_option(const char *arg, const char *prog);

} // namespace bg
