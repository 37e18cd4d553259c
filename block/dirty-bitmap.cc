// block/dirty-bitmap.cc -- dirty bitmaps: the in-memory bitmaps the generic
// layer owns, and BlockNode's dirty_bitmap_* API (block/block.h) over them
// and the persistent bitmaps a driver stores (persistent_bitmaps(),
// bitmap_data(), bitmap_change()).
//
// In-memory bitmaps are set by the generic write path (block/io.cc) of the
// node a request reaches: dirty_bitmaps_mark() after each write, write
// zeroes (also when the driver failed: the data may have changed) and
// discard with discard=unmap (the whole requested range, as the caller
// asked it); they follow the node's length (truncate, writes past the end
// of a protocol node). A bitmap of granularity g covers `size` bytes, the
// node's length rounded up to 512 when it was created or last resized, in
// ceil(size / g) bits; bit i stands for bytes [i * g, (i + 1) * g).
//
// Order: the names added while the node is open, newest first, then the
// bitmaps the image held when it was opened, in reverse order of the
// driver's list (each loaded bitmap went in front of the ones before it).
//
// Threading: the API runs in the main loop. DirtyBitmapSet::lock guards
// `mem` (the bits and flags), which dirty_bitmaps_mark() and
// dirty_bitmaps_resize() also touch from request coroutines of any thread;
// BlockNode::bitmaps_recording_ counts the enabled in-memory bitmaps so
// that a write with none to set takes no lock (it is updated under the
// lock, and read with acquire after a bitmap's creation was published).
// `added` and `driver` are touched by the main loop only. The driver
// guards its persistent bitmaps itself.
#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <map>
#include <mutex>

#include "block/block-driver.h"
#include "util/aio.h"
#include "util/bits.h"

namespace bg {

namespace {

constexpr uint32_t kMinGranularity = 512;
constexpr uint32_t kMaxPersistentBitmaps = 65535;
constexpr uint64_t kMaxBitmapDirectoryBytes = 1024ULL * kMaxPersistentBitmaps;

// Bytes a bitmap of a node of this length covers (whole 512-byte sectors).
uint64_t size_for(int64_t length) { return (static_cast<uint64_t>(std::max<int64_t>(length, 0)) + 511) & ~uint64_t{511}; }
uint64_t nb_bits_for(uint64_t size, uint32_t granularity) { return (size + granularity - 1) / granularity; }
bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

uint64_t count_bits(const std::vector<uint8_t> &b)
{
    uint64_t n = 0;
    size_t i = 0;
    for (; i + 8 <= b.size(); i += 8) {
        uint64_t w;
        std::memcpy(&w, b.data() + i, 8);
        n += static_cast<uint64_t>(__builtin_popcountll(w));
    }
    for (; i < b.size(); i++) n += static_cast<uint64_t>(__builtin_popcount(b[i]));
    return n;
}

bool bit_set(const std::vector<uint8_t> &b, uint64_t i) { return (b[i >> 3] >> (i & 7)) & 1; }

// ORs src into dst, a bitmap of granularity dst_gran with dst_nb_bits bits:
// every run of set source bits sets the destination bits its byte range
// touches (clipped to the destination).
void or_bits(std::vector<uint8_t> &dst, uint32_t dst_gran, uint64_t dst_nb_bits, const DirtyBitmapData &src)
{
    const uint64_t nb = std::min<uint64_t>(src.nb_bits, static_cast<uint64_t>(src.bytes.size()) * 8);
    if (src.granularity == dst_gran) {
        const size_t n = std::min(dst.size(), static_cast<size_t>((nb + 7) / 8));
        for (size_t i = 0; i < n; i++) dst[i] |= src.bytes[i];
        bits_clear_tail(dst, dst_nb_bits);
        return;
    }
    uint64_t i = 0;
    while (i < nb) {
        if (!(i & 7) && src.bytes[i >> 3] == 0) {
            i += 8;
            continue;
        }
        if (!bit_set(src.bytes, i)) {
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < nb && bit_set(src.bytes, j)) j++;
        const uint64_t first = i * src.granularity / dst_gran;
        if (first >= dst_nb_bits) return;
        const uint64_t last = std::min(dst_nb_bits - 1, (j * src.granularity - 1) / dst_gran);
        bits_set_range(dst, first, last);
        i = j;
    }
}

// One in-memory bitmap.
struct MemBitmap {
    std::string name;
    uint32_t granularity = 0;
    uint32_t gran_bits = 0;            // log2(granularity)
    uint64_t size = 0;                 // bytes covered
    uint64_t nb_bits = 0;
    std::vector<uint8_t> bits;         // DirtyBitmapData's layout
    bool enabled = true;
    bool busy = false;
    // persistent=true on a read-only node: reported as persistent, never stored.
    bool persistent = false;

