// tools/img-info.cc -- "blockgraph img info", "check" and "measure".
#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <ctime>
#include <set>

#include "block/block.h"
#include "monitor/block-info.h"
#include "tools/img.h"
#include "util/aio.h"

namespace bg {
namespace img {

using json = nlohmann::json;

namespace {

enum { kOptOutput = 256, kOptBackingChain, kOptImageOpts, kOptSize, kOptObject };

void dump_info_value(int indent, const InfoValue &v);

void dump_info_dict(int indent, const InfoValue &v)
{
    std::vector<size_t> order(v.dict.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        unsigned ba = qdict_bucket(v.dict[a].first), bb = qdict_bucket(v.dict[b].first);
        return ba != bb ? ba < bb : a > b;
    });
    for (size_t idx : order) {
        const auto &[k, e] = v.dict[idx];
        std::string key = k;
        for (char &ch : key) {
            if (ch == '-') ch = ' ';
        }
        bool composite = e.kind == InfoValue::Kind::kDict || e.kind == InfoValue::Kind::kList;
        std::printf("%*s%s:%s", indent * 4, "", key.c_str(), composite ? "\n" : " ");
        dump_info_value(indent + 1, e);
    }
}

void dump_info_value(int indent, const InfoValue &v)
{
    switch (v.kind) {
    case InfoValue::Kind::kNone: std::printf("\n"); break;
    case InfoValue::Kind::kBool: std::printf("%s\n", v.b ? "true" : "false"); break;
    case InfoValue::Kind::kInt: std::printf("%" PRId64 "\n", v.i); break;
    case InfoValue::Kind::kString: std::printf("%s\n", v.s.c_str()); break;
    case InfoValue::Kind::kDict: dump_info_dict(indent, v); break;
    case InfoValue::Kind::kList: {
        int i = 0;
        for (const InfoValue &e : v.list) {
            bool composite = e.kind == InfoValue::Kind::kDict || e.kind == InfoValue::Kind::kList;
            std::printf("%*s[%i]:%c", indent * 4, "", i++, composite ? '\n' : ' ');
            dump_info_value(indent + 1, e);
        }
        break;
    }
    }
}

// The snapshot table as qemu-img prints it (header and one line each).
void print_snapshot_header()
{
    std::printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
}

void print_snapshot_line(const json &sn)
{
    char date[64] = "", clk[64], icount[32] = "";
    time_t t = static_cast<time_t>(sn.value("date-sec", 0LL));
    struct tm tm;
    localtime_r(&t, &tm);
    std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    uint64_t ns = static_cast<uint64_t>(sn.value("vm-clock-sec", 0LL)) * 1000000000ULL +
                  static_cast<uint64_t>(sn.value("vm-clock-nsec", 0LL));
    uint64_t secs = ns / 1000000000ULL;
    std::snprintf(clk, sizeof(clk), "%02d:%02d:%02d.%03d", static_cast<int>(secs / 3600),
                  static_cast<int>((secs / 60) % 60), static_cast<int>(secs % 60),
                  static_cast<int>((ns / 1000000) % 1000));
    if (sn.contains("icount")) std::snprintf(icount, sizeof(icount), "%" PRIu64, sn["icount"].get<uint64_t>());
    std::string size = size_to_str(sn.value("vm-state-size", 0ULL));
    std::printf("%-9s %-16s %8s%20s%13s%11s\n", sn.value("id", "").c_str(), sn.value("name", "").c_str(),
                size.c_str(), date, clk, icount);
}

} // namespace

json image_info(BlockNode *node, const std::string &filename)
{
    json j = json::object();
    j["filename"] = filename;
    j["format"] = node->driver_name();
    // QEMU keeps lengths in 512-byte sectors: a raw file's odd tail rounds up.
    j["virtual-size"] = (node->getlength() + 511) & ~int64_t{511};
    int64_t actual = node->allocated_file_size();
    if (actual >= 0) j["actual-size"] = actual;
    j["dirty-flag"] = false;
    Result<ImageInfo> ri = node->get_info();
    // Cluster size and dirty flag come from the node that answers for the
    // data (raw over rbd: the rbd image's object size), as in QEMU;
    // format-specific data only from the node itself.
    BlockNode *bn = block_info_node(node);
    Result<ImageInfo> bi = bn == node || !bn ? ri : bn->get_info();
    if (bn && bi) {
        j["dirty-flag"] = bi.value().dirty_flag;
        if (bi.value().cluster_size) j["cluster-size"] = *bi.value().cluster_size;
    }
    if (ri) {
        const ImageInfo &ii = ri.value();
        if (ii.backing_filename) j["backing-filename"] = *ii.backing_filename;
        // Computed from the name (info opens no backing file), as QEMU does.
        std::optional<std::string> full;
        if (ii.backing_filename) full = node_full_backing_filename(node, *ii.backing_filename);
        if (!full) full = ii.full_backing_filename;
        if (full) j["full-backing-filename"] = *full;
        if (ii.backing_format) j["backing-filename-format"] = *ii.backing_format;
        // Asked of the node: raw and filters pass the question down.
        std::vector<SnapshotInfo> snaps = ii.snapshots;
        if (snaps.empty()) {
            auto sn = node->snapshot_list();
            if (sn) snaps = sn.value();
        }
        if (!snaps.empty()) {
            json a = json::array();
            for (const SnapshotInfo &s : snaps) a.push_back(snapshot_info_json<json>(s));
            j["snapshots"] = a;
        }
        if (ii.format_specific.kind != InfoValue::Kind::kNone) {
            j["format-specific"] = info_value_json<json>(ii.format_specific);
        }
    }
    return j;
}

namespace {

// The human dump needs the InfoValue's order; keep it next to the JSON.
struct InfoEntry {
    json j;
    InfoValue specific;
};

InfoEntry collect_info(BlockNode *node, const std::string &filename)
{
    InfoEntry e;
    e.j = image_info(node, filename);
    Result<ImageInfo> ri = node->get_info();
    if (ri) e.specific = ri.value().format_specific;
    return e;
}

void print_info_human(const InfoEntry &e)
{
    const json &j = e.j;
    std::printf("image: %s\n", j["filename"].get<std::string>().c_str());
    std::printf("file format: %s\n", j["format"].get<std::string>().c_str());
    int64_t vs = j["virtual-size"].get<int64_t>();
    std::printf("virtual size: %s (%" PRId64 " bytes)\n", size_to_str(static_cast<uint64_t>(vs)).c_str(), vs);
    if (j.contains("actual-size")) {
        std::printf("disk size: %s\n", size_to_str(j["actual-size"].get<uint64_t>()).c_str());
    } else {
        std::printf("disk size: unavailable\n");
    }
    if (j.contains("cluster-size")) std::printf("cluster_size: %" PRId64 "\n", j["cluster-size"].get<int64_t>());
    if (j.value("dirty-flag", false)) std::printf("cleanly shut down: no\n");
    if (j.contains("backing-filename")) {
        std::string b = j["backing-filename"];
        std::printf("backing file: %s", b.c_str());
        if (!j.contains("full-backing-filename")) {
            std::printf(" (cannot determine actual path)");
        } else if (j["full-backing-filename"].get<std::string>() != b) {
            std::printf(" (actual path: %s)", j["full-backing-filename"].get<std::string>().c_str());
        }
        std::printf("\n");
    }
    if (j.contains("backing-filename-format")) {
        std::printf("backing file format: %s\n", j["backing-filename-format"].get<std::string>().c_str());
    }
    if (j.contains("snapshots")) {
        std::printf("Snapshot list:\n");
        print_snapshot_header();
        for (const json &sn : j["snapshots"]) print_snapshot_line(sn);
    }
    print_format_specific_human(e.specific);
}

} // namespace

void print_format_specific_human(const InfoValue &specific)
{
    if (specific.kind != InfoValue::Kind::kDict) return;
    std::printf("Format specific information:\n");
    const InfoValue *data = specific.find("data");
    if (data) dump_info_value(1, *data);
}

void print_image_info_human(const json &info)
{
    InfoEntry e;
    e.j = info;
    print_info_human(e);
}

// ---------------------------------------------------------------- info

namespace {

// info's images, as qemu-img collects them: each opened alone (without its
// backing file, so a missing or looping backing file does not stop info);
// with chain, then the image its header names (full-backing-filename, in
// backing-filename-format or probed), until one has none. A file name seen
// before fails: "Backing file 'X' creates an infinite loop.". False after
// printing the error (nothing is printed then, as qemu-img).
bool collect_chain_info(OpenArgs oa, bool chain, std::vector<InfoEntry> *list)
{
    std::set<std::string> seen;
    oa.no_backing = true;
    for (;;) {
        if (!seen.insert(oa.name).second) {
            error("Backing file '%s' creates an infinite loop.", oa.name.c_str());
            return false;
        }
        std::unique_ptr<OpenImage> img = open_img(oa);
        if (!img) return false;
        // QEMU shows the node's file name (a json: or --image-opts
        // description of a plain file shows that file's name).
        // A blklogwrites filter in the tree is named by its options (its
        // log child is part of what it is), as QEMU does.
        bool logwrites = false;
        for (BlockNode *n = img->root; n && !logwrites; n = n->file_child() ? n->file_child()->node() : nullptr) {
            logwrites = std::strcmp(n->driver_name(), "blklogwrites") == 0;
        }
        const std::string name = logwrites ? node_qemu_filename(img->root)
                                 : img->root->filename().empty() ? oa.name : img->root->filename();
        list->push_back(collect_info(img->root, name));
        const json &j = list->back().j;
        if (!chain) return true;
        if (!j.contains("full-backing-filename")) {
            if (!j.contains("backing-filename")) return true;
            error("Could not determine absolute backing filename, but backing filename '%s' present",
                       j["backing-filename"].get<std::string>().c_str());
            return false;
        }
        OpenArgs next;
        next.name = j["full-backing-filename"].get<std::string>();
        next.format = j.value("backing-filename-format", std::string());
        next.force_share = oa.force_share;
        next.no_backing = true;
        oa = next;
    }
}

} // namespace

int img_info(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"format", required_argument, nullptr, 'f'},
        {"output", required_argument, nullptr, kOptOutput},
        {"backing-chain", no_argument, nullptr, kOptBackingChain},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    OutputFormat ofmt = OutputFormat::kHuman;
    bool chain = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:hU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'U': oa.force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptBackingChain: chain = true; break;
        case kOptOutput:
            if (!parse_output_format(optarg, &ofmt)) return 1;
            break;
        default: return bad_option(argc, argv, "f");
        }
    }
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    oa.name = argv[optind];
    std::vector<InfoEntry> list;
    if (!collect_chain_info(oa, chain, &list)) return 1;
    if (ofmt == OutputFormat::kJson) {
        if (chain) {
            json a = json::array();
            for (const InfoEntry &e : list) a.push_back(e.j);
            std::printf("%s\n", json_pretty(a).c_str());
        } else {
            std::printf("%s\n", json_pretty(list[0].j).c_str());
        }
    } else {
        bool delim = false;
        for (const InfoEntry &e : list) {
            if (delim) std::printf("\n");
            delim = true;
            print_info_human(e);
        }
    }
    return 0;
}

