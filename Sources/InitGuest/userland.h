/*
 * userland.h - what an ordinary Linux program expects of the system around
 * it, set up the way systemd and udev would on Debian, minus what isolation
 * takes away (docs/GUEST.md lists each decision).
 */
#ifndef VX_USERLAND_H
#define VX_USERLAND_H

#include <stddef.h>

/* At boot, in the init's /dev (devtmpfs): the /dev/fd and standard stream
 * links, a shared /dev/shm and /dev/mqueue; and the kernel's hardening
 * switches (kernel log and pointers hidden from the unprivileged, protected
 * links, FIFOs and files in sticky directories). 0, or -1 with a sentence. */
int userland_setup(char *err, size_t n);

/* Each time the root is built, inside it: /run/lock, and the cgroup
 * hierarchy read-only at /sys/fs/cgroup (runtimes size themselves by their
 * limits). 0, or -1 with a sentence. */
int userland_setup_root(char *err, size_t n);

/* The guest's host name (sethostname), and /etc/hosts naming it, so that
 * programs resolving their own name (Python's socket.getfqdn, Java) find it.
 * The image's /etc/hosts names vmexec; for another name a file of the same
 * shape in the root's /run is bound over it (and kept when the root is built
 * again). 0, or -1 with a sentence. */
int userland_hostname(const char *name, char *err, size_t n);

/*
 * In a command's process, already in a mount and IPC namespace of its own,
 * before it enters the root: an empty /tmp and /dev/shm (tmpfs with
 * `tmpfs_options`) and a /dev/mqueue of its IPC namespace. Only system
 * calls (it runs in a vfork child). 0, or -1 with errno.
 */
int userland_private(const char *tmpfs_options);

#endif