    void resize(int64_t length)
    {
        size = size_for(length);
        nb_bits = nb_bits_for(size, granularity);
        bits.resize((nb_bits + 7) / 8, 0);
        bits_clear_tail(bits, nb_bits);
    }
};

} // namespace

class DirtyBitmapSet {
  public:
    std::mutex lock;                   // guards mem
    std::vector<MemBitmap> mem;
    std::vector<std::string> added;    // names added since open, newest first (both kinds)
    // The generic layer's state of persistent bitmaps: busy, and on a
    // read-only node the recording flag enable/disable set (in memory only).
    struct DriverState {
        bool busy = false;
        std::optional<bool> recording;
    };
    std::map<std::string, DriverState> driver;

    MemBitmap *find_mem(const std::string &name)
    {
        for (MemBitmap &b : mem) {
            if (b.name == name) return &b;
        }
        return nullptr;
    }
    // Under lock: the number of enabled in-memory bitmaps.
    int recording_count() const
    {
        return static_cast<int>(std::count_if(mem.begin(), mem.end(), [](const MemBitmap &b) { return b.enabled; }));
    }
};

DirtyBitmapSet *dirty_bitmap_set_new() { return new DirtyBitmapSet; }
void DirtyBitmapSetDeleter::operator()(DirtyBitmapSet *s) const { delete s; }

namespace {

// A bitmap of a node as the API sees it, of either kind.
struct Found {
    std::string name;
    bool in_memory = false;
    uint32_t granularity = 0;
    uint64_t size = 0;                 // bytes covered (merge compares them)
    bool recording = false;
    bool busy = false;
    bool readonly = false;             // a persistent bitmap of a read-only node
    bool inconsistent = false;
    bool persistent = false;
};

// What bdrv_dirty_bitmap_check() refuses.
constexpr unsigned kCheckBusy = 1, kCheckReadonly = 2, kCheckInconsistent = 4;
constexpr unsigned kCheckDefault = kCheckBusy | kCheckReadonly | kCheckInconsistent;
constexpr unsigned kCheckAllowRo = kCheckBusy | kCheckInconsistent;

Status check_usable(const Found &f, unsigned what)
{
    const char *n = f.name.c_str();
    if ((what & kCheckBusy) && f.busy) {
        return make_error(EBUSY, "Bitmap '%s' is currently in use by another operation and cannot be used", n);
    }
    if ((what & kCheckReadonly) && f.readonly) {
        return make_error(EROFS, "Bitmap '%s' is readonly and cannot be modified", n);
    }
    if ((what & kCheckInconsistent) && f.inconsistent) {
        return make_error(EINVAL, "Bitmap '%s' is inconsistent and cannot be used", n);
    }
    return {};
}

Error not_found(const std::string &name) { return make_error(ENOENT, "Dirty bitmap '%s' not found", name.c_str()); }

bool has_flag(const PersistentBitmapInfo &p, const char *flag)
{
    return std::find(p.flags.begin(), p.flags.end(), flag) != p.flags.end();
}

// The persistent bitmaps the driver of n holds (none if it stores none).
std::vector<PersistentBitmapInfo> driver_bitmaps(BlockNode *n)
{
    if (!n->driver() || !n->driver()->stores_bitmaps) return {};
    auto r = n->persistent_bitmaps();
    if (!r) return {};
    return std::move(r.value());
}

Found found_mem(const MemBitmap &b)
{
    Found f;
    f.name = b.name;
    f.in_memory = true;
    f.granularity = b.granularity;
    f.size = b.size;
    f.recording = b.enabled;
    f.busy = b.busy;
    f.persistent = b.persistent;
    return f;
}

Found found_driver(BlockNode *n, DirtyBitmapSet &s, const PersistentBitmapInfo &p)
{
    Found f;
    f.name = p.name;
    f.granularity = p.granularity;
    f.size = size_for(n->getlength());
    f.inconsistent = has_flag(p, "in-use");
    f.readonly = n->read_only();
    f.persistent = true;
    auto it = s.driver.find(p.name);
    // The view enable/disable set while the node is read-only (not after
    // it was reopened read-write: the driver's flag counts then).
    const bool recording = f.readonly && it != s.driver.end() && it->second.recording ? *it->second.recording
                                                                                      : has_flag(p, "auto");
    f.recording = recording && !f.inconsistent;
    f.busy = it != s.driver.end() && it->second.busy;
    return f;
}

// Every bitmap of n in QEMU's order (see the file comment).
std::vector<Found> all_bitmaps(BlockNode *n, DirtyBitmapSet &s)
{
    const std::vector<PersistentBitmapInfo> plist = driver_bitmaps(n);
    std::vector<Found> out;
    std::lock_guard<std::mutex> g(s.lock);
    auto in_driver = [&](const std::string &name) -> const PersistentBitmapInfo * {
        for (const PersistentBitmapInfo &p : plist) {
            if (p.name == name) return &p;
        }
        return nullptr;
    };
    for (const std::string &name : s.added) {
        if (const MemBitmap *b = s.find_mem(name)) {
            out.push_back(found_mem(*b));
        } else if (const PersistentBitmapInfo *p = in_driver(name)) {
            out.push_back(found_driver(n, s, *p));
        }
    }
    for (auto it = plist.rbegin(); it != plist.rend(); ++it) {
        if (std::find(s.added.begin(), s.added.end(), it->name) == s.added.end()) {
            out.push_back(found_driver(n, s, *it));
        }
    }
    return out;
}

std::optional<Found> lookup(BlockNode *n, DirtyBitmapSet &s, const std::string &name)
{
    {
        std::lock_guard<std::mutex> g(s.lock);
        if (const MemBitmap *b = s.find_mem(name)) return found_mem(*b);
    }
    for (const PersistentBitmapInfo &p : driver_bitmaps(n)) {
        if (p.name == name) return found_driver(n, s, p);
    }
    return std::nullopt;
}

// The bits of f, a bitmap of n.
Result<DirtyBitmapData> bits_of(BlockNode *n, DirtyBitmapSet &s, const Found &f)
{
    DirtyBitmapData d;
    if (f.in_memory) {
        std::lock_guard<std::mutex> g(s.lock);
        const MemBitmap *b = s.find_mem(f.name);
        if (!b) return not_found(f.name);
        d.granularity = b->granularity;
        d.nb_bits = b->nb_bits;
        d.enabled = b->enabled;
        d.bytes = b->bits;
        return d;
    }
    auto r = n->bitmap_data(f.name);
    if (!r) return r.error();
    d = std::move(r.value());
    d.enabled = f.recording;
    return d;
}

uint32_t default_granularity(BlockNode *n)
{
    auto info = n->get_info();
    const uint64_t cs = info ? info->cluster_size.value_or(0) : 0;
    if (!cs) return 65536;
    return static_cast<uint32_t>(std::clamp<uint64_t>(cs, 4096, 65536));
}

void forget_name(DirtyBitmapSet &s, const std::string &name)
{
    s.added.erase(std::remove(s.added.begin(), s.added.end(), name), s.added.end());
    s.driver.erase(name);
}

} // namespace

// ---------------------------------------------------------------- the write path

void BlockNode::dirty_bitmaps_mark_slow(int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes <= 0) return;
    const uint64_t off = static_cast<uint64_t>(offset);
    const uint64_t end = off + static_cast<uint64_t>(bytes) - 1;
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    for (MemBitmap &b : bitmaps_->mem) {
        if (!b.enabled || !b.nb_bits) continue;
        const uint64_t first = off >> b.gran_bits;
        if (first >= b.nb_bits) continue;
        bits_set_range(b.bits, first, std::min(b.nb_bits - 1, end >> b.gran_bits));
    }
}

