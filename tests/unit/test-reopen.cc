// Graph changes: blockdev-snapshot's overlay insertion (and its undo),
// node replacement, and blockdev-reopen (read-only <-> read-write on every
// driver, child changes, atomicity, QEMU's error texts). Images are made
// and judged with the real qemu-img / qemu-io where they can judge.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/testdrv.h"
#include "tests/unit/tmpdir.h"
#include "util/aio.h"
#include "util/coroutine.h"

#include <check.h>

using namespace bg;
using bgtest::tmp_path;

namespace {

// Runs a shell command; returns its exit status.
int sh(const std::string &cmd)
{
    int r = system((cmd + " >/dev/null 2>&1").c_str());
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

void must_sh(const std::string &cmd) { ck_assert_msg(sh(cmd) == 0, "failed: %s", cmd.c_str()); }

BlockNode *must_add(BlockGraph &g, const std::string &arg)
{
    auto r = g.add_node(must_parse(arg));
    ck_assert_msg(r.ok(), "%s: %s", arg.c_str(), r.ok() ? "" : r.error().msg.c_str());
    return r.value();
}

std::unique_ptr<BlockBackend> must_backend(BlockNode *n, BlockPerm perm)
{
    auto r = BlockBackend::create(n, perm, kPermAll & ~kPermResize, "export 'e'");
    ck_assert_msg(r.ok(), "backend: %s", r.ok() ? "" : r.error().msg.c_str());
    return std::move(r.value());
}

int pwrite_pattern(BlockBackend *b, int64_t off, int64_t len, int pattern)
{
    std::vector<uint8_t> buf(static_cast<size_t>(len), static_cast<uint8_t>(pattern));
    return run_in_coroutine([&] { return b->co_pwrite(off, len, buf.data()); });
}

// True if [off, off+len) of b reads as pattern.
bool reads_pattern(BlockBackend *b, int64_t off, int64_t len, int pattern)
{
    std::vector<uint8_t> buf(static_cast<size_t>(len), 0x5a);
    int r = run_in_coroutine([&] { return b->co_pread(off, len, buf.data()); });
    if (r < 0) return false;
    for (uint8_t c : buf) {
        if (c != pattern) return false;
    }
    return true;
}

void expect_error(const Status &s, const char *msg)
{
    ck_assert_msg(!s.ok(), "expected an error: %s", msg);
    ck_assert_str_eq(s.msg().c_str(), msg);
}

std::string reopen_arg(const std::string &base, bool ro) { return base + ",read-only=" + (ro ? "on" : "off"); }

Status reopen1(BlockGraph &g, const std::string &arg) { return g.reopen({must_parse(arg)}); }

} // namespace

// ---------------------------------------------------------------- blockdev-snapshot

// file <- qcow2 "base", exported through a backend with writes in flight;
// the overlay (created with backing = base's image, opened with backing
// null) takes base's place: reads see overlay over base, writes land in the
// overlay; qemu-io and qemu-img judge the files afterwards.
START_TEST(test_snapshot_overlay)
{
    auto ctx = AioContext::create();
    const std::string base = tmp_path("snap-base.qcow2"), ov = tmp_path("snap-ov.qcow2");
    must_sh("qemu-img create -f qcow2 " + base + " 4M");
    must_sh("qemu-img create -f qcow2 -b " + base + " -F qcow2 " + ov + " 4M");
    {
        BlockGraph g(&test_registry());
        // Between base and its file a recorder that delays every write, so
        // that the writers below are surely in flight at the switch.
        must_add(g, "driver=file,node-name=bf,filename=" + base);
        BlockNode *tm = must_add(g, "driver=test-mem,node-name=tm,file=bf");
        BlockNode *b = must_add(g, "driver=qcow2,node-name=base,file=tm");
        BlockNode *o = must_add(g, "{\"driver\": \"qcow2\", \"node-name\": \"ov\", \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"" + ov + "\"}}");
        auto blk = must_backend(b, kPermConsistentRead | kPermWrite);
        ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 65536, 0xaa), 0);
        TestNode::from(tm)->set_latency(test_op_bit(TestOp::kWrite), 1000 * 1000);

