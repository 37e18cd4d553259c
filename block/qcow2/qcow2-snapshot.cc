// qcow2 internal snapshots: reading and validating the snapshot table
// (qcow2.md 1.9) and finding a snapshot for a read-only view
// (snapshot.id / snapshot.name).
//
// PART 2: creating, deleting and applying snapshots (refcount updates,
// COPIED flags) and rewriting the table keep extra_data verbatim.
#include <cerrno>
#include <cinttypes>
#include <cstring>

#include "block/qcow2/qcow2.h"

namespace bg {
namespace qcow2 {

namespace {

// Reads [off, off+len) of a region through a window buffer, so that a table
// of many small entries costs a few large reads. Never reads past limit.
class WindowReader {
  public:
    static constexpr size_t kWindow = 64 * 1024;

    WindowReader(const ByteReader &read, uint64_t limit) : read_(read), limit_(limit) {}

    // 0, negative errno from the read, or -ERANGE if past limit.
    int get(uint64_t off, size_t len, uint8_t *out)
    {
        if (off > limit_ || len > limit_ - off) return -ERANGE;
        if (off < buf_off_ || off + len > buf_off_ + buf_.size()) {
            size_t n = static_cast<size_t>(std::min<uint64_t>(std::max(len, kWindow), limit_ - off));
            buf_.resize(n);
            int r = read_(off, n, buf_.data());
            if (r < 0) {
                buf_.clear();
                return r;
            }
            buf_off_ = off;
        }
        if (len) std::memcpy(out, buf_.data() + (off - buf_off_), len);
        return 0;
    }

  private:
    const ByteReader &read_;
    uint64_t limit_;
    uint64_t buf_off_ = 0;
    std::vector<uint8_t> buf_;
};

} // namespace

Result<std::vector<Snapshot>> read_snapshot_table(const ByteReader &read, const Header &h, uint64_t file_len,
                                                  const std::string &image)
{
    std::vector<Snapshot> snaps;
    if (h.nb_snapshots == 0) return snaps;
    const uint64_t start = h.snapshots_offset;
    // parse_header checked start < file_len.
    const uint64_t table_limit = std::min(file_len, start + kMaxSnapshotTableBytes);
    WindowReader wr(read, table_limit);
    snaps.reserve(h.nb_snapshots);

    uint64_t off = start;
    for (uint32_t i = 0; i < h.nb_snapshots; i++) {
        off = (off + 7) & ~7ULL;
        auto range_error = [&](const char *what) -> Error {
            if (table_limit < file_len) {
                return herr(EFBIG, image, "snapshot table is too large (more than %" PRIu64 " bytes)",
                            kMaxSnapshotTableBytes);
            }
            return herr(EINVAL, image, "snapshot table entry %" PRIu32 " (%s) extends beyond the end of the file", i,
                        what);
        };
        uint8_t hdr[kSnapshotHeaderSize];
        int r = wr.get(off, sizeof(hdr), hdr);
        if (r == -ERANGE) return range_error("header");
        if (r < 0) return errno_error(-r, image + ": cannot read the snapshot table");
        off += sizeof(hdr);

        Snapshot s;
        s.l1_table_offset = be64(hdr);
        s.l1_size = be32(hdr + 8);
        uint16_t id_len = be16(hdr + 12);
        uint16_t name_len = be16(hdr + 14);
        s.date_sec = be32(hdr + 16);
        s.date_nsec = be32(hdr + 20);
        s.vm_clock_nsec = be64(hdr + 24);
        s.vm_state_size = be32(hdr + 32);
        uint32_t extra = be32(hdr + 36);
        if (extra > kMaxSnapshotExtraData) {
            return herr(EFBIG, image,
                        "snapshot table entry %" PRIu32 " has too much extra data (%" PRIu32 " bytes, at most %" PRIu32
                        ")",
                        i, extra, kMaxSnapshotExtraData);
        }
        s.extra_data.resize(extra);
        r = wr.get(off, extra, s.extra_data.data());
        if (r == -ERANGE) return range_error("extra data");
        if (r < 0) return errno_error(-r, image + ": cannot read the snapshot table");
        off += extra;
        s.disk_size = h.size;
        if (extra >= 8) s.vm_state_size = be64(s.extra_data.data());
        if (extra >= 16) s.disk_size = be64(s.extra_data.data() + 8);
        if (extra >= 24) {
            uint64_t ic = be64(s.extra_data.data() + 16);
            if (ic != UINT64_MAX) s.icount = ic;
        }

        std::string strs(static_cast<size_t>(id_len) + name_len, '\0');
        r = wr.get(off, strs.size(), reinterpret_cast<uint8_t *>(strs.data()));
        if (r == -ERANGE) return range_error("id and name");
        if (r < 0) return errno_error(-r, image + ": cannot read the snapshot table");
        off += strs.size();
        s.id = strs.substr(0, id_len);
        s.name = strs.substr(id_len);

        if (s.disk_size > static_cast<uint64_t>(kMaxLength)) {
            return herr(EFBIG, image, "snapshot '%s': virtual size %" PRIu64 " is too large", s.id.c_str(),
                        s.disk_size);
        }
        if (s.l1_size > kMaxL1Bytes / 8) {
            return herr(EFBIG, image, "snapshot '%s': L1 table is too large (%" PRIu32 " entries, at most %" PRIu64 ")",
                        s.id.c_str(), s.l1_size, kMaxL1Bytes / 8);
        }
        if (s.l1_size) {
            std::string what = "snapshot '" + s.id + "' L1 table";
            BG_TRY(check_table(image, what.c_str(), s.l1_table_offset, static_cast<uint64_t>(s.l1_size) * 8,
                               h.cluster_size(), file_len));
        }
        snaps.push_back(std::move(s));
    }
    return snaps;
}

Result<const Snapshot *> find_snapshot(const std::vector<Snapshot> &snaps, const std::optional<std::string> &id,
                                       const std::optional<std::string> &name, const std::string &image)
{
    for (const Snapshot &s : snaps) {
        if (id && s.id != *id) continue;
        if (name && s.name != *name) continue;
        return &s;
    }
    if (id && name) {
        return herr(ENOENT, image, "no snapshot with id '%s' and name '%s'", id->c_str(), name->c_str());
    }
    if (id) return herr(ENOENT, image, "no snapshot with id '%s'", id->c_str());
    return herr(ENOENT, image, "no snapshot with name '%s'", name ? name->c_str() : "");
}

} // namespace qcow2
} // namespace bg
