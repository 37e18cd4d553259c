// block/create-job.cc -- blockdev-create: image creation as a job (QEMU's
// "create" job type, block/create.c).
//
// blockdev_create_start() checks the options tree against QEMU's schema
// (BlockdevCreateOptions: the members of each driver's branch and their
// types; those errors are the command's), then starts a job whose run()
// does the creation; its failures (a node that does not exist, a size the
// format refuses, a file that cannot be created) are the job's error, as
// in QEMU, where the driver's create function runs in the job.
//   file:  the "file" driver's create_image (the file is created or
//          emptied under the image locks and resized with the
//          preallocation mode).
//   qcow2: the format driver's create_on_node: the image is written onto
//          the node "file" names (usually a file node over the empty file
//          of an earlier blockdev-create), the data file onto "data-file"'s.
// The job is not a block job (only JOB_STATUS_CHANGE events, absent from
// query-block-jobs), is auto-finalized and must be dismissed. Its progress
// is 0/1 while it runs and 1/1 once it ended, success or failure.
//
// Threading model: main loop; run() in the job's coroutine.
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "block/block-driver.h"
#include "block/jobs.h"

namespace bg {

namespace {

// QEMU's BlockdevDriver enum (7.2): the values "driver" accepts.
const char *const kQemuDrivers[] = {
    "blkdebug",   "blklogwrites", "blkreplay",    "blkverify",   "bochs",          "cloop",
    "compress",   "copy-before-write", "copy-on-read", "dmg",     "file",           "snapshot-access",
    "ftp",        "ftps",         "gluster",      "host_cdrom",  "host_device",    "http",
    "https",      "io_uring",     "iscsi",        "luks",        "nbd",            "nfs",
    "null-aio",   "null-co",      "nvme",         "nvme-io_uring", "parallels",    "preallocate",
    "qcow",       "qcow2",        "qed",          "quorum",      "raw",            "rbd",
    "replication", "ssh",         "throttle",     "vdi",         "vhdx",           "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user", "virtio-blk-vhost-vdpa", "vmdk", "vpc", "vvfat",
};

bool is_qemu_driver(const std::string &d)
{
    for (const char *n : kQemuDrivers) {
        if (d == n) return true;
    }
    return false;
}

// The drivers whose branch of BlockdevCreateOptions has members (QEMU
// 7.2); every other driver's branch is empty.
const char *const kQemuCreateDrivers[] = {"file", "gluster", "luks", "nfs", "parallels", "qcow", "qcow2",
                                          "qed",  "rbd",     "ssh",  "vdi", "vhdx",      "vmdk", "vpc"};

bool has_create_branch(const std::string &d)
{
    for (const char *n : kQemuCreateDrivers) {
        if (d == n) return true;
    }
    return false;
}

// A member of a branch, as QEMU's schema types it.
enum class MType { kStr, kSize, kInt, kBool, kObject, kRef, kEnum };
struct Member {
    const char *name;
    MType type;
    bool optional;
    const char *const *values = nullptr;   // kEnum: nullptr-terminated; nullptr: BlockdevDriver
};

const char *const kPreallocValues[] = {"off", "metadata", "falloc", "full", nullptr};
const char *const kVersionValues[] = {"v2", "v3", nullptr};
const char *const kCompressionValues[] = {"zlib", "zstd", nullptr};

const std::vector<Member> kFileMembers = {
    {"filename", MType::kStr, false},       {"size", MType::kSize, false},
    {"preallocation", MType::kEnum, true, kPreallocValues}, {"nocow", MType::kBool, true},
    {"extent-size-hint", MType::kSize, true},
};

const std::vector<Member> kQcow2Members = {
    {"file", MType::kRef, false},
    {"data-file", MType::kRef, true},
    {"data-file-raw", MType::kBool, true},
    {"extended-l2", MType::kBool, true},
    {"size", MType::kSize, false},
    {"version", MType::kEnum, true, kVersionValues},
    {"backing-file", MType::kStr, true},
    {"backing-fmt", MType::kEnum, true, nullptr},
    {"encrypt", MType::kObject, true},
    {"cluster-size", MType::kSize, true},
    {"preallocation", MType::kEnum, true, kPreallocValues},
    {"lazy-refcounts", MType::kBool, true},
    {"refcount-bits", MType::kInt, true},
    {"compression-type", MType::kEnum, true, kCompressionValues},
};

// QEMU's input visitor's texts. Members are named with their path
// ("options.size"), but enum values and alternates (BlockdevRef) with
// their bare name, as QEMU 7.2 does.
Status check_member(const Member &m, const nlohmann::json &v)
{
    const std::string path = std::string("options.") + m.name;
    auto type_error = [&](const char *expected) {
        return make_error(EINVAL, "Invalid parameter type for '%s', expected: %s", path.c_str(), expected);
    };
    switch (m.type) {
    case MType::kStr:
        if (!v.is_string()) return type_error("string");
        return {};
    case MType::kSize:
        if (!v.is_number_integer()) return make_error(EINVAL, "Parameter '%s' expects uint64", path.c_str());
        return {};
    case MType::kInt:
        if (!v.is_number_integer()) return type_error("integer");
        return {};
    case MType::kBool:
        if (!v.is_boolean()) return type_error("boolean");
        return {};
    case MType::kObject:
        if (!v.is_object()) return type_error("object");
        return {};
    case MType::kRef:
        if (!v.is_string() && !v.is_object()) {
            return make_error(EINVAL, "Invalid parameter type for '%s', expected: BlockdevRef", m.name);
        }
        return {};
    case MType::kEnum: {
        if (!v.is_string()) return type_error("string");
        const std::string s = v.get<std::string>();
        bool ok = false;
        if (m.values) {
            for (const char *const *p = m.values; *p; p++) ok = ok || s == *p;
        } else {
            ok = is_qemu_driver(s);
        }
        if (!ok) return make_error(EINVAL, "Parameter '%s' does not accept value '%s'", m.name, s.c_str());
        return {};
    }
    }
    return {};
}

Status check_members(const std::vector<Member> &members, const nlohmann::json &o)
{
    for (const Member &m : members) {
        auto it = o.find(m.name);
        if (it == o.end()) {
            if (!m.optional) return make_error(EINVAL, "Parameter 'options.%s' is missing", m.name);
            continue;
        }
        BG_TRY(check_member(m, *it));
    }
    for (auto it = o.begin(); it != o.end(); ++it) {
        if (it.key() == "driver") continue;
        bool known = false;
        for (const Member &m : members) known = known || it.key() == m.name;
        if (!known) return make_error(EINVAL, "Parameter 'options.%s' is unexpected", it.key().c_str());
    }
    return {};
}

// A size member as QEMU reads it: a uint64 (a negative JSON number wraps).
uint64_t size_of(const nlohmann::json &v)
{
    return v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
}

class CreateJob final : public Job {
  public:
    CreateJob(JobManager &mgr, const JobCommonOptions &common, BlockGraph &graph, const BlockDriver *drv,
              nlohmann::json options)
        : Job(mgr, common), graph_(graph), drv_(drv), options_(std::move(options))
    {
        progress_set_total(1);
    }

