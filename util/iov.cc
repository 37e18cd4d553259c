#include "util/iov.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace bg {

size_t iov_size(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    for (int i = 0; i < iovcnt; i++) n += iov[i].iov_len;
    return n;
}

namespace {
// Calls fn(ptr, len) for each piece of [off, off+len) in iov; returns bytes visited.
template <typename Fn>
size_t iov_walk(const struct iovec *iov, int iovcnt, size_t off, size_t len, Fn &&fn)
{
    size_t done = 0;
    for (int i = 0; i < iovcnt && done < len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t n = iov[i].iov_len - off;
        if (n > len - done) n = len - done;
        if (!fn(static_cast<uint8_t *>(iov[i].iov_base) + off, n, done)) return done;
        done += n;
        off = 0;
    }
    return done;
}
} // namespace

size_t iov_to_buf(const struct iovec *iov, int iovcnt, size_t off, void *buf, size_t len)
{
    return iov_walk(iov, iovcnt, off, len, [&](uint8_t *p, size_t n, size_t done) {
        memcpy(static_cast<uint8_t *>(buf) + done, p, n);
        return true;
    });
}

size_t iov_from_buf(const struct iovec *iov, int iovcnt, size_t off, const void *buf, size_t len)
{
    return iov_walk(iov, iovcnt, off, len, [&](uint8_t *p, size_t n, size_t done) {
        memcpy(p, static_cast<const uint8_t *>(buf) + done, n);
        return true;
    });
}

size_t iov_memset(const struct iovec *iov, int iovcnt, size_t off, int c, size_t len)
{
    return iov_walk(iov, iovcnt, off, len, [&](uint8_t *p, size_t n, size_t) {
        ::memset(p, c, n);
        return true;
    });
}

bool iov_is_zero(const struct iovec *iov, int iovcnt, size_t off, size_t len)
{
    bool zero = true;
    iov_walk(iov, iovcnt, off, len, [&](uint8_t *p, size_t n, size_t) {
        zero = buffer_is_zero(p, n);
        return zero;
    });
    return zero;
}

bool buffer_is_zero(const void *buf, size_t len)
{
    const auto *p = static_cast<const uint8_t *>(buf);
    // Head bytes until 8-byte aligned, then words, then the tail.
    while (len && (reinterpret_cast<uintptr_t>(p) & 7)) {
        if (*p) return false;
        p++;
        len--;
    }
    const auto *w = reinterpret_cast<const uint64_t *>(p);
    while (len >= 32) {
        if (w[0] | w[1] | w[2] | w[3]) return false;
        w += 4;
        len -= 32;
    }
    p = reinterpret_cast<const uint8_t *>(w);
    while (len) {
        if (*p) return false;
        p++;
        len--;
    }
    return true;
}

IOVector &IOVector::operator=(const IOVector &o)
{
    if (this == &o) return *this;
    reset();
    for (int i = 0; i < o.n_; i++) add(o.iov()[i].iov_base, o.iov()[i].iov_len);
    return *this;
}

IOVector &IOVector::operator=(IOVector &&o) noexcept
{
    if (this == &o) return *this;
    if (o.heap_) {
        heap_ = std::move(o.heap_);
        cap_ = o.cap_;
    } else {
        heap_.reset();
        cap_ = kInline;
        memcpy(inline_, o.inline_, sizeof(inline_));
    }
    n_ = o.n_;
    size_ = o.size_;
    o.n_ = 0;
    o.size_ = 0;
    o.cap_ = kInline;
    return *this;
}

void IOVector::grow()
{
    int ncap = cap_ * 2;
    std::unique_ptr<struct iovec[]> nh(new struct iovec[ncap]);
    memcpy(nh.get(), iov(), sizeof(struct iovec) * n_);
    heap_ = std::move(nh);
    cap_ = ncap;
}

void IOVector::add(void *base, size_t len)
{
    if (len == 0) return;
    struct iovec *v = iov();
    if (n_ > 0 && static_cast<uint8_t *>(v[n_ - 1].iov_base) + v[n_ - 1].iov_len == base) {
        v[n_ - 1].iov_len += len;
    } else {
        if (n_ == cap_) grow();
        iov()[n_++] = {base, len};
    }
    size_ += len;
}

void IOVector::add_slice(const struct iovec *src, int srccnt, size_t off, size_t len)
{
    iov_walk(src, srccnt, off, len, [&](uint8_t *p, size_t n, size_t) {
        add(p, n);
        return true;
    });
}

void FreeDeleter::operator()(void *p) const { free(p); }

AlignedBuf aligned_alloc_buf(size_t align, size_t len)
{
    void *p = nullptr;
    if (align < sizeof(void *)) align = sizeof(void *);
    if (posix_memalign(&p, align, len ? len : 1) != 0) {
        fprintf(stderr, "blockgraph: fatal: out of memory allocating %zu bytes\n", len);
        abort();
    }
    return AlignedBuf(static_cast<uint8_t *>(p));
}

} // namespace bg
