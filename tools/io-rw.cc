// tools/io-rw.cc -- "blockgraph io": the data commands. read, readv, write
// and writev wait for their request; aio_read, aio_write and aio_discard
// start one in a coroutine of its own and return at once (aio_flush waits for
// them). Also the I/O buffers they fill from their arguments. See
// tools/io-cmd.h.
#include <getopt.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include "tools/io-cmd.h"

namespace bg {
namespace io {
namespace {

// -b and -c requests: offset and count must be multiples of 512. false after
// qemu-io's message.
bool sector_aligned(int64_t offset, int64_t count)
{
    if (offset % 512) {
        std::printf("%" PRId64 " is not a sector-aligned value for 'offset'\n", offset);
        return false;
    }
    if (count % 512) {
        std::printf("%" PRId64 " is not a sector-aligned value for 'count'\n", count);
        return false;
    }
    return true;
}

// qemu-io's -P check of data[0, n): true if every byte is pattern, else
// false after printing qemu-io's message naming `shown` bytes at offset.
bool verify_pattern(const uint8_t *data, int64_t n, int pattern, int64_t offset, int64_t shown)
{
    for (int64_t i = 0; i < n; i++) {
        if (data[i] != pattern) {
            std::printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n", offset, shown);
            return false;
        }
    }
    return true;
}

} // namespace

// ---- buffers from arguments

std::unique_ptr<IoBuffer> IoShell::alloc_buf_from_file(size_t len, const char *file_name) const
{
    std::FILE *f = std::fopen(file_name, "r");
    if (!f) {
        std::perror(file_name);
        return nullptr;
    }
    auto buf = alloc_buf(len, 0);
    size_t pattern_len = std::fread(buf->data(), 1, len, f);
    if (std::ferror(f)) {
        std::perror(file_name);
        std::fclose(f);
        return nullptr;
    }
    std::fclose(f);
    if (pattern_len == 0) {
        std::fprintf(stderr, "%s: file is empty\n", file_name);
        return nullptr;
    }
    for (size_t p = pattern_len; p < len; p += pattern_len) {
        std::memcpy(buf->data() + p, buf->data(), std::min(pattern_len, len - p));
    }
    return buf;
}

// One buffer split into the lengths argv[0..n-1]; false after a message.
bool IoShell::create_iovec(char **argv, int n, int fill, std::unique_ptr<IoBuffer> *buf, IOVector *qiov) const
{
    std::vector<size_t> sizes;
    int64_t count = 0;
    for (int i = 0; i < n; i++) {
        int64_t len = 0;
        if (parse_num(argv[i], &len) < 0) return false;
        if (len > kMaxRequestBytes) {
            std::printf("Argument '%s' exceeds maximum size %" PRIu64 "\n", argv[i],
                        static_cast<uint64_t>(kMaxRequestBytes));
            return false;
        }
        if (count > kMaxRequestBytes - len) {
            std::printf("The total number of bytes exceed the maximum size %" PRIu64 "\n",
                        static_cast<uint64_t>(kMaxRequestBytes));
            return false;
        }
        sizes.push_back(static_cast<size_t>(len));
        count += len;
    }
    *buf = alloc_buf(static_cast<size_t>(count), fill);
    uint8_t *p = (*buf)->data();
    for (size_t s : sizes) {
        qiov->add(p, s);
        p += s;
    }
    return true;
}

// ---- synchronous I/O commands

int IoShell::cmd_read(int argc, char **argv)
{
    bool cflag = false, qflag = false, vflag = false, pflag = false, sflag = false, lflag = false, bflag = false;
    int pattern = 0;
    int64_t pattern_offset = 0, pattern_count = 0;
    int c;
    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b': bflag = true; break;
        case 'C': cflag = true; break;
        case 'l':
            lflag = true;
            if (int r = parse_num(optarg, &pattern_count)) return r;
            break;
        case 'p': break;
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) return -EINVAL;
            break;
        case 'q': qflag = true; break;
        case 's':
            sflag = true;
            if (int r = parse_num(optarg, &pattern_offset)) return r;
            break;
        case 'v': vflag = true; break;
        default: return usage(&IoShell::cmd_read);
        }
    }
    if (optind != argc - 2) return usage(&IoShell::cmd_read);
    int64_t offset = 0;
    if (int r = parse_num(argv[optind], &offset)) return r;
    optind++;
    int64_t count = 0;
    if (int r = parse_num(argv[optind], &count)) return r;
    if (count > kMaxRequestBytes) {
        std::printf("length cannot exceed %" PRIu64 ", given %s\n", static_cast<uint64_t>(kMaxRequestBytes),
                    argv[optind]);
        return -EINVAL;
    }
    if (!pflag && (lflag || sflag)) return usage(&IoShell::cmd_read);
    if (!lflag) pattern_count = count - pattern_offset;
    if (pattern_count < 0 || pattern_count + pattern_offset > count) {
        std::printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag && !sector_aligned(offset, count)) return -EINVAL;

    auto buf = alloc_buf(static_cast<size_t>(count), 0xab);
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int ret;
    if (bflag) {
        IOVector v(buf->data(), static_cast<size_t>(count));
        ret = blk()->node()->co_vmstate(false, offset, count, v);
    } else {
        ret = blk()->co_pread(offset, count, buf->data());
    }
    Elapsed t = elapsed_since(t1);
    if (ret < 0) {
        std::printf("read failed: %s\n", std::strerror(-ret));
        return ret;
    }
    ret = 0;
    if (pflag && !verify_pattern(buf->data() + pattern_offset, pattern_count, pattern, offset + pattern_offset,
                                 pattern_count)) {
        ret = -EINVAL;
    }
    if (qflag) return ret;
    if (vflag) dump_buffer(buf->data(), offset, count);
    print_report("read", t, offset, count, count, 1, cflag);
    return ret;
}