        // Eight writers, each writing 0xbb over its own 64 KiB, in 4 KiB steps.
        int done = 0;
        std::vector<uint8_t> bb(4096, 0xbb);
        for (int i = 1; i <= 8; i++) {
            ctx->co_enter(coroutine_create_fn([&, i] {
                for (int k = 0; k < 16; k++) {
                    ck_assert_int_eq(blk->co_pwrite(i * 65536 + k * 4096, 4096, bb.data()), 0);
                }
                done++;
            }));
        }
        ctx->iterate(false);
        ck_assert_msg(done < 8, "the writers should still be running");
        Status s = g.snapshot_overlay(b, o);
        ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
        ck_assert_ptr_eq(blk->node(), o);
        ck_assert_ptr_eq(o->backing_child()->node(), b);
        ck_assert_int_eq(o->backing_child()->role(), kRoleCow);
        while (done < 8) ctx->iterate(true);

        ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 4096, 0xcc), 0);
        ck_assert(reads_pattern(blk.get(), 0, 4096, 0xcc));
        ck_assert(reads_pattern(blk.get(), 4096, 65536 - 4096, 0xaa));
        for (int i = 1; i <= 8; i++) ck_assert(reads_pattern(blk.get(), i * 65536, 65536, 0xbb));
        // The base still holds what was written before the switch.
        auto rb = BlockBackend::create(b, kPermConsistentRead, kPermAll, "reader").value();
        ck_assert(reads_pattern(rb.get(), 0, 4096, 0xaa));
        // QEMU then makes the base read-only.
        Status ro = g.set_read_only(b, true);
        ck_assert_msg(ro.ok(), "%s", ro.ok() ? "" : ro.msg().c_str());
        ck_assert(b->read_only());
        ck_assert(reads_pattern(blk.get(), 4096, 4096, 0xaa));
        rb.reset();
        blk.reset();
    }
    must_sh("qemu-img check " + base);
    must_sh("qemu-img check " + ov);
    must_sh("qemu-io -r -c 'read -P 0xcc 0 4k' -c 'read -P 0xaa 4k 60k' -c 'read -P 0xbb 64k 512k' " + ov);
    must_sh("qemu-io -r -c 'read -P 0xaa 0 64k' -c 'read -P 0 4190208 4k' " + base);
    // Nothing but the first 4 KiB (and what was in flight) went to the overlay.
    ck_assert_int_ne(sh("qemu-io -r -c 'read -P 0xcc 0 4k' " + base), 0);
}
END_TEST

START_TEST(test_snapshot_overlay_undo)
{
    auto ctx = AioContext::create();
    const std::string base = tmp_path("undo-base.qcow2"), ov = tmp_path("undo-ov.qcow2");
    must_sh("qemu-img create -f qcow2 " + base + " 1M");
    must_sh("qemu-img create -f qcow2 -b " + base + " -F qcow2 " + ov + " 1M");
    {
        BlockGraph g;
        BlockNode *b = must_add(g, "driver=qcow2,node-name=base,file.driver=file,file.filename=" + base);
        BlockNode *o = must_add(g, "{\"driver\": \"qcow2\", \"node-name\": \"ov\", \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"" + ov + "\"}}");
        BlockNode *flt = must_add(g, "driver=blkdebug,node-name=top,image=base");
        auto blk = must_backend(flt, kPermConsistentRead | kPermWrite);
        BlockPerm before = b->file_child()->perm();
        ck_assert(g.snapshot_overlay(b, o).ok());
        ck_assert_ptr_eq(flt->file_child()->node(), o);
        g.snapshot_overlay_undo(b, o);
        ck_assert_ptr_eq(flt->file_child()->node(), b);
        ck_assert_ptr_null(o->backing_child());
        ck_assert(o->parents().empty());
        ck_assert_int_eq(b->parents().size(), 1);
        ck_assert_int_eq(b->file_child()->perm(), before);
        ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 4096, 0x77), 0);
        blk.reset();
        ck_assert(g.remove_node("top").ok());
        ck_assert(g.remove_node("ov").ok());   // nobody uses the overlay any more
    }
    must_sh("qemu-io -r -c 'read -P 0x77 0 4k' " + base);
    must_sh("qemu-img check " + base);
}
END_TEST

