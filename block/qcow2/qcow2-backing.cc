// qcow2 backing chain and external data file: opening the children an
// image names in its header (docs/qcow2.md "Backing files and data files").
//
// Backing chain. With the "backing" option absent, the backing file named in
// the header is opened read-only as an implicit node. Before anything is
// opened, the whole chain is walked by reading each image's header: a
// relative name is resolved against the directory of the image naming it
// (as QEMU does), each file's realpath() is compared with those before it
// (a loop is an error, not an endless recursion), and the format comes from
// the backing format extension (any format driver of the graph's registry).
// Without one, the image is probed by the registry's format probes, with a
// warning. The walk goes on through levels of this driver's own format and
// stops at the first of another format (that node opens its own children).
// It then builds the chain as nested inline options (each level's "backing"
// given explicitly), so the nodes below do not repeat it, and
// dump_options() shows the real chain. Options are written as JSON and
// decoded by the registry: this driver names no other driver.
//
// Data file. With "data-file" absent, the name in the data file extension is
// opened as a file node, resolved against the image's directory (QEMU 7.2
// resolves it against the current directory, which breaks as soon as the
// tool runs elsewhere).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "block/qcow2/qcow2.h"
#include "qapi/block-parse.h"
#include "util/log.h"

namespace bg {

namespace {

constexpr size_t kMaxBackingDepth = 256;   // images below the top one

// QEMU's path_combine for plain file names: an absolute name as is, a
// relative one against the directory of base (or as is if base has none).
std::string combine_path(const std::string &base, const std::string &name)
{
    if (name.empty() || name[0] == '/' || filename_has_protocol(name)) return name;
    size_t slash = base.rfind('/');
    if (slash == std::string::npos) return name;
    return base.substr(0, slash + 1) + name;
}

std::string real_path(const std::string &path)
{
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

// Reads up to len bytes at offset 0 of path. Used by the chain walk only
// (a control path, before any node of the chain exists).
Result<std::vector<uint8_t>> read_prefix(const std::string &path, size_t len, uint64_t *file_len)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno_error(errno, "Could not open '" + path + "'");
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) {
        int e = errno;
        ::close(fd);
        return errno_error(e, "Could not get the size of '" + path + "'");
    }
    *file_len = static_cast<uint64_t>(end);
    std::vector<uint8_t> buf(std::min<uint64_t>(len, static_cast<uint64_t>(end)));
    size_t done = 0;
    while (done < buf.size()) {
        ssize_t n = ::pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            ::close(fd);
            return errno_error(e, "Could not read '" + path + "'");
        }
        done += static_cast<size_t>(n);
    }
    ::close(fd);
    return buf;
}

// The header of the qcow2 image at path, or an error if it cannot be read
// or parsed (the walk then stops and the open of that level reports it).
Result<qcow2::Header> read_header(const std::string &path)
{
    uint64_t flen = 0;
    auto first = read_prefix(path, 4096, &flen);
    if (!first) return first.error();
    std::vector<uint8_t> buf = std::move(first.value());
    uint64_t cs = qcow2::header_cluster_size(buf.data(), buf.size());
    if (cs > buf.size() && flen > buf.size()) {
        auto all = read_prefix(path, cs, &flen);
        if (!all) return all.error();
        buf = std::move(all.value());
    }
    return qcow2::parse_header(buf.data(), buf.size(), flen, path, false);
}

} // namespace

// The options of a protocol node for path: those of this image's own file
// node (same driver, aio, locking ...) with "filename" replaced, and the
// cache options of this node.
nlohmann::json Qcow2Node::implicit_file_options(const std::string &path, bool read_only) const
{
    // The protocol node under this image's file child, through filters
    // (blkdebug above the file must not lend its options to a backing file).
    const BlockNode *proto = file_->node();
    while (proto->filtered_child()) proto = proto->filtered_child()->node();
    // A protocol that decodes its own names (nbd://...) gets the name alone.
    const BlockDriver *want = protocol_driver_for(graph()->registry(), path);
    nlohmann::json j = proto->driver() == want && !want->protocol_prefixes
                           ? blockdev_options_to_json(proto->options())
                           : protocol_node_options(path, graph()->registry());
    j.erase("node-name");
    j.erase("read-only");
    j.erase("force-share");
    j.erase("cache");
    j["filename"] = path;
    if (read_only) j["read-only"] = true;
    if (read_only && options().force_share) j["force-share"] = true;
    if (options().cache_direct || options().cache_no_flush) {
        nlohmann::json c = nlohmann::json::object();
        if (options().cache_direct) c["direct"] = true;
        if (options().cache_no_flush) c["no-flush"] = true;
        j["cache"] = std::move(c);
    }
    return j;
}

// An inline child reference decoded from tree by the graph's registry.
Result<BlockdevRef> Qcow2Node::inline_ref(const nlohmann::json &tree) const
{
    auto o = blockdev_options_from_tree(graph()->registry(), tree, false);
    if (!o) {
        // The decoder's "blockdev: " prefix would be doubled by add_node's.
        std::string msg = o.msg();
        if (msg.compare(0, 10, "blockdev: ") == 0) msg.erase(0, 10);
        return Error{o.err(), name_ + ": options of an implicit child: " + msg};
    }
    BlockdevRef r;
    r.kind = BlockdevRef::Kind::kInline;
    r.def = std::make_shared<BlockdevOptions>(std::move(o.value()));
    return r;
}

