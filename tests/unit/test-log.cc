// Unit tests for util/log.h: level parsing, filtering and the line format.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "util/log.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

// Captures what is written to stderr while fn runs (through a pipe: the
// messages are short and fit in its buffer).
template <typename Fn>
std::string capture_stderr(Fn fn)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    int saved = dup(STDERR_FILENO);
    ck_assert_int_ge(saved, 0);
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    fn();
    dup2(saved, STDERR_FILENO);   // closes the last write end
    close(saved);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    close(p[0]);
    return out;
}

} // namespace

START_TEST(test_parse_level)
{
    LogLevel l = LogLevel::kError;
    ck_assert(log_parse_level("debug", &l));
    ck_assert(l == LogLevel::kDebug);
    ck_assert(log_parse_level("info", &l));
    ck_assert(l == LogLevel::kInfo);
    ck_assert(log_parse_level("warn", &l));
    ck_assert(l == LogLevel::kWarn);
    l = LogLevel::kDebug;
    ck_assert(log_parse_level("warning", &l));
    ck_assert(l == LogLevel::kWarn);
    ck_assert(log_parse_level("error", &l));
    ck_assert(l == LogLevel::kError);
    // Unknown names fail and leave *out alone.
    l = LogLevel::kInfo;
    for (const char *bad : {"", "verbose", "debug2", "err", " info", "info "}) {
        ck_assert_msg(!log_parse_level(bad, &l), "'%s' parsed", bad);
        ck_assert(l == LogLevel::kInfo);
    }
}
END_TEST

START_TEST(test_levels_filter)
{
    ck_assert(log_get_level() == LogLevel::kWarn);   // quiet by default
    ck_assert(log_enabled(LogLevel::kError));
    ck_assert(log_enabled(LogLevel::kWarn));
    ck_assert(!log_enabled(LogLevel::kInfo));
    std::string out = capture_stderr([] {
        log_debug("hidden %d", 1);
        log_info("hidden %d", 2);
        log_warn("shown %d", 3);
        log_error("shown %s", "four");
    });
    ck_assert_str_eq(out.c_str(), "blockgraph: warning: shown 3\nblockgraph: error: shown four\n");
    log_set_level(LogLevel::kDebug);
    ck_assert(log_get_level() == LogLevel::kDebug);
    out = capture_stderr([] {
        log_debug("d");
        log_info("i");
    });
    ck_assert_str_eq(out.c_str(), "blockgraph: debug: d\nblockgraph: info: i\n");
    log_set_level(LogLevel::kError);
    out = capture_stderr([] { log_warn("w"); });
    ck_assert_str_eq(out.c_str(), "");
}
END_TEST

START_TEST(test_long_message_truncated)
{
    std::string big(5000, 'x');
    std::string out = capture_stderr([&] { log_error("%s", big.c_str()); });
    ck_assert_uint_le(out.size(), 1024);
    ck_assert_uint_gt(out.size(), 900);
    ck_assert_int_eq(out.back(), '\n');
    ck_assert(out.compare(0, 19, "blockgraph: error: ") == 0);
    ck_assert_uint_eq(out.find('\n'), out.size() - 1);   // one line
}
END_TEST

START_TEST(test_init_from_env)
{
    setenv("BLOCKGRAPH_LOG", "debug", 1);
    log_init_from_env();
    ck_assert(log_get_level() == LogLevel::kDebug);
    setenv("BLOCKGRAPH_LOG", "nonsense", 1);
    log_init_from_env();
    ck_assert(log_get_level() == LogLevel::kDebug);   // unchanged
    setenv("BLOCKGRAPH_LOG", "error", 1);
    log_init_from_env();
    ck_assert(log_get_level() == LogLevel::kError);
    unsetenv("BLOCKGRAPH_LOG");
    log_init_from_env();
    ck_assert(log_get_level() == LogLevel::kError);
}
END_TEST

static Suite *log_suite()
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, test_parse_level);
    tcase_add_test(tc, test_levels_filter);
    tcase_add_test(tc, test_long_message_truncated);
    tcase_add_test(tc, test_init_from_env);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(log_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
