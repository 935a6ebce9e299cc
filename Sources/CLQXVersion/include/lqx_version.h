#ifndef LQX_VERSION_H
#define LQX_VERSION_H

/// The version of this build ("0.1.0", or the package's version, e.g. "0.1.0~git20261204.abcdef0").
const char *lqx_version(void);

#endif
