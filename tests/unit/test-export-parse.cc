// Unit tests for qapi/export-parse.h: --export and --object arguments in
// keyval and JSON form, with the exact error messages.
#include <cerrno>
#include <cstdlib>
#include <string>

#include "qapi/export-parse.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

using namespace bg;

namespace {

BlockExportOptions ok_export(const std::string &arg)
{
    auto r = parse_export_arg(arg);
    if (!r.ok()) ck_abort_msg("'%s' failed: %s", arg.c_str(), r.msg().c_str());
    return std::move(r).value();
}

void bad_export(const std::string &arg, const char *msg)
{
    auto r = parse_export_arg(arg);
    ck_assert_msg(!r.ok(), "'%s' was accepted", arg.c_str());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert_str_eq(r.msg().c_str(), msg);
}

IoThreadOptions ok_object(const std::string &arg)
{
    auto r = parse_object_arg(arg);
    if (!r.ok()) ck_abort_msg("'%s' failed: %s", arg.c_str(), r.msg().c_str());
    return std::move(r).value();
}

void bad_object(const std::string &arg, const char *msg)
{
    auto r = parse_object_arg(arg);
    ck_assert_msg(!r.ok(), "'%s' was accepted", arg.c_str());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert_str_eq(r.msg().c_str(), msg);
}

} // namespace

START_TEST(test_export_keyval_minimal)
{
    // The qemu-storage-daemon command line, unchanged.
    auto o = ok_export("type=fuse,id=e,node-name=q,mountpoint=disk.raw,writable=on");
    ck_assert_str_eq(o.type.c_str(), "fuse");
    ck_assert_str_eq(o.id.c_str(), "e");
    ck_assert_str_eq(o.node_name.c_str(), "q");
    ck_assert_str_eq(o.fuse.mountpoint.c_str(), "disk.raw");
    ck_assert(o.writable);
    ck_assert(!o.writethrough);
    ck_assert(!o.fixed_iothread);
    ck_assert(!o.fuse.growable);
    ck_assert(o.fuse.allow_other == OnOffAuto::kAuto);
    ck_assert(o.iothreads.empty());

    // Implied "type", defaults.
    auto d = ok_export("fuse,id=e,node-name=q,mountpoint=m");
    ck_assert_str_eq(d.type.c_str(), "fuse");
    ck_assert(!d.writable);
}
END_TEST

START_TEST(test_export_keyval_all)
{
    auto o = ok_export("fuse,id=exp-1.a_b,node-name=q,mountpoint=/a,,b,writable=yes,writethrough=true,"
                       "growable=on,allow-other=off,iothread=io0,fixed-iothread=on,allow-inactive=off");
    ck_assert_str_eq(o.id.c_str(), "exp-1.a_b");
    ck_assert_str_eq(o.fuse.mountpoint.c_str(), "/a,b");
    ck_assert(o.writable);
    ck_assert(o.writethrough);
    ck_assert(o.fuse.growable);
    ck_assert(o.fuse.allow_other == OnOffAuto::kOff);
    ck_assert_uint_eq(o.iothreads.size(), 1);
    ck_assert_str_eq(o.iothreads[0].c_str(), "io0");
    ck_assert(o.fixed_iothread);

    auto f = ok_export("fuse,id=e,node-name=q,mountpoint=m,writable=no,allow-other=on");
    ck_assert(!f.writable);
    ck_assert(f.fuse.allow_other == OnOffAuto::kOn);

    auto l = ok_export("fuse,id=e,node-name=q,mountpoint=m,iothread.0=a,iothread.1=b,iothread.2=c");
    ck_assert_uint_eq(l.iothreads.size(), 3);
    ck_assert_str_eq(l.iothreads[0].c_str(), "a");
    ck_assert_str_eq(l.iothreads[2].c_str(), "c");
}
END_TEST

