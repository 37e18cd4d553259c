// The blklogwrites filter (QEMU's "blklogwrites" driver): every write,
// write-zeroes, discard and flush that reaches the "file" child is
// appended, in order and with its data, to a log on the "log" child, in
// the on-disk format of Linux dm-log-writes, so that the log can be
// replayed onto a copy of the starting image up to any entry (a simulated
// power loss; tests/powerloss/dmlog.py reads and replays such logs).
// Reads, block status, length and resize pass to "file" unchanged.
//
// Log layout (all integers little-endian; a "sector" is log-sector-size
// bytes): sector 0 is the super block (magic u64 0x6a736677736872,
// version u64 1, nr_entries u64, sectorsize u32, the rest zero); entries
// follow from sector 1, each one sector of header (sector u64, nr_sectors
// u64, flags u64: FLUSH 1, FUA 2, DISCARD 4, MARK 8; data_len u64 = 0,
// the rest zero) and, for writes and write-zeroes, nr_sectors sectors of
// the data written (zeroes for write-zeroes). Discards and flushes carry
// no data. sector and nr_sectors count log sectors of the image.
//
// Options: "file", "log" (required children), "log-sector-size" (bytes,
// a power of 2 in [32, 16 MiB), default 512; also the node's request
// alignment: smaller requests are padded by the generic layer),
// "log-append" (continue the log the child holds: its super block gives
// the sector size and entry count, and the entries are walked to find
// the end; an empty child starts a fresh log), "log-super-update-interval"
// (the super block is rewritten and the log child flushed every that many
// entries and at every flush; default 4096). Errors (QEMU's texts):
// "Invalid log sector size N", "log-append and log-sector-size are
// mutually exclusive", "Invalid log superblock magic", "Unsupported log
// version N", "Invalid flags 0xF in log entry N", "Invalid log superblock
// update interval 0"; ours for a log whose entries run past its end.
// A fresh log (no log-append) replaces what the log child held: it is
// truncated to nothing when the node opens writable.
//
// Ordering: a request is logged after its child request completed
// successfully; its log space is allocated at that moment, so the log
// lists requests in the order they completed on the child, which is an
// order in which they could have reached it. The parent's request
// completes only once the log write completed too. A request the child
// failed is not logged. A flush first flushes the child, then logs a
// FLUSH entry, rewrites the super block and flushes the log child. A FUA
// write is passed on with FUA and logged with the FUA flag. Truncation is
// not logged (the format has no entry for it). Once a log write failed
// the log has a hole; every later write, zero, discard or flush then fails
// with EIO without reaching the child, so the log stays a faithful record
// of what reached the child up to the hole.
//
// Threading: I/O hooks may run in coroutines of several threads. Log space
// and the entry count are taken under mutex_, which is never held across
// a yield; the super block is rewritten under super_lock_ (a CoMutex), so
// that rewrites land in order.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <endian.h>
#include <mutex>
#include <optional>
#include <set>

#include "block/block-driver.h"
#include "util/coroutine-lock.h"

namespace bg {

namespace {

constexpr uint64_t kLogMagic = 0x6a736677736872ULL;
constexpr uint64_t kLogVersion = 1;
constexpr uint64_t kFlagFlush = 1, kFlagFua = 2, kFlagDiscard = 4, kFlagMark = 8;
constexpr uint64_t kFlagMask = kFlagFlush | kFlagFua | kFlagDiscard | kFlagMark;
constexpr size_t kSuperSize = 28;   // magic, version, nr_entries, sectorsize
constexpr size_t kEntrySize = 32;   // sector, nr_sectors, flags, data_len
constexpr uint64_t kDefaultSectorSize = 512;
constexpr uint64_t kDefaultUpdateInterval = 4096;

struct LogWritesOptions : DriverOptionsOf<LogWritesOptions> {
    BlockdevRef file, log;                     // required
    std::optional<uint64_t> log_sector_size;   // bytes; absent: 512 (or the log's)
    bool log_append = false;
    uint64_t super_update_interval = kDefaultUpdateInterval;   // entries

