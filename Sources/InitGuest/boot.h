/*
 * boot.h - what PID 1 does before it serves the channel and after it stops:
 * mounts, modules, finding disks and the control port, powering off.
 */
#ifndef VX_BOOT_H
#define VX_BOOT_H

#include <stddef.h>

/* Where the guest's root file system (overlay) is assembled; commands chroot here. */
#define VX_NEWROOT "/mnt/root"
/* virtio serial of the base root drive, and name of the control port. */
#define VX_ROOT_SERIAL "vmexec-root"
#define VX_PORT_NAME "org.vmexec.ctl"

/* Logs one line to the console with the init's prefix. */
void vx_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sleeps ms milliseconds, through signals. */
void vx_sleep_ms(int ms);

/* Reads up to n-1 bytes of a small (sysfs, proc) file, NUL-terminated; the count or -1. */
long vx_read_small(const char *path, char *buf, size_t n);

/*
 * Mounts the pseudo file systems, loads modules, finds the root drive and
 * assembles the overlay root. On failure returns -1 and leaves a sentence
 * in err; the init then still serves the channel so the host hears why.
 */
int boot_setup(char *err, size_t errlen);

/* Finds the control port's device node by its name; 0 or -1. */
int boot_find_port(char *path, size_t n, int wait_ms);

/* Ends every process, syncs, unmounts and powers off. Does not return. */
void boot_poweroff(void) __attribute__((noreturn));

#endif
