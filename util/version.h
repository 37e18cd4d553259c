// util/version.h -- blockgraph's version string (--version, QMP's
// query-version "package").
#pragma once

#define BG_VERSION "0.1.0"