// ---------------------------------------------------------------- check

namespace {

json check_json(const CheckResult &r, const std::string &filename, const std::string &format)
{
    json j = json::object();
    j["filename"] = filename;
    j["format"] = format;
    j["check-errors"] = r.check_errors;
    if (r.corruptions) j["corruptions"] = r.corruptions;
    if (r.leaks) j["leaks"] = r.leaks;
    if (r.corruptions_fixed) j["corruptions-fixed"] = r.corruptions_fixed;
    if (r.leaks_fixed) j["leaks-fixed"] = r.leaks_fixed;
    if (r.image_end_offset) j["image-end-offset"] = r.image_end_offset;
    if (r.total_clusters) j["total-clusters"] = r.total_clusters;
    if (r.allocated_clusters) j["allocated-clusters"] = r.allocated_clusters;
    if (r.fragmented_clusters) j["fragmented-clusters"] = r.fragmented_clusters;
    if (r.compressed_clusters) j["compressed-clusters"] = r.compressed_clusters;
    return j;
}

void check_human(const CheckResult &r)
{
    if (!(r.corruptions || r.leaks || r.check_errors)) {
        qprintf("No errors were found on the image.\n");
    } else {
        if (r.corruptions) {
            qprintf("\n%" PRId64 " errors were found on the image.\n"
                    "Data may be corrupted, or further writes to the image may corrupt it.\n",
                    r.corruptions);
        }
        if (r.leaks) {
            qprintf("\n%" PRId64 " leaked clusters were found on the image.\n"
                    "This means waste of disk space, but no harm to data.\n",
                    r.leaks);
        }
        if (r.check_errors) {
            qprintf("\n%" PRId64 " internal errors have occurred during the check.\n", r.check_errors);
        }
    }
    if (r.total_clusters != 0 && r.allocated_clusters != 0) {
        qprintf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                r.allocated_clusters, r.total_clusters,
                static_cast<double>(r.allocated_clusters) * 100.0 / static_cast<double>(r.total_clusters),
                static_cast<double>(r.fragmented_clusters) * 100.0 / static_cast<double>(r.allocated_clusters),
                static_cast<double>(r.compressed_clusters) * 100.0 / static_cast<double>(r.allocated_clusters));
    }
    if (r.image_end_offset) qprintf("Image end offset: %" PRId64 "\n", r.image_end_offset);
}

} // namespace

