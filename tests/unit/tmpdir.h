// tests/unit/tmpdir.h -- one scratch directory per test run, shared by the
// unit tests that need files: register make_tmpdir/remove_tmpdir as Check's
// unchecked fixture (they run in the parent process, so the directory goes
// even when a test fails).
#pragma once

#include <string>

namespace bgtest {

extern char g_dir[4096];
// Creates $TMPDIR (or /tmp)/<program name>-XXXXXX in g_dir; aborts on failure.
void make_tmpdir();
// Removes g_dir and everything in it.
void remove_tmpdir();
// g_dir + "/" + name.
std::string tmp_path(const std::string &name);

} // namespace bgtest