int IoShell::cmd_readv(int argc, char **argv)
{
    bool cflag = false, qflag = false, vflag = false, pflag = false;
    int pattern = 0;
    int c;
    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) return -EINVAL;
            break;
        case 'q': qflag = true; break;
        case 'v': vflag = true; break;
        default: return usage(&IoShell::cmd_readv);
        }
    }
    if (optind > argc - 2) return usage(&IoShell::cmd_readv);
    int64_t offset = 0;
    if (int r = parse_num(argv[optind], &offset)) return r;
    optind++;
    std::unique_ptr<IoBuffer> buf;
    IOVector qiov;
    if (!create_iovec(&argv[optind], argc - optind, 0xab, &buf, &qiov)) return -EINVAL;
    int64_t size = static_cast<int64_t>(qiov.size());
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int ret = blk()->co_preadv(offset, size, qiov);
    Elapsed t = elapsed_since(t1);
    if (ret < 0) {
        std::printf("readv failed: %s\n", std::strerror(-ret));
        return ret;
    }
    ret = 0;
    if (pflag && !verify_pattern(buf->data(), size, pattern, offset, size)) ret = -EINVAL;
    if (qflag) return ret;
    if (vflag) dump_buffer(buf->data(), offset, size);
    print_report("read", t, offset, size, size, 1, cflag);
    return ret;
}