START_TEST(test_export_json)
{
    auto o = ok_export(" {\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\","
                       "\"writable\":true,\"growable\":false,\"allow-other\":\"auto\","
                       "\"iothread\":[\"a\",\"b\"]}");
    ck_assert(o.writable);
    ck_assert_uint_eq(o.iothreads.size(), 2);
    ck_assert_str_eq(o.iothreads[1].c_str(), "b");

    auto s = ok_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\","
                       "\"iothread\":\"io0\",\"fixed-iothread\":true}");
    ck_assert_uint_eq(s.iothreads.size(), 1);
    ck_assert(s.fixed_iothread);

    // JSON typing is exact.
    bad_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\",\"writable\":\"on\"}",
               "export 'e': writable: expected a boolean");
    bad_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":1,\"mountpoint\":\"m\"}",
               "export 'e': node-name: expected a string");
    bad_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\",\"iothread\":1}",
               "export 'e': iothread: expected a string or a list of strings");
    bad_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\",\"iothread\":[\"a\",2]}",
               "export 'e': iothread: expected a string or a list of strings");
    bad_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\",\"iothread\":[]}",
               "export 'e': iothread: the list is empty");
    bad_export("{\"type\":\"fuse\",\"id\":\"e\",\"node-name\":\"q\",\"mountpoint\":\"m\",\"allow-other\":true}",
               "export 'e': allow-other: expected a string");
    bad_export("{\"type\":\"fuse\",\"id\":7,\"node-name\":\"q\",\"mountpoint\":\"m\"}",
               "export: id: expected a string");
    bad_export("{\"id\":\"e\"}", "export 'e': missing required key 'type'");
    // Syntax errors come from the JSON layer (its wording is its own).
    auto r = parse_export_arg("{\"type\":\"fuse\",");
    ck_assert(!r.ok());
    ck_assert_int_eq(r.err(), EINVAL);
    ck_assert_msg(r.msg().rfind("JSON: ", 0) == 0, "%s", r.msg().c_str());
}
END_TEST

START_TEST(test_export_errors)
{
    bad_export("type=nbd,id=e,node-name=q,mountpoint=m", "export 'e': unknown key 'mountpoint'");
    bad_export("vhost-user-blk,id=e", "export 'e': unknown export type 'vhost-user-blk'");
    bad_export("id=e,node-name=q", "export 'e': missing required key 'type'");
    bad_export("", "export: missing required key 'type'");
    bad_export("fuse,node-name=q,mountpoint=m", "export: missing required key 'id'");
    bad_export("fuse,id=e,mountpoint=m", "export 'e': missing required key 'node-name'");
    bad_export("fuse,id=e,node-name=q", "export 'e': missing required key 'mountpoint'");
    bad_export("fuse,id=e,node-name=,mountpoint=m", "export 'e': node-name: must not be empty");
    bad_export("fuse,id=e,node-name=q,mountpoint=", "export 'e': mountpoint: must not be empty");
    bad_export("fuse,id=1e,node-name=q,mountpoint=m",
               "export '1e': invalid id (a letter first, then letters, digits, '-', '.', '_')");
    bad_export("fuse,id=,node-name=q,mountpoint=m",
               "export '': invalid id (a letter first, then letters, digits, '-', '.', '_')");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,foo=1", "export 'e': unknown key 'foo'");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,size=1", "export 'e': unknown key 'size'");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,writable=maybe",
               "export 'e': writable: 'maybe' is not a valid boolean (on, off, true, false, yes, no)");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,growable=1",
               "export 'e': growable: '1' is not a valid boolean (on, off, true, false, yes, no)");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,writethrough=",
               "export 'e': writethrough: '' is not a valid boolean (on, off, true, false, yes, no)");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,fixed-iothread=x",
               "export 'e': fixed-iothread: 'x' is not a valid boolean (on, off, true, false, yes, no)");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,allow-other=maybe",
               "export 'e': allow-other: 'maybe' is not one of: on, off, auto");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,iothread=",
               "export 'e': iothread: must not be empty");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,iothread.0=a,iothread.1=a",
               "export 'e': iothread: 'a' is listed twice");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,iothread.a=x",
               "export 'e': iothread: expected a string or a list of strings");
    bad_export("fuse,id=e,node-name=q,mountpoint=m,iothread.0=a,iothread.1=b,fixed-iothread=on",
               "export 'e': fixed-iothread=on cannot be used with a list of iothreads");
    bad_export("fuse,id=e,node-name.x=q,mountpoint=m", "export 'e': node-name: expected a string");
    // Syntax errors come from the keyval layer unchanged.
    bad_export("fuse,id=e,id=f", "keyval: duplicate key 'id'");
    bad_export("fuse,id", "keyval: expected '=' after 'id'");
}
END_TEST