int img_check(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"format", required_argument, nullptr, 'f'},
        {"repair", required_argument, nullptr, 'r'},
        {"output", required_argument, nullptr, kOptOutput},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    OutputFormat ofmt = OutputFormat::kHuman;
    CheckFix fix = 0;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'r':
            if (std::strcmp(optarg, "leaks") == 0) {
                fix = kCheckFixLeaks;
            } else if (std::strcmp(optarg, "all") == 0) {
                fix = kCheckFixLeaks | kCheckFixErrors;
            } else {
                return usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s", optarg);
            }
            break;
        case 'T': oa.cache = optarg; break;
        case 'q': g_quiet = true; break;
        case 'U': oa.force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptOutput:
            if (!parse_output_format(optarg, &ofmt)) return 1;
            break;
        default: return bad_option(argc, argv, "frT");
        }
    }
    if (optind != argc - 1) return usage_error("Expecting one image file name");
    if (fix && oa.force_share) {
        error("--force-share/-U is not allowed when checking and repairing an image");
        return 1;
    }
    oa.name = argv[optind];
    oa.read_only = fix == 0;
    oa.check_repair = fix != 0;
    std::unique_ptr<OpenImage> img = open_img(oa);
    if (!img) return 1;

    BlockNode *node = img->root;
    CheckResult res;
    Status st = node->check(&res, fix);
    for (const std::string &m : res.messages) std::fprintf(stderr, "%s\n", m.c_str());
    if (!st) {
        if (st.err() == ENOTSUP) {
            error("This image format does not support checks");
            return 63;
        }
        error("Check failed: %s", st.msg().c_str());
        return 1;
    }
    if (res.corruptions_fixed || res.leaks_fixed) {
        int64_t lf = res.leaks_fixed, cf = res.corruptions_fixed;
        if (ofmt == OutputFormat::kHuman) {
            qprintf("The following inconsistencies were found and repaired:\n\n"
                    "    %" PRId64 " leaked clusters\n"
                    "    %" PRId64 " corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    lf, cf);
        }
        CheckResult again;
        Status st2 = node->check(&again, 0);
        for (const std::string &m : again.messages) std::fprintf(stderr, "%s\n", m.c_str());
        if (!st2) {
            error("Check failed: %s", st2.msg().c_str());
            return 1;
        }
        res = again;
        res.leaks_fixed = lf;
        res.corruptions_fixed = cf;
    }
    if (ofmt == OutputFormat::kHuman) {
        check_human(res);
    } else if (!g_quiet) {
        std::printf("%s\n", json_pretty(check_json(res, oa.name, node->driver_name())).c_str());
    }
    if (res.check_errors) {
        error("Check failed");
        return 1;
    }
    if (res.corruptions) return 2;
    if (res.leaks) return 3;
    return 0;
}