START_TEST(test_snapshot_overlay_errors)
{
    auto ctx = AioContext::create();
    const std::string base = tmp_path("err-base.qcow2"), ov = tmp_path("err-ov.qcow2"), ov2 = tmp_path("err-ov2.qcow2"),
                      b2 = tmp_path("err-b2.qcow2"), ovro = tmp_path("err-ovro.qcow2");
    must_sh("qemu-img create -f qcow2 " + base + " 1M");
    must_sh("qemu-img create -f qcow2 " + ov + " 1M");
    must_sh("qemu-img create -f qcow2 " + ovro + " 1M");
    must_sh("qemu-img create -f qcow2 " + b2 + " 1M");
    must_sh("qemu-img create -f qcow2 -b " + b2 + " -F qcow2 " + ov2 + " 1M");
    BlockGraph g;
    BlockNode *b = must_add(g, "driver=qcow2,node-name=base,file.driver=file,file.node-name=bf,file.filename=" + base);
    BlockNode *o = must_add(g, "{\"driver\": \"qcow2\", \"node-name\": \"ov\", \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"" + ov + "\"}}");
    BlockNode *withb = must_add(g, "driver=qcow2,node-name=ov2,file.driver=file,file.filename=" + ov2 + ",read-only=on");
    BlockNode *n = must_add(g, "driver=null-co,node-name=n");
    BlockNode *flt = must_add(g, "driver=blkdebug,node-name=dbg,image=n");
    expect_error(g.snapshot_overlay(b, b), "Making 'base' a backing child of 'base' would create a cycle");
    auto blk = must_backend(b, kPermConsistentRead | kPermWrite);
    expect_error(g.snapshot_overlay(b, b), "The overlay is already in use");
    expect_error(g.snapshot_overlay(b, n), "The overlay does not support backing images");
    expect_error(g.snapshot_overlay(b, g.find("bf")), "The overlay is already in use");
    expect_error(g.snapshot_overlay(b, flt), "Filters cannot be used as overlays");
    expect_error(g.snapshot_overlay(b, withb), "The overlay already has a backing image");
    // The node already is somebody's backing image.
    const std::string busy = "Node '" + withb->backing_child()->node()->node_name() +
                             "' is busy: node is used as backing hd of 'ov2'";
    expect_error(g.snapshot_overlay(withb->backing_child()->node(), o), busy.c_str());
    // A writer cannot move to a read-only overlay: nothing changes.
    BlockNode *ro = must_add(g, "{\"driver\": \"qcow2\", \"node-name\": \"ovro\", \"read-only\": true, \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"" + ovro + "\"}}");
    expect_error(g.snapshot_overlay(b, ro), "Block node is read-only");
    ck_assert_ptr_eq(blk->node(), b);
    ck_assert_ptr_null(ro->backing_child());
    ck_assert(ro->parents().empty());
    ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 512, 0x11), 0);
    blk.reset();
}
END_TEST

START_TEST(test_replace_node)
{
    auto ctx = AioContext::create();
    BlockGraph g(&test_registry());
    BlockNode *a = must_add(g, "driver=test-mem,node-name=a");
    BlockNode *b = must_add(g, "driver=test-mem,node-name=b");
    BlockNode *flt = must_add(g, "driver=blkdebug,node-name=f,image=a");
    auto blk = must_backend(a, kPermConsistentRead | kPermWrite);
    // A filter over b: its edge to b is below b's replacement's own subtree
    // and must not be turned into a loop.
    BlockNode *fb = must_add(g, "driver=blkdebug,node-name=fb,image=b");
    ck_assert(g.replace_node(a, fb).ok());
    ck_assert_ptr_eq(blk->node(), fb);
    ck_assert_ptr_eq(flt->file_child()->node(), fb);
    ck_assert(a->parents().empty());
    ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 512, 0x42), 0);
    auto rb = BlockBackend::create(b, kPermConsistentRead, kPermAll, "reader").value();
    ck_assert(reads_pattern(rb.get(), 0, 512, 0x42));
    rb.reset();
    // Back, and b's own filter keeps pointing at b.
    ck_assert(g.replace_node(fb, a).ok());
    ck_assert_ptr_eq(blk->node(), a);
    ck_assert_ptr_eq(fb->file_child()->node(), b);
    // A conflict: a second writer that shares nothing.
    auto excl = BlockBackend::create(b, kPermConsistentRead | kPermWrite, kPermConsistentRead, "export 'x'").value();
    Status s = g.replace_node(a, b);
    ck_assert(!s.ok());
    ck_assert_ptr_eq(blk->node(), a);
    ck_assert_ptr_eq(excl->node(), b);
    excl.reset();
    blk.reset();
}
END_TEST