int IoShell::cmd_write(int argc, char **argv)
{
    bool cflag = false, qflag = false, bflag = false, pflag = false, zflag = false, compress = false,
         sflag = false;
    ReqFlags flags = 0;
    int pattern = 0xcd;
    const char *file_name = nullptr;
    int c;
    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b': bflag = true; break;
        case 'c': compress = true; break;
        case 'C': cflag = true; break;
        case 'f': flags |= kReqFua; break;
        case 'n': flags |= kReqNoFallback; break;
        case 'p': break;
        case 'P':
            pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) return -EINVAL;
            break;
        case 'q': qflag = true; break;
        case 's':
            sflag = true;
            file_name = optarg;
            break;
        case 'u': flags |= kReqMayUnmap; break;
        case 'z': zflag = true; break;
        default: return usage(&IoShell::cmd_write);
        }
    }
    if (optind != argc - 2) return usage(&IoShell::cmd_write);
    if (bflag && zflag) {
        std::printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & kReqFua) && (bflag || compress)) {
        std::printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & kReqNoFallback) && !zflag) {
        std::printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((flags & kReqMayUnmap) && !zflag) {
        std::printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (zflag + pflag + sflag > 1) {
        std::printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }
    int64_t offset = 0;
    if (int r = parse_num(argv[optind], &offset)) return r;
    optind++;
    int64_t count = 0;
    if (int r = parse_num(argv[optind], &count)) return r;
    if (count > kMaxRequestBytes && !(flags & kReqNoFallback)) {
        std::printf("length cannot exceed %" PRIu64 " without -n, given %s\n",
                    static_cast<uint64_t>(kMaxRequestBytes), argv[optind]);
        return -EINVAL;
    }
    if ((bflag || compress) && !sector_aligned(offset, count)) return -EINVAL;
    std::unique_ptr<IoBuffer> buf;
    if (!zflag) {
        if (sflag) {
            buf = alloc_buf_from_file(static_cast<size_t>(count), file_name);
            if (!buf) return -EINVAL;
        } else {
            buf = alloc_buf(static_cast<size_t>(count), pattern);
        }
    }

    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int ret;
    if (bflag) {
        IOVector v(buf->data(), static_cast<size_t>(count));
        ret = blk()->node()->co_vmstate(true, offset, count, v);
    } else if (zflag) {
        ret = blk()->co_pwrite_zeroes(offset, count, flags);
    } else if (compress) {
        ret = blk()->co_pwrite(offset, count, buf->data(), kReqWriteCompressed);
    } else {
        ret = blk()->co_pwrite(offset, count, buf->data(), flags);
    }
    Elapsed t = elapsed_since(t1);
    if (ret < 0) {
        std::printf("write failed: %s\n", std::strerror(-ret));
        return ret;
    }
    if (qflag) return 0;
    print_report("wrote", t, offset, count, count, 1, cflag);
    return 0;
}

int IoShell::cmd_writev(int argc, char **argv)
{
    bool cflag = false, qflag = false;
    ReqFlags flags = 0;
    int pattern = 0xcd;
    int c;
    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C': cflag = true; break;
        case 'f': flags |= kReqFua; break;
        case 'q': qflag = true; break;
        case 'P':
            pattern = parse_pattern(optarg);
            if (pattern < 0) return -EINVAL;
            break;
        default: return usage(&IoShell::cmd_writev);
        }
    }
    if (optind > argc - 2) return usage(&IoShell::cmd_writev);
    int64_t offset = 0;
    if (int r = parse_num(argv[optind], &offset)) return r;
    optind++;
    std::unique_ptr<IoBuffer> buf;
    IOVector qiov;
    if (!create_iovec(&argv[optind], argc - optind, pattern, &buf, &qiov)) return -EINVAL;
    int64_t size = static_cast<int64_t>(qiov.size());
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int ret = blk()->co_pwritev(offset, size, qiov, flags);
    Elapsed t = elapsed_since(t1);
    if (ret < 0) {
        std::printf("writev failed: %s\n", std::strerror(-ret));
        return ret;
    }
    if (qflag) return 0;
    print_report("wrote", t, offset, size, size, 1, cflag);
    return 0;
}

// ---- aio commands

struct IoShell::AioRequest {
    enum class Op { kRead, kWrite, kWriteZeroes, kDiscard } op;
    IoShell *shell;
    BlockBackend *blk;
    int64_t offset = 0;
    int64_t bytes = 0;
    ReqFlags flags = 0;
    std::unique_ptr<IoBuffer> buf;
    IOVector qiov;
    bool qflag = false, vflag = false, cflag = false, pflag = false;
    int pattern = 0;
    struct timespec t1;
};

void IoShell::aio_entry(void *opaque)
{
    std::unique_ptr<AioRequest> req(static_cast<AioRequest *>(opaque));
    IoShell *sh = req->shell;
    int ret = 0;
    switch (req->op) {
    case AioRequest::Op::kRead: ret = req->blk->co_preadv(req->offset, req->bytes, req->qiov, req->flags); break;
    case AioRequest::Op::kWrite: ret = req->blk->co_pwritev(req->offset, req->bytes, req->qiov, req->flags); break;
    case AioRequest::Op::kWriteZeroes: ret = req->blk->co_pwrite_zeroes(req->offset, req->bytes, req->flags); break;
    case AioRequest::Op::kDiscard: ret = req->blk->co_pdiscard(req->offset, req->bytes); break;
    }
    Elapsed t = elapsed_since(req->t1);
    switch (req->op) {
    case AioRequest::Op::kRead:
        if (ret < 0) {
            std::printf("readv failed: %s\n", std::strerror(-ret));
            break;
        }
        if (req->pflag) verify_pattern(req->buf->data(), req->bytes, req->pattern, req->offset, req->bytes);
        if (req->qflag) break;
        if (req->vflag) dump_buffer(req->buf->data(), req->offset, req->bytes);
        print_report("read", t, req->offset, req->bytes, req->bytes, 1, req->cflag);
        break;
    case AioRequest::Op::kWrite:
    case AioRequest::Op::kWriteZeroes:
        if (ret < 0) {
            std::printf("aio_write failed: %s\n", std::strerror(-ret));
            break;
        }
        if (!req->qflag) print_report("wrote", t, req->offset, req->bytes, req->bytes, 1, req->cflag);
        break;
    case AioRequest::Op::kDiscard:
        if (ret < 0) {
            std::printf("aio_discard failed: %s\n", std::strerror(-ret));
            break;
        }
        if (!req->qflag) print_report("discarded ", t, req->offset, req->bytes, req->bytes, 1, req->cflag);
        break;
    }
    std::fflush(stdout);
    sh->aio_in_flight_--;
    sh->aio_idle_.restart_all();
}

