#include "util/error.h"

#include <cstdarg>
#include <cstdio>

namespace bg {

Error make_error(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = nullptr;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    Error e{err, n >= 0 ? std::string(s) : std::string("(message formatting failed)")};
    free(s);
    return e;
}

Error errno_error(int err, const std::string &what)
{
    return Error{err, what + ": " + strerror(err)};
}

} // namespace bg