// ---------------------------------------------------------------- blockdev-reopen

// ro -> rw -> ro on a file node, a raw node and a qcow2 node (each over its
// own file node, which follows as an inline child), with data written while
// writable and read back while read-only; qemu-img check is clean while the
// qcow2 node is still open read-only.
START_TEST(test_reopen_ro_rw)
{
    auto ctx = AioContext::create();
    const std::string f = tmp_path("ro-file.img"), r = tmp_path("ro-raw.img"), q = tmp_path("ro.qcow2");
    must_sh("qemu-img create -f raw " + f + " 1M");
    must_sh("qemu-img create -f raw " + r + " 1M");
    must_sh("qemu-img create -f qcow2 -o lazy_refcounts=on " + q + " 1M");
    BlockGraph g;
    const std::vector<std::string> args = {
        "driver=file,node-name=n0,filename=" + f,
        "driver=raw,node-name=n1,file.driver=file,file.node-name=n1f,file.filename=" + r,
        "driver=qcow2,node-name=n2,file.driver=file,file.node-name=n2f,file.filename=" + q,
    };
    const std::vector<std::string> reopen_base = {
        "driver=file,node-name=n0,filename=" + f,
        "driver=raw,node-name=n1,file=n1f",
        "driver=qcow2,node-name=n2,file=n2f",
    };
    for (size_t i = 0; i < args.size(); i++) {
        BlockNode *n = must_add(g, args[i] + ",read-only=on");
        ck_assert(n->read_only());
        ck_assert(!BlockBackend::create(n, kPermWrite, kPermAll, "w").ok());
        Status s = reopen1(g, reopen_arg(reopen_base[i], false));
        ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
        ck_assert(!n->read_only());
        if (BdrvChild *c = n->file_child()) ck_assert(!c->node()->read_only());
        // The write lock is taken again: qemu-img may not open the image.
        if (i == 2) ck_assert_int_ne(sh("qemu-img check " + q), 0);
        auto blk = must_backend(n, kPermConsistentRead | kPermWrite);
        ck_assert_int_eq(pwrite_pattern(blk.get(), 4096, 8192, 0x30 + static_cast<int>(i)), 0);
        blk.reset();
        s = reopen1(g, reopen_arg(reopen_base[i], true));
        ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
        ck_assert(n->read_only());
        if (BdrvChild *c = n->file_child()) ck_assert(c->node()->read_only());
        auto rb = must_backend(n, kPermConsistentRead);
        ck_assert(reads_pattern(rb.get(), 4096, 8192, 0x30 + static_cast<int>(i)));
        ck_assert(reads_pattern(rb.get(), 0, 4096, 0));
        rb.reset();
        ck_assert(!BlockBackend::create(n, kPermWrite, kPermAll, "w").ok());
        // Once more writable: a second round works too.
        s = reopen1(g, reopen_arg(reopen_base[i], false));
        ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
        blk = must_backend(n, kPermConsistentRead | kPermWrite);
        ck_assert_int_eq(pwrite_pattern(blk.get(), 65536, 4096, 0x40 + static_cast<int>(i)), 0);
        blk.reset();
        ck_assert(reopen1(g, reopen_arg(reopen_base[i], true)).ok());
    }
    // Still open (read-only): the qcow2 image is clean and consistent, its
    // dirty bit (lazy refcounts) cleared; the files hold the data.
    must_sh("qemu-img check " + q);
    must_sh("qemu-img info --output=json " + q + " | grep -q '\"dirty-flag\": false'");
    must_sh("qemu-io -r -f qcow2 -c 'read -P 0x32 4k 8k' -c 'read -P 0x42 64k 4k' " + q);
    must_sh("qemu-io -r -f raw -c 'read -P 0x30 4k 8k' -c 'read -P 0x40 64k 4k' " + f);
    must_sh("qemu-io -r -f raw -c 'read -P 0x31 4k 8k' -c 'read -P 0x41 64k 4k' " + r);
}
END_TEST