    void encode(nlohmann::json &j) const override
    {
        put_ref(j, "file", file);
        put_ref(j, "log", log);
        if (log_sector_size) j["log-sector-size"] = *log_sector_size;
        if (log_append) j["log-append"] = true;
        if (super_update_interval != kDefaultUpdateInterval) j["log-super-update-interval"] = super_update_interval;
    }
    void for_each_child(const std::function<void(const char *, BlockdevRef &)> &fn) override
    {
        fn("file", file);
        fn("log", log);
    }
};

Result<std::unique_ptr<DriverOptions>> decode_logwrites_options(OptionReader &r, const BlockdevOptions &)
{
    auto o = std::make_unique<LogWritesOptions>();
    BG_TRY(r.get_ref("file", &o->file, OptionReader::RefMode::kRequired));
    BG_TRY(r.get_ref("log", &o->log, OptionReader::RefMode::kRequired));
    BG_TRY(r.get_size("log-sector-size", &o->log_sector_size, UINT64_MAX));
    BG_TRY(r.get("log-append", &o->log_append));
    BG_TRY(r.get_uint("log-super-update-interval", &o->super_update_interval, UINT64_MAX));
    return std::unique_ptr<DriverOptions>(std::move(o));
}

bool sector_size_valid(uint64_t s)
{
    return s && !(s & (s - 1)) && s >= kSuperSize && s >= kEntrySize && s < (uint64_t(1) << 24);
}

void put_le64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    std::memcpy(p, &v, 8);
}

uint64_t get_le64(const uint8_t *p)
{
    uint64_t v;
    std::memcpy(&v, p, 8);
    return le64toh(v);
}

class LogWritesNode final : public FilterNode {
  protected:
    Status open(const BlockdevOptions &opts) override
    {
        const auto *o = opts.as<LogWritesOptions>();
        if (!o) return node_error(EINVAL, "options are not blklogwrites options");
        BG_TRY(open_filtered("file", o->file));
        Result<BdrvChild *> l = open_child("log", o->log, kRoleMetadata);
        if (!l) return l.error();
        log_ = l.value();

        uint64_t ss = o->log_sector_size.value_or(kDefaultSectorSize);
        if (o->log_append) {
            if (o->log_sector_size) return make_error(EINVAL, "log-append and log-sector-size are mutually exclusive");
            BG_TRY(read_existing_log(&ss));
        } else if (!sector_size_valid(ss)) {
            return make_error(EINVAL, "Invalid log sector size %llu", static_cast<unsigned long long>(ss));
        }
        if (!o->super_update_interval) return make_error(EINVAL, "Invalid log superblock update interval 0");
        sector_size_ = ss;
        update_interval_ = o->super_update_interval;
        bl_.request_alignment = static_cast<uint32_t>(std::max<uint64_t>(bl_.request_alignment, ss));

        // Whatever the child holds past the log's end (all of it for a
        // fresh log) must not read as entries of ours.
        const int64_t end = o->log_append ? static_cast<int64_t>(cur_sector_ * ss) : 0;
        if (!read_only_ && (log_->getlength() > end)) {
            int r = run_in_coroutine([this, end] { return log_->co_truncate(end, true, PreallocMode::kOff); });
            if (r < 0) return errno_error(-r, "Could not cut the log to its end");
        }
        return {};
    }

    void close() override
    {
        // The generic layer flushed the node (which wrote the super block)
        // unless flushes are off (cache.no-flush): then write it now, so
        // that log-append finds every entry.
        if (read_only_ || broken_ || super_written_ == nr_entries_) return;
        run_in_coroutine([this] { return co_update_super(); });
    }

    void refresh_limits(BlockLimits *bl) override
    {
        if (sector_size_) bl->request_alignment = static_cast<uint32_t>(std::max<uint64_t>(bl->request_alignment, sector_size_));
    }

    int coroutine_fn do_co_pwritev(int64_t offset, int64_t bytes, IOVector &qiov, ReqFlags flags) override
    {
        if (broken_) return -EIO;
        int r = filtered_->co_pwritev(offset, bytes, qiov, flags);
        if (r < 0) return r;
        return co_log(offset, bytes, (flags & kReqFua) ? kFlagFua : 0, &qiov, false);
    }

    int coroutine_fn do_co_pwrite_zeroes(int64_t offset, int64_t bytes, ReqFlags flags) override
    {
        if (broken_) return -EIO;
        int r = filtered_->co_pwrite_zeroes(offset, bytes, flags);
        if (r < 0) return r;
        return co_log(offset, bytes, (flags & kReqFua) ? kFlagFua : 0, nullptr, true);
    }

