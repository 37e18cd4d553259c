// Unit tests for BlockNode::passthrough_fd (block/passthrough.cc and the
// drivers' do_passthrough_fd hooks): which nodes say a host file holds
// their bytes 1:1, which descriptor they give, and why the others refuse.
// Nodes are opened from --blockdev strings.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "block/block.h"
#include "qapi/block-parse.h"
#include "util/aio.h"

// Last: check.h defines a macro named fail() that breaks <ios>.
#include <check.h>

#include "tests/unit/tmpdir.h"

using namespace bg;
using namespace bgtest;

namespace {

struct Env {
    std::unique_ptr<AioContext> ctx = AioContext::create();
    BlockGraph graph;
    std::string img = tmp_path("img");

    Env()
    {
        int fd = open(img.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
        close(fd);
    }
    ~Env() { graph.close_all(); }

    // probed: the open flag a tool sets when it guessed the format.
    BlockNode *add(const std::string &arg, bool probed = false)
    {
        auto o = parse_blockdev_arg(builtin_drivers(), arg);
        ck_assert_msg(o.ok(), "parse %s: %s", arg.c_str(), o.ok() ? "" : o.msg().c_str());
        o.value().probed = probed;
        auto r = graph.add_node(o.value());
        ck_assert_msg(r.ok(), "add_node %s: %s", arg.c_str(), r.ok() ? "" : r.msg().c_str());
        return r.value();
    }
    BlockNode *file(const std::string &extra = "")
    {
        return add("driver=file,node-name=f,filename=" + img + extra);
    }
};

// True if fd is open on path's file.
bool same_file(int fd, const std::string &path)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

} // namespace

START_TEST(test_file_node)
{
    Env e;
    BlockNode *f = e.file();
    std::string why;
    int fd = f->passthrough_fd(true, &why);
    ck_assert_msg(fd >= 0, "refused: %s", why.c_str());
    ck_assert(same_file(fd, e.img));
    ck_assert_int_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);
    ck_assert_int_eq(f->passthrough_fd(false, &why), fd);
}
END_TEST

START_TEST(test_file_direct_and_read_only)
{
    Env e;
    std::string why;
    BlockNode *d = e.add("driver=file,node-name=d,filename=" + e.img + ",cache.direct=on");
    ck_assert_int_eq(d->passthrough_fd(false, &why), -1);
    ck_assert_str_eq(why.c_str(), "cache.direct=on");
    BlockNode *r = e.add("driver=file,node-name=r,filename=" + e.img + ",read-only=on");
    ck_assert_int_ge(r->passthrough_fd(false, &why), 0);
    ck_assert_int_eq(r->passthrough_fd(true, &why), -1);
    ck_assert_msg(why.find("read-only") != std::string::npos, "why: %s", why.c_str());
}
END_TEST

START_TEST(test_raw_forwards)
{
    Env e;
    BlockNode *f = e.file();
    BlockNode *raw = e.add("driver=raw,node-name=r,file=f");
    std::string why;
    int fd = raw->passthrough_fd(true, &why);
    ck_assert_msg(fd >= 0, "refused: %s", why.c_str());
    ck_assert_int_eq(fd, f->passthrough_fd(true, &why));
    // Probed: writes to sector 0 are checked, so no descriptor for writing.
    BlockNode *probed = e.add("driver=raw,node-name=p,file=f", true);
    ck_assert_int_ge(probed->passthrough_fd(false, &why), 0);
    ck_assert_int_eq(probed->passthrough_fd(true, &why), -1);
    ck_assert_msg(why.find("probed") != std::string::npos, "why: %s", why.c_str());
}
END_TEST

START_TEST(test_raw_window_refuses)
{
    Env e;
    e.file();
    BlockNode *raw = e.add("driver=raw,node-name=r,file=f,offset=4096");
    std::string why;
    ck_assert_int_eq(raw->passthrough_fd(false, &why), -1);
    ck_assert_str_eq(why.c_str(), "the raw node has an offset or size");
}
END_TEST

START_TEST(test_detect_zeroes_refuses)
{
    Env e;
    e.add("driver=file,node-name=f,filename=" + e.img + ",detect-zeroes=on");
    BlockNode *raw = e.add("driver=raw,node-name=r,file=f");
    std::string why;
    // On the node below: the raw node asks it and gets its refusal.
    ck_assert_int_eq(raw->passthrough_fd(false, &why), -1);
    ck_assert_str_eq(why.c_str(), "detect-zeroes is on (node 'f')");
}
END_TEST

START_TEST(test_other_drivers_refuse)
{
    Env e;
    e.file();
    BlockNode *dbg = e.add("driver=blkdebug,node-name=b,image=f");
    BlockNode *null = e.add("driver=null-co,node-name=n");
    std::string why;
    ck_assert_int_eq(dbg->passthrough_fd(false, &why), -1);
    ck_assert_msg(why.find("blkdebug") != std::string::npos, "why: %s", why.c_str());
    ck_assert_int_eq(null->passthrough_fd(false, &why), -1);
    ck_assert_msg(why.find("layout of its own") != std::string::npos, "why: %s", why.c_str());
}
END_TEST

static Suite *passthrough_suite()
{
    Suite *s = suite_create("passthrough");
    TCase *tc = tcase_create("passthrough");
    tcase_set_timeout(tc, 30);
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, test_file_node);
    tcase_add_test(tc, test_file_direct_and_read_only);
    tcase_add_test(tc, test_raw_forwards);
    tcase_add_test(tc, test_raw_window_refuses);
    tcase_add_test(tc, test_detect_zeroes_refuses);
    tcase_add_test(tc, test_other_drivers_refuse);
    suite_add_tcase(s, tc);
    return s;
}

int main()
{
    SRunner *sr = srunner_create(passthrough_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