// null-co, blkdebug and the test driver switch too; options they cannot
// change are refused with QEMU's text.
START_TEST(test_reopen_other_drivers)
{
    auto ctx = AioContext::create();
    BlockGraph g(&test_registry());
    BlockNode *nul = must_add(g, "driver=null-co,node-name=n");
    BlockNode *mem = must_add(g, "driver=test-mem,node-name=m");
    BlockNode *dbg = must_add(g, "driver=blkdebug,node-name=d,image=m");
    ck_assert(reopen1(g, "driver=null-co,node-name=n,read-only=on").ok());
    ck_assert(nul->read_only());
    ck_assert(!BlockBackend::create(nul, kPermWrite, kPermAll, "w").ok());
    expect_error(reopen1(g, "driver=null-co,node-name=n,read-only=on,size=5"), "Cannot change the option 'size'");
    Status s = g.reopen({must_parse("driver=blkdebug,node-name=d,image=m,read-only=on"),
                         must_parse("driver=test-mem,node-name=m,read-only=on")});
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    ck_assert(dbg->read_only() && mem->read_only());
    // A filter needs of its child only what its users need: with none, it
    // may be writable over a read-only node (QEMU alike).
    ck_assert(reopen1(g, "driver=blkdebug,node-name=d,image=m").ok());
    ck_assert(!dbg->read_only() && mem->read_only());
    ck_assert(!BlockBackend::create(dbg, kPermWrite, kPermAll, "w").ok());
    s = g.reopen({must_parse("driver=test-mem,node-name=m"), must_parse("driver=blkdebug,node-name=d,image=m")});
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    auto blk = must_backend(dbg, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 512, 0x66), 0);
    ck_assert(reads_pattern(blk.get(), 0, 512, 0x66));
    expect_error(reopen1(g, "driver=test-mem,node-name=m,size=4096"), "Cannot change the option 'size'");
    expect_error(reopen1(g, "driver=null-co,node-name=m"), "Cannot change the option 'driver'");
    expect_error(reopen1(g, "driver=test-mem,node-name=zz"), "Failed to find node with node-name='zz'");
    blk.reset();
}
END_TEST

// raw: the window (offset, size) moves; a plain raw cannot become a
// window (its child's role would change).
START_TEST(test_reopen_raw_window)
{
    auto ctx = AioContext::create();
    BlockGraph g(&test_registry());
    BlockNode *m = must_add(g, "driver=test-mem,node-name=m,size=65536");
    auto wm = must_backend(m, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(wm.get(), 4096, 4096, 0x44), 0);
    wm.reset();
    BlockNode *r = must_add(g, "driver=raw,node-name=r,file=m,size=8192");
    ck_assert_int_eq(r->getlength(), 8192);
    Status s = reopen1(g, "driver=raw,node-name=r,file=m,offset=4096,size=4096");
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    ck_assert_int_eq(r->getlength(), 4096);
    auto rb = must_backend(r, kPermConsistentRead);
    ck_assert(reads_pattern(rb.get(), 0, 4096, 0x44));
    rb.reset();
    expect_error(reopen1(g, "driver=raw,node-name=r,file=m,offset=65536,size=4096"),
                 "The sum of offset (65536) and size (4096) has to be smaller or equal to the  actual size of the "
                 "containing file (65536)");
    expect_error(reopen1(g, "driver=raw,node-name=r,file=m"), "Cannot change the option 'size'");
    ck_assert_int_eq(r->getlength(), 4096);
    BlockNode *plain = must_add(g, "driver=raw,node-name=p,file=m");
    expect_error(reopen1(g, "driver=raw,node-name=p,file=m,offset=512"), "Cannot change the option 'offset'");
    ck_assert_int_eq(plain->getlength(), 65536);
}
END_TEST

