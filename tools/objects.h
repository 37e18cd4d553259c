// tools/objects.h -- --object for the tools without a daemon (img, io,
// nbd): the TLS objects of qapi/tls-object.h, which the nbd driver and
// server find by id (tls-creds=, tls-authz=), and those of
// qapi/user-object.h (secrets, authz-list, throttle-group, ...).
#pragma once

namespace bg {

// Takes every "--object SPEC" and "--object=SPEC" out of argv[first..argc)
// (stopping at "--"), in order, adds each object, and shifts the other
// arguments down (argc shrinks; argv[argc] stays nullptr). On the first
// failure prints "PROG: MSG" on stderr (qemu-img's form: "qemu-img: Unable
// to access credentials ...", "invalid object type: iothread", "option
// '--object' requires an argument") and returns false.
// "--object help" and "--object TYPE,help" print qemu-img's text on stdout
// and exit the process with status 0, as qemu-img does.
// Main thread, before any image is opened.
bool take_object_args(int *argc, char **argv, int first, const char *prog);

} // namespace bg
