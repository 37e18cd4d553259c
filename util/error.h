// Error reporting for control paths (open, configuration, graph changes).
//
// Two channels: I/O paths return a negative errno as int or
// int64_t and never allocate; control paths return Result<T>, which carries
// either a value or an Error: a positive errno plus a human-readable message
// with context ("blockdev 'disk0': file '/x.qcow2': No such file or directory").
#pragma once

#include <cassert>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace bg {

struct Error {
    int err = EINVAL;          // positive errno describing the class of failure
    std::string msg;           // one line, no trailing newline
    // The message as QEMU words it, without the context prefixed() adds
    // (the drop-in tools print this one); empty: the same as msg.
    std::string qemu_msg;

    // Returns a copy with "prefix: " put in front of the message. The
    // prefix is context (a node or child path) that QEMU's message lacks:
    // qemu_text() stays what it was.
    Error prefixed(const std::string &prefix) const {
        return Error{err, prefix + ": " + msg, qemu_text()};
    }
    // Returns a copy whose qemu_text() is "wrapper: " + qemu_text(), for the
    // wrappers QEMU puts around an inner error ("Could not open backing
    // file"); msg is unchanged.
    Error qemu_wrapped(const std::string &wrapper) const {
        return Error{err, msg, wrapper + ": " + qemu_text()};
    }
    // Returns a copy whose qemu_text() is `text` (QEMU words the condition
    // differently from msg); msg is unchanged.
    Error with_qemu_text(const std::string &text) const {
        return Error{err, msg, text};
    }
    // The message in QEMU's words (see qemu_msg).
    const std::string &qemu_text() const { return qemu_msg.empty() ? msg : qemu_msg; }
};

// printf-style constructor for Error.
Error make_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Error whose message is "<what>: strerror(err)".
Error errno_error(int err, const std::string &what);

template <typename T>
class [[nodiscard]] Result {
  public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error e) : v_(std::move(e)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }

    T &value() & { assert(ok()); return std::get<0>(v_); }
    T &&value() && { assert(ok()); return std::get<0>(std::move(v_)); }
    const T &value() const & { assert(ok()); return std::get<0>(v_); }
    T &operator*() & { return value(); }
    T *operator->() { return &value(); }

    const Error &error() const { assert(!ok()); return std::get<1>(v_); }
    int err() const { return error().err; }
    const std::string &msg() const { return error().msg; }

  private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
  public:
    Result() = default;
    Result(Error e) : ok_(false), e_(std::move(e)) {}

    bool ok() const { return ok_; }
    explicit operator bool() const { return ok_; }
    const Error &error() const { assert(!ok_); return e_; }
    int err() const { return error().err; }
    const std::string &msg() const { return error().msg; }

  private:
    bool ok_ = true;
    Error e_;
};

using Status = Result<void>;

// Propagate the error of a Result expression, optionally adding context.
#define BG_TRY(expr)                                                        \
    do {                                                                    \
        auto &&bg_try_r_ = (expr);                                          \
        if (!bg_try_r_.ok()) return bg_try_r_.error();                      \
    } while (0)

// decl = the value of a Result expression, or return its error:
//   BG_TRY_ASSIGN(BlockNode *n, find_node(name));
#define BG_TRY_CAT2_(a, b) a##b
#define BG_TRY_CAT_(a, b) BG_TRY_CAT2_(a, b)
#define BG_TRY_ASSIGN(decl, expr) BG_TRY_ASSIGN_(decl, expr, BG_TRY_CAT_(bg_try_v_, __LINE__))
#define BG_TRY_ASSIGN_(decl, expr, tmp)                                     \
    auto tmp = (expr);                                                      \
    if (!tmp.ok()) return tmp.error();                                      \
    decl = std::move(tmp.value())

} // namespace bg