// A writer (an export) on a node being made read-only: QEMU's text, and
// nothing changes, on any node of the transaction.
START_TEST(test_reopen_atomic)
{
    auto ctx = AioContext::create();
    const std::string a = tmp_path("at-a.qcow2"), b = tmp_path("at-b.qcow2");
    must_sh("qemu-img create -f qcow2 " + a + " 1M");
    must_sh("qemu-img create -f qcow2 " + b + " 1M");
    BlockGraph g(&test_registry());
    BlockNode *na = must_add(g, "driver=qcow2,node-name=a,file.driver=file,file.node-name=af,file.filename=" + a);
    must_add(g, "driver=file,node-name=bf,filename=" + b);   // not implicit: does not follow b
    BlockNode *nb = must_add(g, "driver=qcow2,node-name=b,file=bf");
    auto blk = must_backend(na, kPermConsistentRead | kPermWrite);
    // b first (it could go read-only), then a (it cannot): neither changes.
    Status s = g.reopen({must_parse("driver=qcow2,node-name=b,file=bf,read-only=on"),
                         must_parse("driver=qcow2,node-name=a,file=af,read-only=on")});
    expect_error(s, "Read-only block node 'a' cannot support read-write users");
    ck_assert(!na->read_only() && !nb->read_only());
    ck_assert(!g.find("af")->read_only() && !g.find("bf")->read_only());
    auto wb = must_backend(nb, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(wb.get(), 0, 4096, 0x21), 0);
    wb.reset();
    ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 4096, 0x12), 0);
    // One of two nodes asks for an option its driver cannot change.
    s = g.reopen({must_parse("driver=qcow2,node-name=b,file=bf,read-only=on"),
                  must_parse("driver=qcow2,node-name=a,file=af,cache-clean-interval=5")});
    expect_error(s, "Cannot change the option 'cache-clean-interval'");
    ck_assert(!nb->read_only());
    wb = must_backend(nb, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(wb.get(), 4096, 4096, 0x22), 0);
    wb.reset();
    // The file under a writable qcow2 node alone; then both read-only, and
    // the qcow2 node alone writable again over its read-only file.
    expect_error(reopen1(g, "driver=file,node-name=bf,read-only=on,filename=" + b),
                 "Read-only block node 'bf' cannot support read-write users");
    ck_assert(g.reopen({must_parse("driver=qcow2,node-name=b,file=bf,read-only=on"),
                        must_parse("driver=file,node-name=bf,read-only=on,filename=" + b)})
                  .ok());
    ck_assert(nb->read_only() && g.find("bf")->read_only());
    expect_error(reopen1(g, "driver=qcow2,node-name=b,file=bf"), "Block node is read-only");
    ck_assert(nb->read_only());
    ck_assert(g.reopen({must_parse("driver=file,node-name=bf,filename=" + b),
                        must_parse("driver=qcow2,node-name=b,file=bf")})
                  .ok());
    ck_assert(!nb->read_only() && !g.find("bf")->read_only());
    // Generic options that cannot change.
    expect_error(reopen1(g, "driver=qcow2,node-name=b,file=bf,read-only=on,force-share=on"),
                 "Cannot change the option 'force-share'");
    // Another file node: allowed, but here a writes what b would write.
    expect_error(reopen1(g, "driver=qcow2,node-name=b,file=af"),
                 "Permission conflict on node 'af': permissions 'write, resize' are both required by node 'a' "
                 "(uses node 'af' as 'file' child) and unshared by node 'b' (uses node 'af' as 'file' child).");
    ck_assert_ptr_eq(nb->file_child()->node(), g.find("bf"));
    blk.reset();
    g.close_all();
    must_sh("qemu-img check " + a);
    must_sh("qemu-img check " + b);
    must_sh("qemu-io -r -c 'read -P 0x12 0 4k' " + a);
    must_sh("qemu-io -r -c 'read -P 0x21 0 4k' -c 'read -P 0x22 4k 4k' " + b);
}
END_TEST

