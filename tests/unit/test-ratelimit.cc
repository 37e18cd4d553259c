// Unit tests for util/ratelimit.h: the ledger arithmetic, with the clock
// passed in (no sleeping, no timing).
#include <cstdint>
#include <cstdlib>

#include "util/ratelimit.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {
constexpr int64_t kSec = 1000000000;
constexpr uint64_t kMiB = 1 << 20;
}

START_TEST(test_disabled)
{
    RateLimit r;
    ck_assert(!r.enabled());
    for (int i = 0; i < 5; i++) ck_assert_int_eq(r.account(1ULL << 40, 0), 0);
}
END_TEST

// Back-to-back requests wait for the bytes booked before them.
START_TEST(test_back_to_back)
{
    RateLimit r(kMiB);   // 1 MiB/s
    ck_assert(r.enabled());
    ck_assert_int_eq(r.account(2 * kMiB, 100), 0);               // first goes at once
    ck_assert_int_eq(r.account(kMiB, 100), 2 * kSec);            // after the 2 MiB are paid
    ck_assert_int_eq(r.account(kMiB / 2, 100 + 2 * kSec), kSec); // 1 MiB still booked ahead
}
END_TEST

// Idle time is not saved up: after a pause the next request goes at once,
// and the one after it waits again.
START_TEST(test_idle_not_banked)
{
    RateLimit r(1000);   // 1000 bytes/s
    ck_assert_int_eq(r.account(1000, 0), 0);
    ck_assert_int_eq(r.account(500, 10 * kSec), 0);
    ck_assert_int_eq(r.account(500, 10 * kSec), kSec / 2);
    // Part-way through the wait: only the rest.
    ck_assert_int_eq(r.account(1, 10 * kSec + kSec / 4), 3 * kSec / 4);
}
END_TEST

// The average over a long run: n equal requests, each dispatched when told,
// finish at (n - 1) * size / rate.
START_TEST(test_average)
{
    RateLimit r(3 * kMiB);
    int64_t now = 5;
    for (int i = 0; i < 30; i++) now += r.account(kMiB, now);
    // 29 MiB paid at 3 MiB/s before the 30th went: 29/3 s (integer ns).
    ck_assert_int_ge(now - 5, 29 * kSec / 3 - 30);
    ck_assert_int_le(now - 5, 29 * kSec / 3 + 30);
}
END_TEST

// Huge requests and rates neither overflow nor wrap to a negative wait.
START_TEST(test_extremes)
{
    RateLimit slow(1);
    ck_assert_int_eq(slow.account(UINT64_MAX, 0), 0);
    ck_assert_int_gt(slow.account(1, 0), 0);
    RateLimit fast(UINT64_MAX);
    ck_assert_int_eq(fast.account(1ULL << 40, 0), 0);
    ck_assert_int_le(fast.account(1ULL << 40, 0), 60);
}
END_TEST

static Suite *ratelimit_suite()
{
    Suite *s = suite_create("ratelimit");
    TCase *tc = tcase_create("ledger");
    tcase_add_test(tc, test_disabled);
    tcase_add_test(tc, test_back_to_back);
    tcase_add_test(tc, test_idle_not_banked);
    tcase_add_test(tc, test_average);
    tcase_add_test(tc, test_extremes);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(ratelimit_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