void IoShell::start_aio(std::unique_ptr<AioRequest> req)
{
    req->shell = this;
    req->blk = blk();
    clock_gettime(CLOCK_MONOTONIC, &req->t1);
    aio_in_flight_++;
    ctx_->co_enter(coroutine_create(&IoShell::aio_entry, req.release()));
}

int IoShell::cmd_aio_read(int argc, char **argv)
{
    auto req = std::make_unique<AioRequest>();
    req->op = AioRequest::Op::kRead;
    int c;
    while ((c = getopt(argc, argv, "CiP:qv")) != -1) {
        switch (c) {
        case 'C': req->cflag = true; break;
        case 'P':
            req->pflag = true;
            req->pattern = parse_pattern(optarg);
            if (req->pattern < 0) return -EINVAL;
            break;
        case 'i':
            std::printf("injecting invalid read request\n");
            return 0;
        case 'q': req->qflag = true; break;
        case 'v': req->vflag = true; break;
        default: return usage(&IoShell::cmd_aio_read);
        }
    }
    if (optind > argc - 2) return usage(&IoShell::cmd_aio_read);
    if (int r = parse_num(argv[optind], &req->offset)) return r;
    optind++;
    if (!create_iovec(&argv[optind], argc - optind, 0xab, &req->buf, &req->qiov)) return -EINVAL;
    req->bytes = static_cast<int64_t>(req->qiov.size());
    start_aio(std::move(req));
    return 0;
}

int IoShell::cmd_aio_write(int argc, char **argv)
{
    auto req = std::make_unique<AioRequest>();
    req->op = AioRequest::Op::kWrite;
    int pattern = 0xcd;
    bool zflag = false;
    int c;
    while ((c = getopt(argc, argv, "CfiP:quz")) != -1) {
        switch (c) {
        case 'C': req->cflag = true; break;
        case 'f': req->flags |= kReqFua; break;
        case 'q': req->qflag = true; break;
        case 'u': req->flags |= kReqMayUnmap; break;
        case 'P':
            pattern = parse_pattern(optarg);
            if (pattern < 0) return -EINVAL;
            break;
        case 'i':
            std::printf("injecting invalid write request\n");
            return 0;
        case 'z': zflag = true; break;
        default: return usage(&IoShell::cmd_aio_write);
        }
    }
    if (optind > argc - 2) return usage(&IoShell::cmd_aio_write);
    if (zflag && optind != argc - 2) {
        std::printf("-z supports only a single length parameter\n");
        return -EINVAL;
    }
    if ((req->flags & kReqMayUnmap) && !zflag) {
        std::printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    // qemu-io has a "-z and -P cannot be specified at the same time" check
    // here that never fires (its -P does not set the flag tested): -z -P
    // writes zeroes. Kept for identical behaviour.
    if (int r = parse_num(argv[optind], &req->offset)) return r;
    optind++;
    if (zflag) {
        if (int r = parse_num(argv[optind], &req->bytes)) return r;
        req->op = AioRequest::Op::kWriteZeroes;
    } else {
        if (!create_iovec(&argv[optind], argc - optind, pattern, &req->buf, &req->qiov)) return -EINVAL;
        req->bytes = static_cast<int64_t>(req->qiov.size());
    }
    start_aio(std::move(req));
    return 0;
}

int IoShell::cmd_aio_discard(int argc, char **argv)
{
    auto req = std::make_unique<AioRequest>();
    req->op = AioRequest::Op::kDiscard;
    int c;
    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C': req->cflag = true; break;
        case 'q': req->qflag = true; break;
        default: return usage(&IoShell::cmd_aio_discard);
        }
    }
    if (optind != argc - 2) return usage(&IoShell::cmd_aio_discard);
    if (int r = parse_num(argv[optind], &req->offset)) return r;
    optind++;
    if (int r = parse_num(argv[optind], &req->bytes)) return r;
    start_aio(std::move(req));
    return 0;
}

int IoShell::cmd_aio_flush(int, char **)
{
    co_wait_aio();
    int ret = blk()->co_flush();
    if (ret < 0) {
        std::printf("aio_flush failed: %s\n", std::strerror(-ret));
        return ret;
    }
    return 0;
}

} // namespace io
} // namespace bg
