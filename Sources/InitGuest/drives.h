/*
 * drives.h - the root file system and the read-only drives (shards) in it.
 * Each request returns 0, or -1 with why it failed (code, errno, sentence).
 * Requests do not wait for a hot-plugged disk: serve.c holds a request back
 * until its disks appear, while the streams go on.
 */
#ifndef VX_DRIVES_H
#define VX_DRIVES_H

#include "request.h"

#include <stddef.h>

/* Finds /dev/vdX or /dev/sdX carrying `serial`, waiting up to wait_ms; 0 or -1. */
int drives_find(const char *serial, char *dev, size_t n, int wait_ms);

/* At boot: mounts the base drive and builds the root (no layers yet); 0, or -1 with a sentence in err. */
int drives_setup_root(char *err, size_t n);

/* MOUNT: the drive with `serial`, read-only, nodev, nosuid, at `target` inside the root. */
int drives_mount(const char *serial, const char *target, struct request_fail *why);

/* UNMOUNT: refused with VX_E_BUSY (naming a user) while anything uses it. */
int drives_unmount(const char *serial, struct request_fail *why);

/* LAYERS: rebuilds the root over these drives (bottom first); only while no command runs. */
int drives_set_layers(const char *const *serials, unsigned count, unsigned running, struct request_fail *why);

/* STORE: mounts the writable drive (ext4) and rebuilds the root with its upper layer; only while no command runs. */
int drives_use_store(const char *serial, unsigned running, struct request_fail *why);

/* SYNC: everything written so far reaches the store drive (and, through its flush, the host's file). */
int drives_sync(struct request_fail *why);

/* FREEZE / THAW: blocks every write to the store (after syncing it) until thawed. */
int drives_freeze(int freeze, struct request_fail *why);

/* A frozen store is thawed when the host that froze it goes away. */
void drives_thaw_if_frozen(void);

/* Whether `target` is absolute, without empty, '.' or '..' parts, and not a place the init mounts itself. */
int drives_target_ok(const char *target);

/* Opens (O_PATH) the mount point `target` inside the root, creating missing
 * parts, never following a symlink; -1 with errno set. */
int drives_open_mount_point(const char *target);

/* Whether a drive is mounted at `target`. */
int drives_at(const char *target);

#endif
