#ifndef LQX_CLIBVIRT_SHIM_H
#define LQX_CLIBVIRT_SHIM_H
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#endif