START_TEST(test_object)
{
    auto o = ok_object("iothread,id=io0");
    ck_assert_str_eq(o.id.c_str(), "io0");
    // Unset poll-max-ns: the event loop's default; grow/shrink 0 (built-in).
    ck_assert(!o.poll.max_ns);
    ck_assert_uint_eq(o.poll.grow, 0);
    ck_assert_uint_eq(o.poll.shrink, 0);
    o = ok_object("qom-type=iothread,id=io1,poll-max-ns=65536,poll-grow=3,poll-shrink=0x10,"
                  "aio-max-batch=0,thread-pool-min=1,thread-pool-max=64");
    ck_assert_str_eq(o.id.c_str(), "io1");
    ck_assert_uint_eq(*o.poll.max_ns, 65536);
    ck_assert_uint_eq(o.poll.grow, 3);
    ck_assert_uint_eq(o.poll.shrink, 16);
    o = ok_object("{\"qom-type\":\"iothread\",\"id\":\"io2\",\"poll-max-ns\":0}");
    ck_assert_str_eq(o.id.c_str(), "io2");
    ck_assert_uint_eq(*o.poll.max_ns, 0);

    bad_object("secret,id=s0,data=x", "object type 'secret' is not supported");
    bad_object("{\"qom-type\":\"memory-backend-ram\",\"id\":\"m\"}",
               "object type 'memory-backend-ram' is not supported");
    bad_object("id=io0", "object 'io0': missing required key 'qom-type'");
    bad_object("iothread", "object: missing required key 'id'");
    bad_object("iothread,id=0io",
               "object '0io': invalid id (a letter first, then letters, digits, '-', '.', '_')");
    bad_object("iothread,id=io0,foo=1", "object 'io0': unknown key 'foo'");
    bad_object("iothread,id=io0,poll-max-ns=x", "object 'io0': poll-max-ns: 'x' is not a valid integer");
    bad_object("iothread,id=io0,poll-grow=-1",
               "object 'io0': poll-grow: -1 is out of range (0 to 9223372036854775807)");
    bad_object("iothread,id=io0,thread-pool-max=4294967296",
               "object 'io0': thread-pool-max: 4294967296 is out of range (0 to 2147483647)");
    bad_object("{\"qom-type\":\"iothread\",\"id\":\"io0\",\"poll-shrink\":\"1\"}",
               "object 'io0': poll-shrink: expected an integer");
    bad_object("{\"qom-type\":\"iothread\",\"id\":\"io0\",\"aio-max-batch\":-3}",
               "object 'io0': aio-max-batch: -3 is out of range (0 to 9223372036854775807)");
    bad_object("{\"qom-type\":1}", "object: qom-type: expected a string");
}
END_TEST

START_TEST(test_qapi_id)
{
    ck_assert(is_valid_qapi_id("a"));
    ck_assert(is_valid_qapi_id("Export-1.x_y"));
    ck_assert(is_valid_qapi_id(std::string(100, 'a')));   // no length limit (unlike node names)
    ck_assert(!is_valid_qapi_id(""));
    ck_assert(!is_valid_qapi_id("1a"));
    ck_assert(!is_valid_qapi_id("_a"));
    ck_assert(!is_valid_qapi_id("a b"));
    ck_assert(!is_valid_qapi_id("a/b"));
}
END_TEST

static Suite *export_parse_suite()
{
    Suite *s = suite_create("export-parse");
    TCase *tc = tcase_create("export");
    tcase_add_test(tc, test_export_keyval_minimal);
    tcase_add_test(tc, test_export_keyval_all);
    tcase_add_test(tc, test_export_json);
    tcase_add_test(tc, test_export_errors);
    suite_add_tcase(s, tc);
    TCase *to = tcase_create("object");
    tcase_add_test(to, test_object);
    tcase_add_test(to, test_qapi_id);
    suite_add_tcase(s, to);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(export_parse_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
