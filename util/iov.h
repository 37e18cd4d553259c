// Scatter/gather vectors (a QEMUIOVector-like type) and helpers.
//
// IOVector keeps up to kInline entries without allocating, so the common
// single-buffer request costs no heap allocation. It never owns the memory
// its entries point to.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace bg {

// Total length of an iovec array.
size_t iov_size(const struct iovec *iov, int iovcnt);
// Copies up to len bytes starting at byte offset off of iov into buf.
// Returns the number of bytes copied (less if iov is shorter).
size_t iov_to_buf(const struct iovec *iov, int iovcnt, size_t off, void *buf, size_t len);
// Copies len bytes of buf into iov at byte offset off. Returns bytes copied.
size_t iov_from_buf(const struct iovec *iov, int iovcnt, size_t off, const void *buf, size_t len);
// Sets len bytes at offset off to c. Returns bytes set.
size_t iov_memset(const struct iovec *iov, int iovcnt, size_t off, int c, size_t len);
// True if the len bytes at off are all zero.
bool iov_is_zero(const struct iovec *iov, int iovcnt, size_t off, size_t len);
// True if every byte of buf is zero (fast path for aligned buffers).
bool buffer_is_zero(const void *buf, size_t len);

class IOVector {
  public:
    static constexpr int kInline = 4;

    IOVector() = default;
    IOVector(void *buf, size_t len) { add(buf, len); }
    IOVector(const IOVector &o) { *this = o; }
    IOVector &operator=(const IOVector &o);
    IOVector(IOVector &&o) noexcept { *this = std::move(o); }
    IOVector &operator=(IOVector &&o) noexcept;

    // Appends one entry (merged with the last one when contiguous).
    void add(void *base, size_t len);
    void reset() { n_ = 0; size_ = 0; }

    // Appends the bytes [off, off+len) of src (or of an iovec array).
    void add_slice(const IOVector &src, size_t off, size_t len) { add_slice(src.iov(), src.niov(), off, len); }
    void add_slice(const struct iovec *iov, int iovcnt, size_t off, size_t len);
    // Appends all of src.
    void concat(const IOVector &src) { add_slice(src, 0, src.size()); }

    size_t size() const { return size_; }      // bytes
    int niov() const { return n_; }            // entries
    const struct iovec *iov() const { return heap_ ? heap_.get() : inline_; }
    struct iovec *iov() { return heap_ ? heap_.get() : inline_; }

    size_t to_buf(size_t off, void *buf, size_t len) const { return iov_to_buf(iov(), n_, off, buf, len); }
    size_t from_buf(size_t off, const void *buf, size_t len) { return iov_from_buf(iov(), n_, off, buf, len); }
    size_t memset(size_t off, int c, size_t len) { return iov_memset(iov(), n_, off, c, len); }
    bool is_zero(size_t off, size_t len) const { return iov_is_zero(iov(), n_, off, len); }
    bool is_zero() const { return is_zero(0, size_); }

  private:
    void grow();
    struct iovec inline_[kInline];
    std::unique_ptr<struct iovec[]> heap_;
    int n_ = 0;
    int cap_ = kInline;
    size_t size_ = 0;
};

// Memory aligned to align bytes (a power of two), freed with std::free via
// the deleter; for bounce buffers and O_DIRECT. Aborts on out-of-memory.
struct FreeDeleter {
    void operator()(void *p) const;
};
using AlignedBuf = std::unique_ptr<uint8_t[], FreeDeleter>;
AlignedBuf aligned_alloc_buf(size_t align, size_t len);

} // namespace bg
