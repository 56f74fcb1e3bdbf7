/* shim.h - the libvirt C API, for the libvirt machine (Sources/VMExecutor/Libvirt). */
#ifndef VMEXEC_CLIBVIRT_SHIM_H
#define VMEXEC_CLIBVIRT_SHIM_H

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#endif