    const char *type() const override { return "create"; }
    bool is_block_job() const override { return false; }

  protected:
    int coroutine_fn run() override
    {
        Status s = std::strcmp(drv_->name, "file") == 0 ? create_file() : create_format();
        drop_inline_nodes();
        progress_add(1);
        if (!s) {
            // QEMU keeps the image-lock hint out of the error itself (it
            // is a hint for the command line): so does the job's error.
            std::string msg = s.error().qemu_text();
            const size_t hint = msg.find(": Is another process using the image [");
            if (hint != std::string::npos) msg.resize(hint);
            set_error(msg);
            return s.err() > 0 ? -s.err() : -EIO;
        }
        return 0;
    }

  private:
    // file: QEMU's raw_co_create checks, then the driver's create_image
    // with the exact size (QEMU rounds only qemu-img's size).
    Status create_file()
    {
        const nlohmann::json &o = options_;
        CreateOptions opts;
        opts.set("size", std::to_string(size_of(o["size"])));
        opts.set("x-exact-size", "on");
        if (o.contains("preallocation")) {
            const std::string p = o["preallocation"].get<std::string>();
            if (p == "metadata") return make_error(ENOTSUP, "Unsupported preallocation mode: metadata");
            opts.set("preallocation", p);
        }
        if (o.contains("nocow")) opts.set("nocow", o["nocow"].get<bool>() ? "on" : "off");
        if (o.contains("extent-size-hint")) {
            const uint64_t hint = size_of(o["extent-size-hint"]);
            if (hint > UINT32_MAX) return make_error(EINVAL, "Extent size hint is too large");
            opts.set("extent_size_hint", std::to_string(hint));
        }
        return drv_->create_image(o["filename"].get<std::string>(), opts);
    }

    // A BlockdevRef: a node's name, or an inline tree opened for the job.
    Result<BlockNode *> open_ref(const nlohmann::json &ref)
    {
        if (ref.is_string()) {
            const std::string name = ref.get<std::string>();
            BlockNode *n = graph_.find(name);
            if (!n) return make_error(ENODEV, "Cannot find device='%s' nor node-name='%s'", name.c_str(), name.c_str());
            return n;
        }
        auto n = graph_.add_node_json(ref);
        if (!n) return n.error();
        inline_nodes_.push_back(n.value()->node_name());
        return n.value();
    }

    void drop_inline_nodes()
    {
        for (const std::string &name : inline_nodes_) (void)graph_.remove_node(name);
        inline_nodes_.clear();
    }