void BlockNode::dirty_bitmaps_resize(int64_t new_length, bool grow_only)
{
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    for (MemBitmap &b : bitmaps_->mem) {
        if (grow_only && size_for(new_length) <= b.size) continue;
        b.resize(new_length);
    }
}

// ---------------------------------------------------------------- the API

std::vector<DirtyBitmapInfo> BlockNode::dirty_bitmaps()
{
    std::vector<DirtyBitmapInfo> out;
    for (const Found &f : all_bitmaps(this, *bitmaps_)) {
        DirtyBitmapInfo i;
        i.name = f.name;
        i.granularity = f.granularity;
        i.recording = f.recording;
        i.busy = f.busy;
        i.persistent = f.persistent;
        i.inconsistent = f.inconsistent;
        if (!f.inconsistent) {
            auto d = bits_of(this, *bitmaps_, f);
            if (d) i.count = count_bits(d->bytes) * f.granularity;
        }
        out.push_back(std::move(i));
    }
    return out;
}

Status BlockNode::dirty_bitmap_add(const std::string &name, std::optional<uint32_t> granularity, bool persistent,
                                   bool disabled)
{
    if (name.empty()) return make_error(EINVAL, "Bitmap name cannot be empty");
    if (granularity && (*granularity < kMinGranularity || !is_pow2(*granularity))) {
        return make_error(EINVAL, "Granularity must be power of 2 and at least 512");
    }
    const uint32_t gran = granularity ? *granularity : default_granularity(this);
    if (persistent) return persistent_bitmap_add(name, gran, disabled);
    if (lookup(this, *bitmaps_, name)) return make_error(EEXIST, "Bitmap already exists: %s", name.c_str());
    if (name.size() > kDirtyBitmapMaxName) return make_error(EINVAL, "Bitmap name too long: %s", name.c_str());
    MemBitmap b;
    b.name = name;
    b.granularity = gran;
    b.gran_bits = static_cast<uint32_t>(__builtin_ctz(gran));
    b.enabled = !disabled;
    b.resize(getlength());
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    bitmaps_->mem.push_back(std::move(b));
    bitmaps_->added.insert(bitmaps_->added.begin(), name);
    bitmaps_recording_.store(bitmaps_->recording_count(), std::memory_order_release);
    return {};
}