// ---------------------------------------------------------------- measure

int img_measure(int argc, char **argv)
{
    static const struct option kLong[] = {
        {"help", no_argument, nullptr, 'h'},
        {"image-opts", no_argument, nullptr, kOptImageOpts},
        {"output", required_argument, nullptr, kOptOutput},
        {"size", required_argument, nullptr, kOptSize},
        {"force-share", no_argument, nullptr, 'U'},
        {nullptr, 0, nullptr, 0},
    };
    OpenArgs oa;
    std::optional<SnapshotSpec> snapshot;
    OutputFormat ofmt = OutputFormat::kHuman;
    std::string out_fmt = "raw";
    CreateOptions copts;
    int64_t size = -1;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", kLong, nullptr)) != -1) {
        switch (c) {
        case 'f': oa.format = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': {
            Status s = copts.parse_append(optarg);
            if (!s) {
                error("%s", s.msg().c_str());
                return 1;
            }
            break;
        }
        case 'l':
            if (!parse_snapshot_param(optarg, &snapshot)) return 1;
            break;
        case 'U': oa.force_share = true; break;
        case kOptImageOpts: oa.image_opts = true; break;
        case kOptOutput:
            if (!parse_output_format(optarg, &ofmt)) return 1;
            break;
        case kOptSize: {
            Result<int64_t> r = parse_img_size(optarg);
            if (!r) {
                error("%s", r.msg().c_str());
                return 1;
            }
            size = r.value();
            break;
        }
        default: return bad_option(argc, argv, "fOol");
        }
    }
    const bool has_file = optind < argc;
    if (optind + 1 < argc) return usage_error("Expecting at most one image file name");
    if (has_file && size != -1) {
        error("--size N cannot be used together with a filename.");
        return 1;
    }
    if (!has_file && size == -1) {
        error("Either --size N or one filename must be specified.");
        return 1;
    }
    if (copts.has("help")) return print_create_options_help(out_fmt);
    const BlockDriver *drv = builtin_drivers().find(out_fmt);
    if (!drv || drv->kind == BlockDriverKind::kFilter) {
        error("Unknown file format '%s'", out_fmt.c_str());
        return 1;
    }
    std::unique_ptr<OpenImage> img;
    if (has_file) {
        oa.name = argv[optind];
        img = snapshot ? open_img_snapshot(oa, *snapshot) : open_img(oa);
        if (!img) return 1;
        size = img->blk->getlength();
    }
    copts.set("size", std::to_string(size));
    Result<MeasureInfo> r = run_in_coroutine(
        [&]() { return bg::img_measure(drv, copts, img ? img->root : nullptr); });
    if (!r) {
        error("%s", r.msg().c_str());
        return 1;
    }
    const MeasureInfo &m = r.value();
    if (ofmt == OutputFormat::kJson) {
        json j = json::object();
        j["required"] = m.required;
        j["fully-allocated"] = m.fully_allocated;
        if (m.bitmaps) j["bitmaps"] = *m.bitmaps;
        std::printf("%s\n", json_pretty(j).c_str());
    } else {
        std::printf("required size: %" PRIu64 "\n", m.required);
        std::printf("fully allocated size: %" PRIu64 "\n", m.fully_allocated);
        if (m.bitmaps) std::printf("bitmaps size: %" PRIu64 "\n", *m.bitmaps);
    }
    return 0;
}

} // namespace img
} // namespace bg