// The format of one backing level: the recorded one if the registry has
// such a format driver, else the registry's probe of its first bytes.
Result<const BlockDriver *> Qcow2Node::backing_format(const std::string &path, const std::string &bname,
                                                      const std::string &cur_file,
                                                      const std::optional<std::string> &recorded) const
{
    const DriverRegistry &reg = graph()->registry();
    if (recorded) {
        const BlockDriver *d = reg.find(*recorded);
        if (!d || d->kind != BlockDriverKind::kFormat) {
            return qcow2::herr(ENOTSUP, name_, "backing file '%s' has format '%s', which is not a known format",
                               path.c_str(), recorded->c_str());
        }
        return d;
    }
    uint64_t flen = 0;
    auto head = read_prefix(path, kProbeBufSize, &flen);
    std::vector<uint8_t> buf = head ? head.value() : std::vector<uint8_t>();
    const BlockDriver *d = reg.probe_format(buf.data(), buf.size());
    if (!d) return qcow2::herr(ENOTSUP, name_, "backing file '%s': no format driver recognises it", path.c_str());
    if (head) {
        log_warn("%s: backing file '%s' has no recorded format; probed as %s (record it with "
                 "'qemu-img rebase -u -b %s -F %s')",
                 cur_file.c_str(), path.c_str(), d->name, bname.c_str(), d->name);
    }
    return d;
}

Result<BlockdevRef> Qcow2Node::backing_chain_ref(const BlockdevOptions &opts)
{
    struct Level {
        std::string path;
        const BlockDriver *format;
    };
    std::vector<Level> levels;
    std::vector<std::pair<std::string, std::string>> seen;   // realpath, name as opened
    std::string cur_file = file_->node()->filename();
    if (std::string rp = real_path(cur_file); !rp.empty()) seen.emplace_back(rp, cur_file);
    qcow2::Header cur = h_;

    while (!cur.backing_file.empty()) {
        if (levels.size() >= kMaxBackingDepth) {
            return qcow2::herr(EMLINK, name_, "backing chain is too deep (more than %zu images)", kMaxBackingDepth);
        }
        const std::string &bname = cur.backing_file;
        if (bname.compare(0, 5, "json:") == 0 || bname.find("://") != std::string::npos) {
            return qcow2::herr(ENOTSUP, name_, "backing file '%s' (named by '%s') is not a local file name",
                               bname.c_str(), cur_file.c_str());
        }
        std::string path = combine_path(cur_file, bname);
        std::string rp = real_path(path);
        if (!rp.empty()) {
            for (const auto &s : seen) {
                if (s.first != rp) continue;
                std::string chain;
                for (const auto &t : seen) chain += t.second + " -> ";
                chain += path;
                return qcow2::herr(ELOOP, name_, "backing chain loops: %s", chain.c_str());
            }
        }
        auto fmt = backing_format(path, bname, cur_file, cur.backing_format);
        if (!fmt) return fmt.error();
        levels.push_back(Level{path, fmt.value()});
        if (!rp.empty()) seen.emplace_back(rp, path);
        if (fmt.value() != driver()) break;   // a level of another format opens its own children
        auto next = read_header(path);
        if (!next) break;   // opening that level reports it
        cur = std::move(next.value());
        cur_file = path;
    }

    // Innermost first: each level of this format gets the one below as
    // explicit backing.
    nlohmann::json below;   // null for the last level: its header names nothing (or the walk stopped)
    for (size_t i = levels.size(); i-- > 0;) {
        nlohmann::json o = nlohmann::json::object();
        o["driver"] = levels[i].format->name;
        o["read-only"] = true;
        if (opts.force_share) o["force-share"] = true;
        if (opts.cache_direct || opts.cache_no_flush) {
            nlohmann::json c = nlohmann::json::object();
            if (opts.cache_direct) c["direct"] = true;
            if (opts.cache_no_flush) c["no-flush"] = true;
            o["cache"] = std::move(c);
        }
        o["file"] = implicit_file_options(levels[i].path, true);
        if (levels[i].format == driver() && !below.is_null()) o["backing"] = below;
        below = std::move(o);
    }
    return inline_ref(below);
}

Status Qcow2Node::open_backing(const BlockdevOptionsQcow2 &o, const BlockdevOptions &opts)
{
    BlockdevRef ref = o.backing;
    if (ref.kind == BlockdevRef::Kind::kNull) return {};
    if (ref.kind == BlockdevRef::Kind::kNone) {
        if (h_.backing_file.empty()) return {};
        auto r = backing_chain_ref(opts);
        if (!r) return r.error();
        ref = std::move(r.value());
    }
    auto c = open_child("backing", ref, kRoleCow, false);
    if (!c) return c.error().prefixed(name_);
    return {};
}

Status Qcow2Node::open_data_file(const BlockdevOptionsQcow2 &o, const BlockdevOptions &opts)
{
    (void)opts;
    if (!h_.has_data_file()) {
        if (o.data_file.present()) {
            return qcow2::herr(EINVAL, name_, "'data-file' can only be set for images with an external data file");
        }
        data_file_ = file_;
        return {};
    }
    BlockdevRef ref = o.data_file;
    if (!ref.present() || ref.kind == BlockdevRef::Kind::kNull) {
        if (!h_.data_file || h_.data_file->empty()) {
            return qcow2::herr(EINVAL, name_, "'data-file' is required for this image (its header names no data file)");
        }
        auto r = inline_ref(implicit_file_options(combine_path(file_->node()->filename(), *h_.data_file), read_only_));
        if (!r) return r.error();
        ref = std::move(r.value());
    }
    auto c = open_child("data-file", ref, kRoleData, true);
    if (!c) return c.error().prefixed(name_);
    data_file_ = c.value();
    return {};
}

} // namespace bg