// The persistent case of dirty_bitmap_add: QEMU's checks, then the driver's.
Status BlockNode::persistent_bitmap_add(const std::string &name, uint32_t granularity, bool disabled)
{
    if (!drv_ || !drv_->stores_bitmaps) {
        return make_error(ENOTSUP, "Can't store persistent bitmaps to %s: Operation not supported",
                          node_name_.c_str());
    }
    auto fail = [&](int err, const std::string &why) {
        return make_error(err, "Can't make bitmap '%s' persistent in '%s': %s", name.c_str(), node_name_.c_str(),
                          why.c_str());
    };
    uint64_t count = 1, dir_bytes = (24 + name.size() + 7) & ~size_t{7};
    for (const Found &f : all_bitmaps(this, *bitmaps_)) {
        if (f.name == name) return make_error(EEXIST, "Bitmap already exists: %s", name.c_str());
        if (!f.persistent) continue;
        count++;
        dir_bytes += (24 + f.name.size() + 7) & ~size_t{7};
    }
    if (name.size() > kDirtyBitmapMaxName) {
        return fail(EINVAL, "Name length exceeds maximum (" + std::to_string(kDirtyBitmapMaxName) + " characters)");
    }
    if (count > kMaxPersistentBitmaps) return fail(ENOSPC, "Maximum number of persistent bitmaps is already reached");
    if (dir_bytes > kMaxBitmapDirectoryBytes) return fail(ENOSPC, "Not enough space in the bitmap directory");
    BitmapChange c;
    c.kind = BitmapChange::Kind::kAdd;
    c.name = name;
    c.granularity = granularity;
    c.disabled = disabled;
    // A read-only node: the driver's hook itself, which refuses with EROFS
    // when it could store the bitmap on a writable node, or says why not.
    Status st = read_only() ? run_in_coroutine([&] { return co_bitmap_change(c); }) : bitmap_change(c);
    if (st) {
        bitmaps_->added.insert(bitmaps_->added.begin(), name);
        return {};
    }
    if (!read_only() || st.err() != EROFS) return fail(st.err(), st.msg());
    // QEMU keeps it in memory and fails to store it at close.
    BG_TRY(dirty_bitmap_add(name, granularity, false, disabled));
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    bitmaps_->find_mem(name)->persistent = true;
    return {};
}

Status BlockNode::dirty_bitmap_remove(const std::string &name)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    BG_TRY(check_usable(*f, kCheckBusy | kCheckReadonly));
    if (!f->in_memory) {
        BitmapChange c;
        c.kind = BitmapChange::Kind::kRemove;
        c.name = name;
        BG_TRY(bitmap_change(c));
    }
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    auto &mem = bitmaps_->mem;
    mem.erase(std::remove_if(mem.begin(), mem.end(), [&](const MemBitmap &b) { return b.name == name; }), mem.end());
    forget_name(*bitmaps_, name);
    bitmaps_recording_.store(bitmaps_->recording_count(), std::memory_order_release);
    return {};
}

Status BlockNode::dirty_bitmap_clear(const std::string &name, DirtyBitmapData *backup)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    BG_TRY(check_usable(*f, kCheckDefault));
    if (backup) {
        auto d = bits_of(this, *bitmaps_, *f);
        if (!d) return d.error();
        *backup = std::move(d.value());
    }
    if (!f->in_memory) {
        BitmapChange c;
        c.kind = BitmapChange::Kind::kClear;
        c.name = name;
        return bitmap_change(c);
    }
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    MemBitmap *b = bitmaps_->find_mem(name);
    std::fill(b->bits.begin(), b->bits.end(), 0);
    return {};
}