    int coroutine_fn do_co_pdiscard(int64_t offset, int64_t bytes) override
    {
        if (broken_) return -EIO;
        int r = filtered_->co_pdiscard(offset, bytes);
        if (r < 0) return r;
        return co_log(offset, bytes, kFlagDiscard, nullptr, false);
    }

    // Runs when something was written through the node since its last
    // flush (and cache.no-flush is off), before the generic layer flushes
    // the children: the child's flush must complete before the entry.
    int coroutine_fn do_co_flush_to_disk() override
    {
        if (broken_) return -EIO;
        int r = filtered_->co_flush();
        if (r < 0) return r;
        return co_log(0, 0, kFlagFlush, nullptr, false);
    }

    // A writer of the host file would bypass the log.
    int do_passthrough_fd(bool write, std::string *why) override
    {
        if (!write) return FilterNode::do_passthrough_fd(write, why);
        *why = "node '" + node_name() + "' (blklogwrites) logs each write";
        return -1;
    }

  private:
    // log-append: reads the super block (or, for an empty child, takes a
    // fresh log's), sets *ss to its sector size and walks its entries to
    // find where the next one goes.
    Status read_existing_log(uint64_t *ss)
    {
        int64_t log_len = log_->getlength();
        if (log_len < 0) return errno_error(static_cast<int>(-log_len), "Could not get the log's size");
        if (log_len == 0) {
            *ss = kDefaultSectorSize;
            return {};
        }
        uint8_t sb[kSuperSize] = {};
        int r = run_in_coroutine([&] { return log_->co_pread(0, std::min<int64_t>(kSuperSize, log_len), sb); });
        if (r < 0) return errno_error(-r, "Could not read log superblock");
        if (get_le64(sb) != kLogMagic) return make_error(EINVAL, "Invalid log superblock magic");
        uint64_t version = get_le64(sb + 8);
        if (version != kLogVersion) {
            return make_error(EINVAL, "Unsupported log version %llu", static_cast<unsigned long long>(version));
        }
        uint64_t nr = get_le64(sb + 16);
        uint32_t sectorsize;
        std::memcpy(&sectorsize, sb + 24, 4);
        *ss = le32toh(sectorsize);
        if (!sector_size_valid(*ss)) {
            return make_error(EINVAL, "Invalid log sector size %llu", static_cast<unsigned long long>(*ss));
        }
        // Walk nr entries; each must lie inside the log.
        const uint64_t log_sectors = static_cast<uint64_t>(log_len) / *ss;
        uint64_t sector = 1;
        for (uint64_t i = 0; i < nr; i++) {
            if (sector >= log_sectors) {
                return make_error(EINVAL, "Log entry %llu lies past the end of the log (the super block counts %llu)",
                                  static_cast<unsigned long long>(i), static_cast<unsigned long long>(nr));
            }
            uint8_t e[kEntrySize];
            r = run_in_coroutine([&] { return log_->co_pread(static_cast<int64_t>(sector * *ss), kEntrySize, e); });
            if (r < 0) return errno_error(-r, "Failed to read log entry " + std::to_string(i));
            uint64_t flags = get_le64(e + 16);
            if (flags & ~kFlagMask) {
                return make_error(EINVAL, "Invalid flags 0x%llx in log entry %llu", static_cast<unsigned long long>(flags),
                                  static_cast<unsigned long long>(i));
            }
            uint64_t data = (flags & kFlagDiscard) ? 0 : get_le64(e + 8);
            if (data > log_sectors - sector - 1) {
                return make_error(EINVAL, "Log entry %llu runs past the end of the log",
                                  static_cast<unsigned long long>(i));
            }
            sector += 1 + data;
        }
        cur_sector_ = sector;
        nr_entries_ = nr;
        super_written_ = nr;
        return {};
    }

