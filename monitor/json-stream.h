// monitor/json-stream.h -- splits a byte stream into QMP messages.
//
// A QMP client writes JSON values back to back, with any white space
// between them, possibly several in one write or one split over many. The
// streamer finds where each value ends by counting '{' '[' against '}' ']'
// outside strings (a top-level scalar ends at the next white space or
// structural character), then parses the text of that one value. QEMU's
// relaxations are accepted: strings may be single-quoted ('a "b"' is the
// string a "b"); they are rewritten to standard JSON before parsing.
//
// Errors never stop the stream: a bad message is reported once, its bytes
// are dropped, and splitting goes on with the next value. A byte that no
// JSON token contains (outside strings) is reported as stray, the message
// it was in is dropped, and input is skipped up to the next structural
// character ({}[],:), as QEMU's lexer does: clients resynchronise by
// sending 0x01. Limits per message: kMaxBytes of text and kMaxDepth of
// nesting; a message over either is dropped up to its end (as counted) and
// reported when that end is reached.
//
// Error texts (QEMU's where it has one):
//   JSON parse error, expecting value            a lone '}' or ']'
//   JSON parse error, <parser's reason>          malformed JSON
//   JSON parse error, duplicate key
//   JSON parse error, stray 'c'                 a byte no JSON token has
//   JSON parse error, invalid keyword 'x'        a bad top-level scalar
//   JSON token size limit exceeded                over kMaxBytes
//   JSON nesting depth limit exceeded             deeper than kMaxDepth
//
// Not thread-safe; one streamer per connection. Never throws.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace bg {

class JsonStreamer {
  public:
    static constexpr size_t kMaxBytes = 16u << 20;
    static constexpr int kMaxDepth = 1024;

    // Called once per complete value (its parsed tree) or bad message (an
    // error whose msg() is the text to reply with).
    using Emit = std::function<void(Result<nlohmann::json> &&)>;

    explicit JsonStreamer(Emit emit) : emit_(std::move(emit)) {}

    // Feeds bytes; emits every message that ends in them, in order.
    void feed(const char *data, size_t len);
    // End of input: a pending top-level scalar is complete; a partial
    // object or array is dropped without a reply (the client is gone).
    void finish();

  private:
    void end_value();
    void fail(const std::string &msg);
    void reset();

    Emit emit_;
    std::string buf_;          // the current value's text, translated
    int depth_ = 0;            // open '{' '[' of the current value
    bool in_value_ = false;    // inside a value
    bool scalar_ = false;      // the current value is a top-level scalar
    char quote_ = 0;           // inside a string: its quote character
    bool escape_ = false;      // the previous byte was a backslash in a string
    bool oversized_ = false;   // over a limit: counting to its end, not storing
    bool skipping_ = false;    // after a stray byte: skipping to a structural character
    const char *over_what_ = nullptr;
};

// Parses one complete JSON text as the streamer does (single quotes
// allowed, duplicate keys refused); for tests and the fuzzer.
Result<nlohmann::json> qmp_parse_json(const std::string &text);

} // namespace bg