namespace {

// enable / disable of f, a bitmap of n.
Status set_recording(BlockNode *n, DirtyBitmapSet &s, std::atomic<int> &recording_count, const Found &f, bool on)
{
    BG_TRY(check_usable(f, kCheckAllowRo));
    if (f.in_memory) {
        std::lock_guard<std::mutex> g(s.lock);
        s.find_mem(f.name)->enabled = on;
        recording_count.store(s.recording_count(), std::memory_order_release);
        return {};
    }
    if (f.readonly) {
        s.driver[f.name].recording = on;
        return {};
    }
    BitmapChange c;
    c.kind = on ? BitmapChange::Kind::kEnable : BitmapChange::Kind::kDisable;
    c.name = f.name;
    return n->bitmap_change(c);
}

} // namespace

Status BlockNode::dirty_bitmap_enable(const std::string &name)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    return set_recording(this, *bitmaps_, bitmaps_recording_, *f, true);
}

Status BlockNode::dirty_bitmap_disable(const std::string &name)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    return set_recording(this, *bitmaps_, bitmaps_recording_, *f, false);
}

Result<DirtyBitmapData> BlockNode::dirty_bitmap_get(const std::string &name)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    BG_TRY(check_usable(*f, kCheckInconsistent));
    return bits_of(this, *bitmaps_, *f);
}

Status BlockNode::dirty_bitmap_merge(const std::string &target, const std::vector<DirtyBitmapSource> &sources,
                                     DirtyBitmapData *backup)
{
    auto t = lookup(this, *bitmaps_, target);
    if (!t) return not_found(target);
    // The sources ORed together at the target's granularity first, so
    // that a failing source changes nothing.
    DirtyBitmapData acc;
    acc.granularity = t->granularity;
    acc.nb_bits = nb_bits_for(t->size, t->granularity);
    acc.bytes.assign((acc.nb_bits + 7) / 8, 0);
    for (const DirtyBitmapSource &src : sources) {
        BlockNode *n = src.node.empty() ? this : graph_->find(src.node);
        if (!n) return make_error(ENOENT, "Node '%s' not found", src.node.c_str());
        auto f = lookup(n, *n->bitmaps_, src.name);
        if (!f) return not_found(src.name);
        BG_TRY(check_usable(*f, kCheckAllowRo));
        if (f->size != t->size) {
            return make_error(EINVAL,
                              "Bitmaps are of different sizes (destination size is %" PRIu64 ", source size is %" PRIu64
                              ") and can't be merged",
                              t->size, f->size);
        }
        auto d = bits_of(n, *n->bitmaps_, *f);
        if (!d) return d.error();
        or_bits(acc.bytes, acc.granularity, acc.nb_bits, d.value());
    }
    BG_TRY(check_usable(*t, kCheckDefault));
    if (backup) {
        auto d = bits_of(this, *bitmaps_, *t);
        if (!d) return d.error();
        *backup = std::move(d.value());
    }
    if (!t->in_memory) {
        BitmapChange c;
        c.kind = BitmapChange::Kind::kMerge;
        c.name = target;
        c.source = std::move(acc);
        return bitmap_change(c);
    }
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    MemBitmap *b = bitmaps_->find_mem(target);
    or_bits(b->bits, b->granularity, b->nb_bits, acc);
    return {};
}

Status BlockNode::dirty_bitmap_restore(const std::string &name, const DirtyBitmapData &bits)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    if (bits.granularity != f->granularity) {
        return make_error(EINVAL, "Bitmap '%s' has granularity %" PRIu32 ", cannot restore bits of granularity %" PRIu32,
                          name.c_str(), f->granularity, bits.granularity);
    }
    if (!f->in_memory) {
        BitmapChange c;
        c.kind = BitmapChange::Kind::kClear;
        c.name = name;
        BG_TRY(bitmap_change(c));
        c.kind = BitmapChange::Kind::kMerge;
        c.source = bits;
        return bitmap_change(c);
    }
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    MemBitmap *b = bitmaps_->find_mem(name);
    b->bits = bits.bytes;
    b->bits.resize((b->nb_bits + 7) / 8, 0);
    bits_clear_tail(b->bits, b->nb_bits);
    return {};
}

Status BlockNode::dirty_bitmap_set_busy(const std::string &name, bool busy)
{
    auto f = lookup(this, *bitmaps_, name);
    if (!f) return not_found(name);
    if (!f->in_memory) {
        bitmaps_->driver[name].busy = busy;
        return {};
    }
    std::lock_guard<std::mutex> g(bitmaps_->lock);
    bitmaps_->find_mem(name)->busy = busy;
    return {};
}

} // namespace bg
