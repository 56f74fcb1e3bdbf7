/*
 * folders.c - host folders in the root (FOLDER).
 *
 * The host shares each folder over virtiofs under a tag; its virtiofsd is
 * confined to that folder on the host (pivot_root into it, and a read-only
 * bind for a read-only folder), so `..` and the symlinks a command plants
 * cannot lead the host side out of it. The guest sees it:
 *   ro       the virtiofs mount, read-only;
 *   rw       the virtiofs mount: writes land in the host's folder;
 *   overlay  an overlay with the folder (read-only) below a tmpfs that takes
 *            the guest's changes: the guest may change anything, the host's
 *            folder never changes, and the changes end with the guest.
 * Each folder is mounted once under /mnt/folders/TAG (outside the root that
 * commands see) and bound into the root at its target, walked without
 * following symlinks (drives.c); a rebuilt root gets its binds again.
 */
#define _GNU_SOURCE
#include "folders.h"

#include "boot.h"
#include "drives.h"
#include "vx_proto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FOLDERS 8
#define FOLDERS_DIR "/mnt/folders"

static struct folder {
    int used;
    uint8_t mode;
    char tag[VX_MAX_SERIAL + 1];
    char target[256];
} folders[MAX_FOLDERS];

static const char *const mode_names[] = {"read-only", "read-write", "overlaid"};

/* /mnt/folders/TAG/PART */
static void path_of(char *out, size_t n, const struct folder *f, const char *part)
{
    snprintf(out, n, "%s/%s/%s", FOLDERS_DIR, f->tag, part);
}

static int bind_into_root(const struct folder *f, struct request_fail *why)
{
    int fd = drives_open_mount_point(f->target);
    if (fd < 0) {
        return request_failed(why, VX_E_MOUNT, errno, "cannot make the mount point %s: %s%s", f->target, strerror(errno),
                 errno == ELOOP || errno == ENOTDIR ? " (a part of it is a symlink or a file)" : "");
    }
    char view[sizeof FOLDERS_DIR + VX_MAX_SERIAL + 8], at[64];
    path_of(view, sizeof view, f, "view");
    snprintf(at, sizeof at, "/proc/self/fd/%d", fd);
    /* A bind keeps the view's flags: read-only stays read-only. */
    int rc = mount(view, at, NULL, MS_BIND | MS_REC, NULL);
    int saved = errno;
    close(fd);
    if (rc != 0)
        return request_failed(why, VX_E_MOUNT, saved, "bind the host folder %s at %s: %s", f->tag, f->target, strerror(saved));
    return 0;
}

/* Mounts the virtiofs share `tag` at `at`; a tag the host does not share is ENOENT. */
static int mount_share(const struct folder *f, const char *at, unsigned long ro, struct request_fail *why)
{
    mkdir(at, 0755);
    if (mount(f->tag, at, "virtiofs", MS_NODEV | MS_NOSUID | ro, NULL) == 0)
        return 0;
    int saved = errno;
    return request_failed(why, VX_E_MOUNT, saved, "mount the host folder %s: %s%s", f->tag, strerror(saved),
             saved == ENOENT || saved == ENODEV ? " (the machine shares no folder under this tag)" : "");
}

/* The overlay's view: the share read-only below a tmpfs whose root looks like the folder's. */
static int mount_overlay(const struct folder *f, struct request_fail *why)
{
    char lower[sizeof FOLDERS_DIR + VX_MAX_SERIAL + 16], rw[sizeof lower], upper[sizeof lower], work[sizeof lower],
        view[sizeof lower], opts[3 * sizeof lower + 40];
    path_of(lower, sizeof lower, f, "lower");
    path_of(rw, sizeof rw, f, "rw");
    path_of(upper, sizeof upper, f, "rw/upper");
    path_of(work, sizeof work, f, "rw/work");
    path_of(view, sizeof view, f, "view");
    if (mount_share(f, lower, MS_RDONLY, why))
        return -1;
    struct stat st;
    mkdir(rw, 0700);
    if (stat(lower, &st) != 0 || mount("tmpfs", rw, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") != 0 ||
        mkdir(upper, 0755) != 0 || mkdir(work, 0700) != 0 || chown(upper, st.st_uid, st.st_gid) != 0 ||
        chmod(upper, st.st_mode & 07777) != 0) {
        return request_failed(why, VX_E_MOUNT, errno, "make the overlay's upper layer for %s: %s", f->tag, strerror(errno));
    }
    snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
    mkdir(view, 0755);
    if (mount("overlay", view, "overlay", MS_NODEV | MS_NOSUID, opts) != 0)
        return request_failed(why, VX_E_MOUNT, errno, "overlay the host folder %s: %s", f->tag, strerror(errno));
    return 0;
}

/* Undoes what a failed FOLDER mounted under /mnt/folders/TAG. */
static void unmount_staging(const struct folder *f)
{
    static const char *const parts[] = {"view", "rw", "lower", ""};
    char at[sizeof FOLDERS_DIR + VX_MAX_SERIAL + 16];
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        path_of(at, sizeof at, f, parts[i]);
        umount2(at, MNT_DETACH);
    }
}

int folders_at(const char *target)
{
    for (int i = 0; i < MAX_FOLDERS; i++)
        if (folders[i].used && strcmp(folders[i].target, target) == 0)
            return 1;
    return 0;
}

int folders_mount(const char *tag, const char *target, uint8_t mode, struct request_fail *why)
{
    if (!drives_target_ok(target)) {
        return request_failed(why, VX_E_MOUNT, 0, "cannot mount a folder at %s: give an absolute path without '.' or "
                 "'..' parts, outside /proc, /sys, /dev, /tmp and /run", target);
    }
    struct folder *slot = NULL;
    for (int i = 0; i < MAX_FOLDERS; i++) {
        if (folders[i].used && strcmp(folders[i].tag, tag) == 0)
            return request_failed(why, VX_E_BUSY, 0, "the host folder %s is already mounted at %s", tag, folders[i].target);
        if (!slot && !folders[i].used)
            slot = &folders[i];
    }
    if (folders_at(target) || drives_at(target))
        return request_failed(why, VX_E_BUSY, 0, "%s is already a mount point of the host's", target);
    if (!slot)
        return request_failed(why, VX_E_MOUNT, 0, "at most %d host folders at once", MAX_FOLDERS);
    struct folder f = {1, mode, {0}, {0}};
    snprintf(f.tag, sizeof f.tag, "%s", tag);
    snprintf(f.target, sizeof f.target, "%s", target);
    char dir[sizeof FOLDERS_DIR + VX_MAX_SERIAL + 2], view[sizeof dir + 8];
    snprintf(dir, sizeof dir, "%s/%s", FOLDERS_DIR, tag);
    mkdir(FOLDERS_DIR, 0700);
    mkdir(dir, 0700);
    path_of(view, sizeof view, &f, "view");
    int rc = mode == VX_FOLDER_OVERLAY ? mount_overlay(&f, why)
                                       : mount_share(&f, view, mode == VX_FOLDER_RO ? MS_RDONLY : 0, why);
    if (rc == 0)
        rc = bind_into_root(&f, why);
    if (rc) {
        unmount_staging(&f);
        return rc;
    }
    *slot = f;
    vx_log("host folder %s at %s, %s", tag, target, mode_names[mode]);
    return 0;
}

int folders_bind_all(struct request_fail *why)
{
    for (int i = 0; i < MAX_FOLDERS; i++)
        if (folders[i].used && bind_into_root(&folders[i], why))
            return -1;
    return 0;
}
