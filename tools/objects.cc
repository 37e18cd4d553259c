#include "tools/objects.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "qapi/tls-object.h"
#include "qapi/user-object.h"

namespace bg {

bool take_object_args(int *argc, char **argv, int first, const char *prog)
{
    int out = first;
    bool rest = false;   // after "--": operands only
    for (int i = first; i < *argc; i++) {
        const char *a = argv[i];
        std::string spec;
        if (rest || (std::strcmp(a, "--object") != 0 && std::strncmp(a, "--object=", 9) != 0)) {
            rest = rest || std::strcmp(a, "--") == 0;
            argv[out++] = argv[i];
            continue;
        }
        if (a[8] == '=') {
            spec = a + 9;
        } else if (i + 1 < *argc) {
            spec = argv[++i];
        } else {
            std::fprintf(stderr, "%s: option '--object' requires an argument\n", prog);
            return false;
        }
        const std::string help = object_help_text(spec);
        if (!help.empty()) {
            std::fputs(help.c_str(), stdout);
            std::exit(0);
        }
        Status st = object_add_from_keyval(spec);
        if (!st.ok()) {
            std::fprintf(stderr, "%s: %s\n", prog, st.msg().c_str());
            return false;
        }
    }
    argv[out] = nullptr;
    *argc = out;
    return true;
}

} // namespace bg
