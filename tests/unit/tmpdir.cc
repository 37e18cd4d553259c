// tests/unit/tmpdir.cc -- see tmpdir.h.
#include "tests/unit/tmpdir.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace bgtest {

char g_dir[4096];

void make_tmpdir()
{
    const char *t = std::getenv("TMPDIR");
    std::snprintf(g_dir, sizeof(g_dir), "%s/%s-XXXXXX", t && *t ? t : "/tmp", program_invocation_short_name);
    if (!mkdtemp(g_dir)) std::abort();
}

void remove_tmpdir()
{
    std::string cmd = std::string("rm -rf '") + g_dir + "'";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", g_dir);
}

std::string tmp_path(const std::string &name) { return std::string(g_dir) + "/" + name; }

} // namespace bgtest
