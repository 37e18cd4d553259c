// Unit tests for qapi/user-object.h's secret decoding and util/user-objects.h.
// The ciphertexts were made with openssl (key "0123456789abcdef" twice, IV
// "fedcba9876543210"):
//   printf 'hello secret' | openssl enc -aes-256-cbc -K 3031...6566 -iv 6665...3130 | base64
// (-nopad for the unpadded block); qemu-img 7.2 gives the same errors.
#include <cstdlib>
#include <string>

#include "qapi/user-object.h"
#include "util/user-objects.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

// Keeps the string alive across check's macro (which stores a pointer).
#define EXPECT_STR(expr, want)                                                                           \
    do {                                                                                                 \
        const std::string got_ = (expr);                                                                 \
        ck_assert_str_eq(got_.c_str(), want);                                                      \
    } while (0)

namespace {

const std::string kKey = "0123456789abcdef0123456789abcdef";
const std::string kIv = "ZmVkY2JhOTg3NjU0MzIxMA==";   // "fedcba9876543210"

std::string decrypt_ok(const std::string &b64)
{
    auto r = secret_decrypt(kKey, kIv, b64, true);
    ck_assert_msg(r.ok(), "%s", r.ok() ? "" : r.msg().c_str());
    return r.value();
}

std::string decrypt_err(const std::string &in, bool b64, const std::string &iv = kIv)
{
    auto r = secret_decrypt(kKey, iv, in, b64);
    ck_assert(!r.ok());
    return r.msg();
}

} // namespace

START_TEST(test_base64)
{
    EXPECT_STR(secret_base64_decode("YWJj").value(), "abc");
    EXPECT_STR(secret_base64_decode("YWI=").value(), "ab");
    EXPECT_STR(secret_base64_decode("YWJj\n").value(), "abc");
    ck_assert_uint_eq(secret_base64_decode("abc").value().size(), 0);   // an incomplete group decodes to nothing
    EXPECT_STR(secret_base64_decode("a!b").msg(), "Base64 data contains invalid characters");
    EXPECT_STR(secret_base64_decode(std::string("YW\0j", 4)).msg(),
                     "Base64 data contains embedded NUL characters");
}
END_TEST

START_TEST(test_decrypt)
{
    EXPECT_STR(decrypt_ok("x18oi7m6hiD3SwBfvzrhAA=="), "hello secret");
    EXPECT_STR(decrypt_ok("BJiXSBVu/WANms7iJn3Mww=="), "");
    EXPECT_STR(decrypt_ok("9E7Ti56IJCxF5VJXx8nSST3ybvJT3meXJ3GJaofiI4I="), "0123456789abcdef");
    // raw ciphertext
    auto raw = secret_base64_decode("x18oi7m6hiD3SwBfvzrhAA==");
    auto r = secret_decrypt(kKey, kIv, raw.value(), false);
    ck_assert(r.ok());
    EXPECT_STR(r.value(), "hello secret");
    EXPECT_STR(decrypt_err("9E7Ti56IJCxF5VJXx8nSSQ==", true),
                     "Incorrect number of padding bytes (102) found on decrypted data");
    EXPECT_STR(decrypt_err("abc", false), "Length 3 must be a multiple of block size 16");
    EXPECT_STR(decrypt_err("abc", false, "YWJj"), "IV should be 16 bytes in length not 3");
    EXPECT_STR(decrypt_err("a!b", true), "Base64 data contains invalid characters");
}
END_TEST

START_TEST(test_table)
{
    UserObject k;
    k.type = "secret";
    k.id = "k";
    k.secret = kKey;
    ck_assert(user_object_add(k).ok());
    EXPECT_STR(user_object_add(k).msg(),
                     "attempt to add duplicate property 'k' to object (type 'container')");
    EXPECT_STR(secret_lookup("k").value(), kKey.c_str());
    EXPECT_STR(secret_lookup("x").msg(), "No secret with id 'x'");
    UserObject a;
    a.type = "authz-list";
    a.id = "a";
    a.rules = {{"bob", false, false}, {"b*", true, true}};
    ck_assert(user_object_add(a).ok());
    EXPECT_STR(secret_lookup("a").msg(), "Object with id 'a' is not a secret");
    ck_assert(!authz_list_check("a", "bob").value());
    ck_assert(authz_list_check("a", "bill").value());
    ck_assert(!authz_list_check("a", "alice").value());   // the default policy: deny
    ck_assert(!authz_list_check("k", "bob").ok());
    ck_assert(user_object_del("a").ok());
    EXPECT_STR(user_object_del("a").msg(), "object 'a' not found");
}
END_TEST

static Suite *user_object_suite()
{
    Suite *s = suite_create("user-object");
    TCase *tc = tcase_create("secrets");
    tcase_add_test(tc, test_base64);
    tcase_add_test(tc, test_decrypt);
    tcase_add_test(tc, test_table);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(user_object_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
