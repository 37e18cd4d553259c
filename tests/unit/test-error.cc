// Unit tests for util/error.h: Error, Result<T>, Status and BG_TRY.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "util/error.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

Result<int> parse_positive(const std::string &s)
{
    char *end = nullptr;
    long v = strtol(s.c_str(), &end, 10);
    if (s.empty() || *end) return make_error(EINVAL, "'%s' is not a number", s.c_str());
    if (v <= 0) return make_error(ERANGE, "%ld is not positive", v);
    return static_cast<int>(v);
}

int g_steps;

Result<std::string> describe(const std::string &a, const std::string &b)
{
    g_steps = 0;
    BG_TRY(parse_positive(a));
    g_steps++;
    auto r = parse_positive(b);
    BG_TRY(r);   // an lvalue works too
    g_steps++;
    return "sum " + std::to_string(parse_positive(a).value() + r.value());
}

Status check_both(const std::string &a, const std::string &b)
{
    BG_TRY(describe(a, b));
    return {};
}

} // namespace

START_TEST(test_result_value)
{
    Result<int> r = parse_positive("42");
    ck_assert(r.ok());
    ck_assert(static_cast<bool>(r));
    ck_assert_int_eq(r.value(), 42);
    ck_assert_int_eq(*r, 42);
    *r = 43;   // mutable access
    ck_assert_int_eq(r.value(), 43);
    const Result<int> &cr = r;
    ck_assert_int_eq(cr.value(), 43);

    Result<std::string> s = std::string("abc");
    ck_assert_uint_eq(s->size(), 3);

    // Move-only values move out.
    Result<std::unique_ptr<int>> p = std::make_unique<int>(5);
    ck_assert(p.ok());
    std::unique_ptr<int> owned = std::move(p).value();
    ck_assert_int_eq(*owned, 5);
}
END_TEST

START_TEST(test_result_error)
{
    Result<int> r = parse_positive("x1");
    ck_assert(!r.ok());
    ck_assert(!static_cast<bool>(r));
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert_str_eq(r.msg().c_str(), "'x1' is not a number");
    ck_assert_int_eq(r.error().err, EINVAL);

    Result<int> r2 = parse_positive("-3");
    ck_assert_int_eq(r2.err(), ERANGE);
    ck_assert_str_eq(r2.msg().c_str(), "-3 is not positive");

    Status ok;
    ck_assert(ok.ok());
    Status bad = Error{ENOSPC, "full"};
    ck_assert(!bad.ok());
    ck_assert(!static_cast<bool>(bad));
    ck_assert_int_eq(bad.err(), ENOSPC);
    ck_assert_str_eq(bad.msg().c_str(), "full");
}
END_TEST

START_TEST(test_make_error_format)
{
    Error e = make_error(ENOENT, "blockdev '%s': file '%s': %s (%d)", "disk0", "/x.qcow2", "gone", 7);
    ck_assert_int_eq(e.err, ENOENT);
    ck_assert_str_eq(e.msg.c_str(), "blockdev 'disk0': file '/x.qcow2': gone (7)");
    // Longer than any fixed buffer: nothing is cut.
    std::string longname(5000, 'n');
    Error l = make_error(EIO, "<%s>", longname.c_str());
    ck_assert_uint_eq(l.msg.size(), 5002);
    ck_assert_int_eq(l.msg.front(), '<');
    ck_assert_int_eq(l.msg.back(), '>');
    Error empty = make_error(EPERM, "%s", "");
    ck_assert_str_eq(empty.msg.c_str(), "");
    Error pct = make_error(EINVAL, "100%%");
    ck_assert_str_eq(pct.msg.c_str(), "100%");
}
END_TEST

START_TEST(test_errno_error_and_prefix)
{
    Error e = errno_error(ENOENT, "file '/x.qcow2'");
    ck_assert_int_eq(e.err, ENOENT);
    std::string want = std::string("file '/x.qcow2': ") + strerror(ENOENT);
    ck_assert_str_eq(e.msg.c_str(), want.c_str());
    ck_assert_str_eq(e.msg.c_str(), "file '/x.qcow2': No such file or directory");
    Error p = e.prefixed("blockdev 'disk0'");
    ck_assert_int_eq(p.err, ENOENT);
    ck_assert_str_eq(p.msg.c_str(), "blockdev 'disk0': file '/x.qcow2': No such file or directory");
    ck_assert_str_eq(e.msg.c_str(), want.c_str());   // the original is unchanged
}
END_TEST

START_TEST(test_bg_try)
{
    auto ok = describe("2", "3");
    ck_assert(ok.ok());
    ck_assert_str_eq(ok.value().c_str(), "sum 5");
    ck_assert_int_eq(g_steps, 2);

    auto first = describe("zz", "3");   // stops at the first BG_TRY
    ck_assert(!first.ok());
    ck_assert_int_eq(g_steps, 0);
    ck_assert_int_eq(first.err(), EINVAL);
    ck_assert_str_eq(first.msg().c_str(), "'zz' is not a number");

    auto second = describe("2", "0");   // stops at the second
    ck_assert(!second.ok());
    ck_assert_int_eq(g_steps, 1);
    ck_assert_int_eq(second.err(), ERANGE);

    // Through two levels, into a Status.
    Status st = check_both("1", "-1");
    ck_assert(!st.ok());
    ck_assert_int_eq(st.err(), ERANGE);
    ck_assert_str_eq(st.msg().c_str(), "-1 is not positive");
    ck_assert(check_both("1", "1").ok());
}
END_TEST

static Suite *error_suite()
{
    Suite *s = suite_create("error");
    TCase *tc = tcase_create("result");
    tcase_add_test(tc, test_result_value);
    tcase_add_test(tc, test_result_error);
    tcase_add_test(tc, test_make_error_format);
    tcase_add_test(tc, test_errno_error_and_prefix);
    tcase_add_test(tc, test_bg_try);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(error_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
