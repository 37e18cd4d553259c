// qcow2 compressed clusters (qcow2.md 1.10): zlib (raw deflate, window
// 2^12) and zstd (one or more frames) decompression of exactly one cluster.
//
// The compressed length in an L2 entry is known only to 512-byte precision,
// so the input may carry bytes after the end of the stream (the next
// compressed cluster, or zeros); both decoders stop once the cluster is full.
//
// Compression for compressed writes: raw deflate (default level, windowBits
// -12, memLevel 9) and one zstd frame (ZSTD_compressStream2 with
// ZSTD_e_end), output limited to the caller's buffer (cluster_size - 1):
// data that does not fit is stored uncompressed by the caller.
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cerrno>
#include <climits>

#include "block/qcow2/qcow2.h"

namespace bg {
namespace qcow2 {

namespace {

int zlib_decompress(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    if (src_len > UINT_MAX || dst_len > UINT_MAX) return -EIO;
    z_stream strm = {};
    if (inflateInit2(&strm, -12) != Z_OK) return -ENOMEM;
    strm.next_in = const_cast<Bytef *>(src);
    strm.avail_in = static_cast<uInt>(src_len);
    strm.next_out = dst;
    strm.avail_out = static_cast<uInt>(dst_len);
    int ret = inflate(&strm, Z_FINISH);
    // Z_BUF_ERROR is fine as long as the output is full: the input is only
    // known to sector precision (QEMU accepts it too).
    bool ok = (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && strm.avail_out == 0;
    inflateEnd(&strm);
    return ok ? 0 : -EIO;
}

int zstd_decompress(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx) return -ENOMEM;
    ZSTD_outBuffer out = {dst, dst_len, 0};
    ZSTD_inBuffer in = {src, src_len, 0};
    int ret = 0;
    size_t zr = 0;
    // Frames follow each other; ZSTD_decompressStream returns 0 at the end
    // of each. Stop when the cluster is full; fail on an error or when a
    // call makes no progress (truncated input).
    while (out.pos < out.size) {
        size_t in_before = in.pos, out_before = out.pos;
        zr = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(zr)) {
            ret = -EIO;
            break;
        }
        if (in.pos == in_before && out.pos == out_before) {
            ret = -EIO;
            break;
        }
    }
    // A frame not finished when the cluster is full holds more than one
    // cluster of data: corrupt.
    if (ret == 0 && zr != 0) ret = -EIO;
    ZSTD_freeDCtx(dctx);
    return ret;
}

int64_t zlib_compress(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_len)
{
    if (len > UINT_MAX || dst_len > UINT_MAX) return -EINVAL;
    z_stream strm = {};
    if (deflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) return -ENOMEM;
    strm.next_in = const_cast<Bytef *>(src);
    strm.avail_in = static_cast<uInt>(len);
    strm.next_out = dst;
    strm.avail_out = static_cast<uInt>(dst_len);
    int ret = deflate(&strm, Z_FINISH);
    int64_t out = static_cast<int64_t>(dst_len - strm.avail_out);
    deflateEnd(&strm);
    if (ret == Z_STREAM_END) return out;
    if (ret == Z_OK || ret == Z_BUF_ERROR) return -ENOSPC;   // output full before the end
    return -EIO;
}

int64_t zstd_compress(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_len)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!cctx) return -ENOMEM;
    ZSTD_outBuffer out = {dst, dst_len, 0};
    ZSTD_inBuffer in = {src, len, 0};
    int64_t ret = 0;
    for (;;) {
        size_t zr = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(zr)) {
            ret = ZSTD_getErrorCode(zr) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
            break;
        }
        if (zr == 0) {
            ret = static_cast<int64_t>(out.pos);
            break;
        }
        if (out.pos == out.size) {
            ret = -ENOSPC;   // more to flush but no room
            break;
        }
    }
    ZSTD_freeCCtx(cctx);
    return ret;
}

} // namespace

int64_t compress_cluster(uint8_t type, const uint8_t *src, size_t len, uint8_t *dst, size_t dst_len)
{
    switch (type) {
    case kCompressionZlib: return zlib_compress(src, len, dst, dst_len);
    case kCompressionZstd: return zstd_compress(src, len, dst, dst_len);
    default: return -ENOTSUP;
    }
}

int decompress_cluster(uint8_t type, const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    switch (type) {
    case kCompressionZlib: return zlib_decompress(src, src_len, dst, dst_len);
    case kCompressionZstd: return zstd_decompress(src, src_len, dst, dst_len);
    default: return -ENOTSUP;
    }
}

} // namespace qcow2
} // namespace bg
