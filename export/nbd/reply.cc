// One NBD connection: the replies that carry data. READ (simple, a single
// OFFSET_DATA chunk, or one chunk per allocation run with holes as
// OFFSET_HOLE) and BLOCK_STATUS (one chunk per selected context).
#include <cerrno>
#include <cstring>

#include "export/nbd/internal.h"
#include "util/log.h"

namespace bg {

using namespace nbd;

namespace {

constexpr size_t kMaxExtentsPerChunk = 1 << 16;
constexpr int kMaxReadRuns = 256;

// Appends an extent (length, flags) to ext, merging with the previous
// one when the flags are the same.
void add_extent(std::vector<uint64_t> *ext, uint64_t len, uint64_t flags)
{
    if (!ext->empty() && (*ext)[ext->size() - 1] == flags) {
        (*ext)[ext->size() - 2] += len;
        return;
    }
    ext->push_back(len);
    ext->push_back(flags);
}

} // namespace

// ---------------------------------------------------------------- READ

int NbdConn::do_read(NbdRequest *r)
{
    const Request &q = r->hdr;
    BlockBackend *blk = exp_->blk();
    const uint64_t len = q.length;
    if (len && !ensure_buf(r, len)) return send_reply_error(r, ENOMEM, "out of memory");
    // The allocation runs, for a sparse structured reply.
    struct Run {
        uint64_t off, len;
        bool hole;
    };
    Run runs[kMaxReadRuns];
    int nruns = 0;
    const bool sparse = structured_ && !(q.flags & kCmdFlagDf) && len > 0;
    if (sparse) {
        for (uint64_t pos = 0; pos < len;) {
            int64_t pnum = 0;
            int ret = blk->co_block_status_above(nullptr, true, int64_t(q.offset + pos), int64_t(len - pos), &pnum,
                                                 nullptr, nullptr, nullptr);
            if (ret < 0 || pnum <= 0) pnum = int64_t(len - pos), ret = 0;
            const bool hole = (ret & kStatusZero) != 0;
            // One chunk per status answer, as QEMU sends them; adjacent
            // data is merged (one read), and everything past the last
            // run the table holds is sent as data.
            if (nruns > 0 && !hole && !runs[nruns - 1].hole) {
                runs[nruns - 1].len += uint64_t(pnum);
            } else if (nruns == kMaxReadRuns) {
                runs[nruns - 1].len += uint64_t(pnum);
                runs[nruns - 1].hole = false;   // the rest as data
            } else {
                runs[nruns++] = {pos, uint64_t(pnum), hole};
            }
            pos += uint64_t(pnum);
        }
    } else {
        runs[nruns++] = {0, len, false};
    }
    for (int i = 0; i < nruns; i++) {
        if (runs[i].hole || runs[i].len == 0) continue;
        int ret = blk->co_pread(int64_t(q.offset + runs[i].off), int64_t(runs[i].len),
                                static_cast<uint8_t *>(r->buf) + runs[i].off);
        if (ret < 0) return send_reply_error(r, -ret, std::string("read failed: ") + strerror(-ret));
    }
    exp_->counters().bytes_read += len;
    if (!structured_) {
        uint8_t h[kSimpleReplySize];
        struct iovec iov[2] = {{h, simple_header(h, q.cookie, 0)}, {r->buf, len}};
        return send_locked(iov, len ? 2 : 1);
    }
    if (len == 0) return send_reply_done(r);
    // One header (and offset / hole size) per run, then the data.
    uint8_t hdr[kMaxReadRuns][kExtChunkHeaderSize + 12];
    struct iovec iov[kMaxReadRuns * 2];
    int n = 0;
    for (int i = 0; i < nruns; i++) {
        const uint16_t flags = i == nruns - 1 ? kReplyFlagDone : 0;
        uint8_t *h = hdr[i];
        if (runs[i].hole) {
            size_t hs = chunk_header(h, r, flags, kChunkOffsetHole, 12);
            put64(h + hs, q.offset + runs[i].off);
            put32(h + hs + 8, static_cast<uint32_t>(runs[i].len));
            iov[n++] = {h, hs + 12};
        } else {
            size_t hs = chunk_header(h, r, flags, kChunkOffsetData, 8 + runs[i].len);
            put64(h + hs, q.offset + runs[i].off);
            iov[n++] = {h, hs + 8};
            iov[n++] = {static_cast<uint8_t *>(r->buf) + runs[i].off, runs[i].len};
        }
    }
    return send_locked(iov, n);
}

// ---------------------------------------------------------------- BLOCK_STATUS

int NbdConn::base_allocation_extents(uint64_t off, uint64_t len, bool one, std::vector<uint64_t> *ext)
{
    BlockBackend *blk = exp_->blk();
    for (uint64_t pos = 0; pos < len && ext->size() / 2 < kMaxExtentsPerChunk;) {
        int64_t pnum = 0;
        int ret = blk->co_block_status_above(nullptr, true, int64_t(off + pos), int64_t(len - pos), &pnum, nullptr,
                                             nullptr, nullptr);
        if (ret < 0) return ret;
        if (pnum <= 0) break;
        const uint64_t flags = ((ret & kStatusData) ? 0 : kStateHole) | ((ret & kStatusZero) ? kStateZero : 0);
        add_extent(ext, uint64_t(pnum), flags);
        pos += uint64_t(pnum);
        if (one) break;
    }
    return 0;
}

int NbdConn::depth_extents(uint64_t off, uint64_t len, bool one, std::vector<uint64_t> *ext)
{
    BlockBackend *blk = exp_->blk();
    for (uint64_t pos = 0; pos < len && ext->size() / 2 < kMaxExtentsPerChunk;) {
        int64_t pnum = 0;
        int depth = 0;
        int ret = blk->co_block_status_above(nullptr, false, int64_t(off + pos), int64_t(len - pos), &pnum, nullptr,
                                             nullptr, &depth);
        if (ret < 0) return ret;
        if (pnum <= 0) break;
        add_extent(ext, uint64_t(pnum), (ret & kStatusAllocated) ? uint64_t(depth) + 1 : 0);
        pos += uint64_t(pnum);
        if (one) break;
    }
    return 0;
}

int NbdConn::bitmap_extents(size_t i, uint64_t off, uint64_t len, bool one, std::vector<uint64_t> *ext)
{
    Result<DirtyBitmapData> d = exp_->bitmap_node(i)->dirty_bitmap_get(exp_->bitmaps()[i]);
    if (!d) return -d.error().err;
    const DirtyBitmapData &bm = d.value();
    const uint64_t g = bm.granularity ? bm.granularity : 65536;
    auto dirty = [&](uint64_t bit) { return bit < bm.nb_bits && ((bm.bytes[bit >> 3] >> (bit & 7)) & 1); };
    for (uint64_t pos = off; pos < off + len && ext->size() / 2 < kMaxExtentsPerChunk;) {
        uint64_t bit = pos / g;
        const bool d0 = dirty(bit);
        uint64_t end = (bit + 1) * g;
        while (end < off + len && dirty(end / g) == d0) end += g;
        if (end > off + len) end = off + len;
        add_extent(ext, end - pos, d0 ? kStateDirty : 0);
        pos = end;
        if (one) break;
    }
    return 0;
}

int NbdConn::do_block_status(NbdRequest *r)
{
    const Request &q = r->hdr;
    const bool one = q.flags & kCmdFlagReqOne;
    std::vector<std::pair<uint32_t, std::vector<uint64_t>>> chunks;
    auto add = [&](uint32_t id, int ret, std::vector<uint64_t> &&ext) {
        if (ret < 0) return ret;
        chunks.emplace_back(id, std::move(ext));
        return 0;
    };
    int ret = 0;
    if (meta_base_) {
        std::vector<uint64_t> e;
        ret = add(kNbdCtxBase, base_allocation_extents(q.offset, q.length, one, &e), std::move(e));
    }
    if (ret >= 0 && meta_depth_) {
        std::vector<uint64_t> e;
        ret = add(kNbdCtxDepth, depth_extents(q.offset, q.length, one, &e), std::move(e));
    }
    for (size_t i = 0; ret >= 0 && i < meta_bitmaps_.size(); i++) {
        if (!meta_bitmaps_[i]) continue;
        std::vector<uint64_t> e;
        ret = add(kNbdCtxBitmap0 + uint32_t(i), bitmap_extents(i, q.offset, q.length, one, &e), std::move(e));
    }
    if (ret < 0) return send_reply_error(r, -ret, std::string("block status failed: ") + strerror(-ret));
    // Encode: compact chunks carry u32 pairs, extended ones u64 pairs.
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<struct iovec> iov;
    bufs.reserve(chunks.size());
    for (size_t c = 0; c < chunks.size(); c++) {
        const std::vector<uint64_t> &e = chunks[c].second;
        const size_t n = e.size() / 2;
        const size_t payload = extended_ ? 8 + n * 16 : 4 + n * 8;
        bufs.emplace_back(kExtChunkHeaderSize + payload);
        uint8_t *b = bufs.back().data();
        const uint16_t flags = c + 1 == chunks.size() ? kReplyFlagDone : 0;
        size_t hs = chunk_header(b, r, flags, extended_ ? kChunkBlockStatusExt : kChunkBlockStatus, payload);
        uint8_t *p = b + hs;
        put32(p, chunks[c].first);
        p += 4;
        if (extended_) {
            put32(p, static_cast<uint32_t>(n));
            p += 4;
        }
        for (size_t i = 0; i < n; i++) {
            if (extended_) {
                put64(p, e[2 * i]);
                put64(p + 8, e[2 * i + 1]);
                p += 16;
            } else {
                put32(p, static_cast<uint32_t>(e[2 * i]));
                put32(p + 4, static_cast<uint32_t>(e[2 * i + 1]));
                p += 8;
            }
        }
        iov.push_back({b, hs + payload});
    }
    return send_locked(iov.data(), static_cast<int>(iov.size()));
}

} // namespace bg