    // qcow2 (and any format with create_on_node): QEMU's qcow2_co_create
    // takes the QAPI options; ours takes the create_image keys.
    Status create_format()
    {
        const nlohmann::json &o = options_;
        const uint64_t size = size_of(o["size"]);
        if (size % 512) return make_error(EINVAL, "Image size must be a multiple of 512 bytes");
        if (o.contains("encrypt")) {
            return make_error(ENOTSUP, "qcow2 encryption is not supported by blockgraph; create the image "
                                       "unencrypted (and encrypt the storage below it)");
        }
        CreateOptions opts;
        opts.set("size", std::to_string(size));
        auto put_bool = [&](const char *key, const char *opt) {
            if (o.contains(key)) opts.set(opt, o[key].get<bool>() ? "on" : "off");
        };
        if (o.contains("version")) opts.set("compat", o["version"].get<std::string>());
        put_bool("extended-l2", "extended_l2");
        if (o.contains("cluster-size")) opts.set("cluster_size", std::to_string(size_of(o["cluster-size"])));
        if (o.contains("refcount-bits")) {
            // Any integer out of range is refused with QEMU's text.
            const int64_t rb = o["refcount-bits"].is_number_unsigned() && o["refcount-bits"].get<uint64_t>() > INT64_MAX
                                   ? -1
                                   : o["refcount-bits"].get<int64_t>();
            opts.set("refcount_bits", rb < 0 || rb > 64 ? "3" : std::to_string(rb));
        }
        put_bool("lazy-refcounts", "lazy_refcounts");
        if (o.contains("preallocation")) opts.set("preallocation", o["preallocation"].get<std::string>());
        if (o.contains("compression-type")) opts.set("compression_type", o["compression-type"].get<std::string>());
        if (o.contains("backing-file")) opts.set("backing_file", o["backing-file"].get<std::string>());
        if (o.contains("backing-fmt")) opts.set("backing_fmt", o["backing-fmt"].get<std::string>());
        put_bool("data-file-raw", "data_file_raw");

        // QEMU finds a size it cannot hold when it resizes the new image.
        if (size > static_cast<uint64_t>(kMaxLength)) {
            return make_error(EFBIG, "Could not resize image: offset(%" PRIu64 ") exceeds maximum(%" PRId64 ")", size,
                              kMaxLength);
        }
        BG_TRY_ASSIGN(BlockNode *file, open_ref(o["file"]));
        BlockNode *data = nullptr;
        if (o.contains("data-file")) {
            BG_TRY_ASSIGN(data, open_ref(o["data-file"]));
            // The header records the data file by its node's file name.
            opts.set("data_file", data->filename());
        }
        Status s = drv_->create_on_node(file, data, opts);
        if (!s && s.err() == EFBIG) {
            // Tables beyond the format's limits: QEMU's text from growing them.
            return make_error(EFBIG, "Could not resize image: Failed to grow the L1 table: File too large");
        }
        return s;
    }

    BlockGraph &graph_;
    const BlockDriver *drv_;
    nlohmann::json options_;
    std::vector<std::string> inline_nodes_;   // opened by run(), closed before it returns
};

} // namespace

Result<Job *> blockdev_create_start(JobManager &mgr, BlockGraph &graph, const std::string &job_id,
                                    const nlohmann::json &options)
{
    // The schema first (QEMU checks the whole command before running it),
    // then the job id, as QEMU does.
    if (!options.is_object()) {
        return make_error(EINVAL, "Invalid parameter type for 'options', expected: object");
    }
    auto d = options.find("driver");
    if (d == options.end()) return make_error(EINVAL, "Parameter 'options.driver' is missing");
    if (!d->is_string()) return make_error(EINVAL, "Invalid parameter type for 'options.driver', expected: string");
    const std::string driver = d->get<std::string>();
    if (!is_qemu_driver(driver)) {
        return make_error(EINVAL, "Parameter 'driver' does not accept value '%s'", driver.c_str());
    }
    const BlockDriver *drv = graph.registry().find(driver);
    if (driver == "file") {
        BG_TRY(check_members(kFileMembers, options));
    } else if (driver == "qcow2") {
        BG_TRY(check_members(kQcow2Members, options));
    } else if (!has_create_branch(driver)) {
        BG_TRY(check_members({}, options));
    } else if (!drv) {
        // A branch of QEMU's we do not have the driver for.
        return make_error(ENOTSUP, "Block driver '%s' not found or not supported", driver.c_str());
    }
    if (!drv) return make_error(ENOTSUP, "Block driver '%s' not found or not supported", driver.c_str());
    const bool can = driver == "file" ? drv->create_image != nullptr : drv->create_on_node != nullptr;
    if (!can || (driver != "file" && driver != "qcow2")) {
        return make_error(ENOTSUP, "Driver does not support blockdev-create");
    }
    BG_TRY(mgr.check_new_id(job_id));
    JobCommonOptions common;
    common.id = job_id;
    common.auto_finalize = true;
    common.auto_dismiss = false;
    Job *job = mgr.add(std::make_unique<CreateJob>(mgr, common, graph, drv, options));
    job->start();
    return job;
}

} // namespace bg
