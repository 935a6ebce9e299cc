// The one place a build's version is set. packaging/debian/rules writes the package's version
// here before building, so only this file is compiled again and the binaries relinked.
#include "lqx_version.h"

#define LQX_VERSION "0.1.0"

const char *lqx_version(void) { return LQX_VERSION; }