    // Appends one entry for [offset, offset+bytes) with flags; its data is
    // qiov, or zeroes if zero, or none. Returns 0 or the log's negative
    // errno (then the log is broken).
    int coroutine_fn co_log(int64_t offset, int64_t bytes, uint64_t flags, IOVector *qiov, bool zero)
    {
        const uint64_t ss = sector_size_;
        // A discard reaching an unaligned end of the image covers its
        // partial last sector too.
        const uint64_t nr_sectors = (static_cast<uint64_t>(bytes) + ss - 1) / ss;
        const bool has_data = qiov || zero;
        AlignedBuf hdr = aligned_alloc_buf(std::max<size_t>(log_->node()->limits().min_mem_alignment, 64), ss);
        std::memset(hdr.get(), 0, ss);
        put_le64(hdr.get(), static_cast<uint64_t>(offset) / ss);
        put_le64(hdr.get() + 8, nr_sectors);
        put_le64(hdr.get() + 16, flags);

        uint64_t index, sector;
        {
            std::lock_guard<std::mutex> g(mutex_);
            index = nr_entries_++;
            sector = cur_sector_;
            cur_sector_ += 1 + (has_data ? nr_sectors : 0);
            in_flight_.insert(index);
        }
        IOVector v(hdr.get(), ss);
        if (qiov) v.add_slice(*qiov, 0, static_cast<size_t>(bytes));
        int r = log_->co_pwritev(static_cast<int64_t>(sector * ss), static_cast<int64_t>(v.size()), v, 0);
        if (r >= 0 && zero && bytes > 0) {
            r = log_->co_pwrite_zeroes(static_cast<int64_t>((sector + 1) * ss), static_cast<int64_t>(nr_sectors * ss), 0);
        }
        {
            std::lock_guard<std::mutex> g(mutex_);
            in_flight_.erase(index);
        }
        if (r < 0) {
            broken_ = true;
            return r;
        }
        if ((flags & kFlagFlush) || (index + 1) % update_interval_ == 0) r = co_update_super();
        return r < 0 ? r : 0;
    }

    // Rewrites the super block with the number of entries whose log
    // writes all completed, then flushes the log child.
    int coroutine_fn co_update_super()
    {
        CoMutexGuard g(super_lock_);
        uint64_t done;
        {
            std::lock_guard<std::mutex> lg(mutex_);
            done = in_flight_.empty() ? nr_entries_ : *in_flight_.begin();
        }
        const uint64_t ss = sector_size_;
        AlignedBuf sb = aligned_alloc_buf(std::max<size_t>(log_->node()->limits().min_mem_alignment, 64), ss);
        std::memset(sb.get(), 0, ss);
        put_le64(sb.get(), kLogMagic);
        put_le64(sb.get() + 8, kLogVersion);
        put_le64(sb.get() + 16, done);
        uint32_t s32 = htole32(static_cast<uint32_t>(ss));
        std::memcpy(sb.get() + 24, &s32, 4);
        int r = log_->co_pwrite(0, static_cast<int64_t>(ss), sb.get());
        if (r >= 0) r = log_->co_flush();
        if (r < 0) {
            broken_ = true;
            return r;
        }
        super_written_ = done;
        return 0;
    }

    BdrvChild *log_ = nullptr;
    uint64_t sector_size_ = 0;       // bytes, power of 2 in [32, 16 MiB)
    uint64_t update_interval_ = kDefaultUpdateInterval;   // entries, > 0
    std::mutex mutex_;               // guards the three below; never held across a yield
    uint64_t cur_sector_ = 1;        // the log sector the next entry starts at
    uint64_t nr_entries_ = 0;        // entries allocated (the next entry's index)
    std::set<uint64_t> in_flight_;   // indices of entries whose log writes have not completed
    CoMutex super_lock_;             // serialises super block rewrites
    uint64_t super_written_ = 0;     // nr_entries the super block on the log holds (under super_lock_)
    std::atomic<bool> broken_{false};   // a log write failed: refuse further writes
};

std::unique_ptr<BlockNode> create_logwrites() { return std::make_unique<LogWritesNode>(); }

} // namespace

extern const BlockDriver kDriverBlkLogWrites = {
    .name = "blklogwrites",
    .kind = BlockDriverKind::kFilter,
    .caps = kCapWrite | kCapDiscard | kCapWriteZeroes | kCapResize | kCapShrink | kCapBlockStatus | kCapFlush |
        kCapPersistent | kCapPassthrough | kCapDiscardZeroes,
    .summary = "logs every write to its \"log\" child in dm-log-writes format (filter; children \"file\", \"log\")",
    .decode_options = decode_logwrites_options,
    .create = create_logwrites,
    .probe = nullptr,
    .create_opts = {},
    .create_image = nullptr,
    .measure = nullptr,
    .stores_bitmaps = nullptr,
    .protocol_prefixes = nullptr,
    .parse_filename = nullptr,
};

} // namespace bg