// A persistent bitmap: marked in use while the node is writable, stored
// (not in use) once it is read-only; a reopen that fails after qcow2 stored
// it for the switch takes it over again.
START_TEST(test_reopen_bitmaps)
{
    auto ctx = AioContext::create();
    const std::string q = tmp_path("bm.qcow2");
    must_sh("qemu-img create -f qcow2 " + q + " 1M");
    must_sh("qemu-img bitmap --add " + q + " bm0");
    const std::string in_use = "qemu-img info -U --output=json " + q + " | grep -q in-use";
    BlockGraph g;
    BlockNode *n = must_add(g, "driver=qcow2,node-name=q,file.driver=file,file.node-name=qf,file.filename=" + q);
    must_add(g, "driver=null-co,node-name=nul");
    ck_assert_int_eq(sh(in_use), 0);
    auto blk = must_backend(n, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(blk.get(), 0, 65536, 0x55), 0);
    blk.reset();
    // q prepares (stores the bitmap), the null node refuses: q stays
    // writable and takes the bitmap over again.
    expect_error(g.reopen({must_parse("driver=qcow2,node-name=q,file=qf,read-only=on"),
                           must_parse("driver=null-co,node-name=nul,size=512")}),
                 "Cannot change the option 'size'");
    ck_assert(!n->read_only());
    ck_assert_int_eq(sh(in_use), 0);
    blk = must_backend(n, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(blk.get(), 131072, 65536, 0x56), 0);
    blk.reset();
    ck_assert(reopen1(g, "driver=qcow2,node-name=q,file=qf,read-only=on").ok());
    ck_assert_int_ne(sh(in_use), 0);
    must_sh("qemu-img check -U " + q);
    // Both writes are in the stored bitmap (64 KiB granularity: bits 0 and 2).
    auto bd = n->bitmap_data("bm0");
    ck_assert_msg(bd.ok(), "%s", bd.ok() ? "" : bd.error().msg.c_str());
    ck_assert_int_eq(bd.value().granularity, 65536);
    ck_assert_int_eq(bd.value().bytes.at(0), 0x05);
    ck_assert(reopen1(g, "driver=qcow2,node-name=q,file=qf").ok());
    ck_assert_int_eq(sh(in_use), 0);
    g.close_all();
    ck_assert_int_ne(sh(in_use), 0);
    must_sh("qemu-img check " + q);
}
END_TEST

// cache.direct on and off again: the implicit file child follows, opens
// the file with O_DIRECT and its alignment reaches the qcow2 node above.
START_TEST(test_reopen_cache_direct)
{
    auto ctx = AioContext::create();
    const std::string q = tmp_path("direct.qcow2");
    must_sh("qemu-img create -f qcow2 " + q + " 1M");
    BlockGraph g;
    BlockNode *n = must_add(g, "driver=qcow2,node-name=q,file.driver=file,file.node-name=qf,file.filename=" + q);
    BlockNode *f = g.find("qf");
    ck_assert_int_eq(f->limits().request_alignment, 1);
    Status s = reopen1(g, "driver=qcow2,node-name=q,file=qf,cache.direct=on");
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    ck_assert(f->options().cache_direct);
    ck_assert_uint_ge(f->limits().request_alignment, 512);
    ck_assert_uint_ge(n->limits().min_mem_alignment, f->limits().min_mem_alignment);
    auto blk = must_backend(n, kPermConsistentRead | kPermWrite);
    ck_assert_int_eq(pwrite_pattern(blk.get(), 1000, 3000, 0x3c), 0);
    ck_assert(reads_pattern(blk.get(), 1000, 3000, 0x3c));
    blk.reset();
    s = reopen1(g, "driver=qcow2,node-name=q,file=qf");
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    ck_assert(!f->options().cache_direct);
    ck_assert_int_eq(f->limits().request_alignment, 1);
    g.close_all();
    must_sh("qemu-img check " + q);
    must_sh("qemu-io -r -c 'read -P 0x3c 1000 3000' -c 'read -P 0 0 1000' " + q);
}
END_TEST

