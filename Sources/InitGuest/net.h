/*
 * net.h - the guest's network, when the host gave it one: QEMU's user-mode
 * network (slirp) on a virtio-net device, addressed as slirp expects.
 */
#ifndef VX_NET_H
#define VX_NET_H

#include <stddef.h>

/* Brings up lo (always: programs talk to themselves over 127.0.0.1 and ::1).
 * With an eth0, gives it 10.0.2.15/24 and a default route through 10.0.2.2.
 * 0, or -1 with a sentence. */
int net_setup(char *err, size_t n);

#endif