// Child references: the same node (unchanged), backing null (detached),
// another node (attached), a cycle, an unknown node, backing left out.
START_TEST(test_reopen_children)
{
    auto ctx = AioContext::create();
    const std::string base = tmp_path("ch-base.qcow2"), top = tmp_path("ch-top.qcow2"), other = tmp_path("ch-o.qcow2");
    must_sh("qemu-img create -f qcow2 " + base + " 1M");
    must_sh("qemu-io -c 'write -P 0xbe 0 4k' " + base);
    must_sh("qemu-img create -f qcow2 -b " + base + " -F qcow2 " + top + " 1M");
    must_sh("qemu-img create -f qcow2 " + other + " 1M");
    must_sh("qemu-io -c 'write -P 0x0e 0 4k' " + other);
    BlockGraph g;
    BlockNode *t = must_add(g, "driver=qcow2,node-name=top,file.driver=file,file.node-name=tf,file.filename=" + top);
    BlockNode *o = must_add(g, "driver=qcow2,node-name=o,read-only=on,file.driver=file,file.filename=" + other);
    auto blk = must_backend(t, kPermConsistentRead);
    ck_assert(reads_pattern(blk.get(), 0, 4096, 0xbe));
    const std::string implicit_base = t->backing_child()->node()->node_name();
    expect_error(reopen1(g, "driver=qcow2,node-name=top,file=tf"), "backing is missing for 'top'");
    ck_assert(reopen1(g, "driver=qcow2,node-name=top,file=tf,backing=" + implicit_base).ok());
    ck_assert(reads_pattern(blk.get(), 0, 4096, 0xbe));
    ck_assert(reopen1(g, "driver=qcow2,node-name=top,file=tf,backing=o").ok());
    ck_assert_ptr_eq(t->backing_child()->node(), o);
    ck_assert(reads_pattern(blk.get(), 0, 4096, 0x0e));
    ck_assert_ptr_null(g.find(implicit_base));   // the implicit backing node went with its last parent
    expect_error(reopen1(g, "driver=qcow2,node-name=top,file=tf,backing=top"),
                 "Making 'top' a backing child of 'top' would create a cycle");
    expect_error(reopen1(g, "driver=qcow2,node-name=top,file=tf,backing=nope"),
                 "Cannot find device='' nor node-name='nope'");
    ck_assert_ptr_eq(t->backing_child()->node(), o);
    Status s = g.reopen({must_parse_json({{"driver", "qcow2"}, {"node-name", "top"}, {"file", "tf"}, {"backing", nullptr}})});
    ck_assert_msg(s.ok(), "%s", s.ok() ? "" : s.msg().c_str());
    ck_assert_ptr_null(t->backing_child());
    ck_assert(o->parents().empty());
    ck_assert(reads_pattern(blk.get(), 0, 4096, 0));
    blk.reset();
}
END_TEST

int main()
{
    // Page-cache I/O through io_uring, not inline: requests stay in flight.
    setenv("BLOCKGRAPH_INLINE_IO", "0", 1);
    Suite *s = suite_create("reopen");
    TCase *tc = tcase_create("graph-changes");
    tcase_add_unchecked_fixture(tc, bgtest::make_tmpdir, bgtest::remove_tmpdir);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_snapshot_overlay);
    tcase_add_test(tc, test_snapshot_overlay_undo);
    tcase_add_test(tc, test_snapshot_overlay_errors);
    tcase_add_test(tc, test_replace_node);
    tcase_add_test(tc, test_reopen_ro_rw);
    tcase_add_test(tc, test_reopen_other_drivers);
    tcase_add_test(tc, test_reopen_raw_window);
    tcase_add_test(tc, test_reopen_atomic);
    tcase_add_test(tc, test_reopen_children);
    tcase_add_test(tc, test_reopen_bitmaps);
    tcase_add_test(tc, test_reopen_cache_direct);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
