/*
 * drives.c - the guest's root file system and the read-only drives (shards)
 * the host attaches to it.
 *
 * The root that commands run in is an overlay: the base drive at the bottom,
 * layer shards above it (bottom first), a writable upper layer on top. It can
 * be rebuilt with other layers while no command runs. Mount shards are
 * mounted straight onto their target inside the root, read-only, nodev,
 * nosuid; targets are walked component by component without following a
 * symlink, since commands (untrusted) may have planted one in the upper layer.
 *
 * Drives are found by serial: virtio-blk's /sys/block/vd* /serial, or a SCSI
 * disk's unit serial number (VPD page 0x80) for the hot-plugged shards.
 */
#define _GNU_SOURCE
#include "drives.h"

#include "boot.h"
#include "folders.h"
#include "userland.h"
#include "vx_proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_DRIVES 32
#define SHARDS_DIR "/mnt/shards"
#define ROOT_OPTS_MAX 2048

enum use { UNUSED, AT_TARGET, AS_LAYER };

/* A drive the host asked for: mounted at `target` in the root, or a layer. */
static struct drive {
    enum use use;
    char serial[VX_MAX_SERIAL + 1];
    char dev[32];
    char target[256];
} drives[MAX_DRIVES];

/* Where the root's writable layer lives: a tmpfs, or the store drive's ext4. */
#define STORE_DIR "/mnt/store"
static const char *upper_dir = "/mnt/rw/upper", *work_dir = "/mnt/rw/work";
static int have_store;

/* The current layers, bottom first (indices into drives[]). */
static int layers[VX_MAX_LAYERS];
static unsigned layer_count;

/* Whether block device `name` (vdX or sdX) carries `serial` and is ready (has a size). */
static int has_serial(const char *name, const char *serial)
{
    char path[300], val[128];
    size_t len = strlen(serial);
    snprintf(path, sizeof path, "/sys/block/%s/size", name);
    if (vx_read_small(path, val, sizeof val) <= 0 || strtoull(val, NULL, 10) == 0)
        return 0; /* a hot-plugged disk shows up before its capacity is read */
    if (strncmp(name, "vd", 2) == 0) {
        snprintf(path, sizeof path, "/sys/block/%s/serial", name);
        long r = vx_read_small(path, val, sizeof val);
        while (r > 0 && (val[r - 1] == '\n' || val[r - 1] == ' '))
            val[--r] = 0;
        return r >= 0 && strcmp(val, serial) == 0;
    }
    if (strncmp(name, "sd", 2) == 0) {
        /* VPD page 0x80: 4 header bytes, then the serial, maybe space-padded. */
        snprintf(path, sizeof path, "/sys/block/%s/device/vpd_pg80", name);
        long r = vx_read_small(path, val, sizeof val);
        if (r < 4 || (uint8_t)val[1] != 0x80)
            return 0;
        size_t n = ((size_t)(uint8_t)val[2] << 8 | (uint8_t)val[3]);
        if (n > (size_t)r - 4)
            n = (size_t)r - 4;
        while (n > 0 && (val[4 + n - 1] == ' ' || val[4 + n - 1] == 0))
            n--;
        return n == len && memcmp(val + 4, serial, len) == 0;
    }
    return 0;
}

int drives_find(const char *serial, char *dev, size_t n, int wait_ms)
{
    for (int waited = 0;; waited += 10) {
        DIR *d = opendir("/sys/block");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] != '.' && has_serial(e->d_name, serial) &&
                snprintf(dev, n, "/dev/%s", e->d_name) < (int)n && access(dev, R_OK) == 0) {
                closedir(d);
                return 0;
            }
        }
        if (d)
            closedir(d);
        if (waited >= wait_ms)
            return -1;
        vx_sleep_ms(10);
    }
}

static struct drive *find_drive(const char *serial)
{
    for (int i = 0; i < MAX_DRIVES; i++)
        if (drives[i].use != UNUSED && strcmp(drives[i].serial, serial) == 0)
            return &drives[i];
    return NULL;
}

/* Checks a target: absolute, no empty, '.' or '..' part, not a place the init mounts itself. */
int drives_target_ok(const char *t)
{
    if (t[0] != '/' || !t[1])
        return 0;
    static const char *const own[] = {"/proc", "/sys", "/dev", "/tmp", "/run"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        size_t l = strlen(own[i]);
        if (strncmp(t, own[i], l) == 0 && (t[l] == 0 || t[l] == '/'))
            return 0;
    }
    for (const char *p = t; *p;) {
        const char *s = p + 1, *e = strchrnul(s, '/');
        size_t l = (size_t)(e - s);
        if (l == 0 || (l == 1 && s[0] == '.') || (l == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        p = e;
    }
    return 1;
}

/*
 * Opens the mount point `target` inside the root, creating missing parts,
 * walking it part by part and never following a symlink (unlike
 * files.c's open_resolved_in_root, which follows links inside the root as
 * a command would): a mount must not land where a planted link points.
 * Returns an O_PATH fd or -1 with errno set.
 */
int drives_open_mount_point(const char *target)
{
    int fd = open(VX_NEWROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
    char part[256];
    for (const char *p = target; fd >= 0 && *p;) {
        const char *s = p + 1, *e = strchrnul(s, '/');
        size_t l = (size_t)(e - s);
        memcpy(part, s, l);
        part[l] = 0;
        if (mkdirat(fd, part, 0755) != 0 && errno != EEXIST) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
        int next = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int saved = errno;
        close(fd);
        errno = saved;
        fd = next;
        p = e;
    }
    return fd;
}

/* mount(2) of a squashfs drive, retried briefly while a fresh disk is still settling. */
static int mount_drive(const char *dev, const char *at)
{
    for (int waited = 0;; waited += 20) {
        if (mount(dev, at, "squashfs", MS_RDONLY | MS_NODEV | MS_NOSUID, NULL) == 0)
            return 0;
        if ((errno != ENXIO && errno != ENODEV && errno != ENOMEDIUM) || waited >= 2000)
            return -1;
        vx_sleep_ms(20);
    }
}

static int mount_at_target(struct drive *d, struct request_fail *why)
{
    int fd = drives_open_mount_point(d->target);
    if (fd < 0) {
        return request_failed(why, VX_E_MOUNT, errno, "cannot make the mount point %s: %s%s", d->target, strerror(errno),
                 errno == ELOOP || errno == ENOTDIR ? " (a part of it is a symlink or a file)" : "");
    }
    char at[64];
    snprintf(at, sizeof at, "/proc/self/fd/%d", fd);
    int rc = mount_drive(d->dev, at);
    int saved = errno;
    close(fd);
    if (rc != 0) {
        return request_failed(why, VX_E_MOUNT, saved, "mount %s (drive %s) at %s: %s", d->dev, d->serial, d->target, strerror(saved));
    }
    return 0;
}

/* Mounts the drive's squashfs under /mnt/shards/SERIAL (for use as a layer). */
static int stage(struct drive *d, struct request_fail *why)
{
    char at[sizeof SHARDS_DIR + VX_MAX_SERIAL + 2];
    snprintf(at, sizeof at, "%s/%s", SHARDS_DIR, d->serial);
    mkdir(SHARDS_DIR, 0700);
    mkdir(at, 0755);
    if (mount_drive(d->dev, at) != 0 && errno != EBUSY) {
        return request_failed(why, VX_E_MOUNT, errno, "mount %s (drive %s): %s", d->dev, d->serial, strerror(errno));
    }
    return 0;
}

static void unstage(struct drive *d)
{
    char at[sizeof SHARDS_DIR + VX_MAX_SERIAL + 2];
    snprintf(at, sizeof at, "%s/%s", SHARDS_DIR, d->serial);
    if (umount2(at, 0) != 0)
        umount2(at, MNT_DETACH);
    rmdir(at);
}

/* Mounts the root overlay over the current layers, and what commands expect inside it. */
static int build_root(struct request_fail *why)
{
    char opts[ROOT_OPTS_MAX];
    size_t o = (size_t)snprintf(opts, sizeof opts, "lowerdir=");
    for (unsigned i = layer_count; i-- > 0;)
        o += (size_t)snprintf(opts + o, sizeof opts - o, "%s/%s:", SHARDS_DIR, drives[layers[i]].serial);
    snprintf(opts + o, sizeof opts - o, "/mnt/lower,upperdir=%s,workdir=%s", upper_dir, work_dir);
    const unsigned long safe = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    struct {
        const char *src, *dst, *type;
        unsigned long flags;
        const char *data;
    } const m[] = {
        /* nosuid: a setuid file in a layer shard (or the base) gains nothing. */
        {"overlay", VX_NEWROOT, "overlay", MS_NODEV | MS_NOSUID, opts},
        {"proc", VX_NEWROOT "/proc", "proc", safe, NULL},
        {"sysfs", VX_NEWROOT "/sys", "sysfs", safe | MS_RDONLY, NULL},
        {"/dev", VX_NEWROOT "/dev", NULL, MS_BIND | MS_REC, NULL},
        {"tmpfs", VX_NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
        {"tmpfs", VX_NEWROOT "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        mkdir(m[i].dst, 0755);
        if (mount(m[i].src, m[i].dst, m[i].type, m[i].flags, m[i].data) != 0) {
            return request_failed(why, VX_E_MOUNT, errno, "mount %s on %s: %s", m[i].src, m[i].dst, strerror(errno));
        }
    }
    char what[256];
    if (userland_setup_root(what, sizeof what) != 0)
        return request_failed(why, VX_E_MOUNT, errno, "%s", what);
    for (int i = 0; i < MAX_DRIVES; i++) {
        int rc = drives[i].use == AT_TARGET ? mount_at_target(&drives[i], why) : 0;
        if (rc)
            return rc;
    }
    if (folders_bind_all(why))
        return -1;
    /*
     * Shared, so that a command with a mount namespace of its own (a private
     * /tmp) holds slave copies: a shard unmounted here is unmounted there too
     * (and found busy only if that command uses it), and one mounted here
     * appears there. Mounts made later under the root are shared as well.
     */
    if (mount(NULL, VX_NEWROOT, NULL, MS_REC | MS_SHARED, NULL) != 0) {
        return request_failed(why, VX_E_MOUNT, errno, "make the root's mounts shared: %s", strerror(errno));
    }
    return 0;
}

int drives_setup_root(char *err, size_t n)
{
    char dev[64];
    if (drives_find(VX_ROOT_SERIAL, dev, sizeof dev, 5000)) {
        snprintf(err, n, "no disk with serial %s: attach the base root file system with "
                 "-device virtio-blk-...,serial=%s", VX_ROOT_SERIAL, VX_ROOT_SERIAL);
        return -1;
    }
    mkdir("/mnt/lower", 0755);
    mkdir("/mnt/rw", 0755);
    if (mount(dev, "/mnt/lower", "squashfs", MS_RDONLY | MS_NODEV, NULL) != 0 ||
        mount("tmpfs", "/mnt/rw", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") != 0) {
        snprintf(err, n, "mount the base root file system (%s): %s", dev, strerror(errno));
        return -1;
    }
    mkdir("/mnt/rw/upper", 0755);
    mkdir("/mnt/rw/work", 0755);
    struct request_fail why;
    if (build_root(&why) == 0)
        return 0;
    snprintf(err, n, "%s", why.msg);
    return -1;
}

/* Names a process that keeps `target` busy (its cwd, executable, a file or a mapping under it). */
static void find_user(const char *target_in_root, char *out, size_t n)
{
    /* The init sees the paths of chrooted commands with the root's own path in front. */
    char target[sizeof VX_NEWROOT + 256];
    snprintf(target, sizeof target, "%s%s", VX_NEWROOT, target_in_root);
    size_t tl = strlen(target);
    snprintf(out, n, "a process");
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || strcmp(e->d_name, "1") == 0)
            continue;
        char path[300], link[512], comm[64] = "?";
        int hit = 0;
        static const char *const links[] = {"cwd", "exe"};
        for (size_t i = 0; i < 2 && !hit; i++) {
            snprintf(path, sizeof path, "/proc/%s/%s", e->d_name, links[i]);
            ssize_t l = readlink(path, link, sizeof link - 1);
            if (l > 0)
                link[l] = 0;
            hit = l >= (ssize_t)tl && strncmp(link, target, tl) == 0 && (link[tl] == 0 || link[tl] == '/');
        }
        snprintf(path, sizeof path, "/proc/%s/maps", e->d_name);
        FILE *f = hit ? NULL : fopen(path, "re");
        char line[600];
        while (f && !hit && fgets(line, sizeof line, f)) {
            char *p = strchr(line, '/');
            hit = p && strncmp(p, target, tl) == 0 && p[tl] == '/';
        }
        if (f)
            fclose(f);
        snprintf(path, sizeof path, "/proc/%s/fd", e->d_name);
        DIR *fds = hit ? NULL : opendir(path);
        struct dirent *fe;
        while (fds && !hit && (fe = readdir(fds))) {
            char fdp[600];
            snprintf(fdp, sizeof fdp, "/proc/%s/fd/%s", e->d_name, fe->d_name);
            ssize_t l = readlink(fdp, link, sizeof link - 1);
            if (l > 0) {
                link[l] = 0;
                hit = strncmp(link, target, tl) == 0 && (link[tl] == 0 || link[tl] == '/');
            }
        }
        if (fds)
            closedir(fds);
        if (hit) {
            snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
            long l = vx_read_small(path, comm, sizeof comm);
            if (l > 0 && comm[l - 1] == '\n')
                comm[l - 1] = 0;
            snprintf(out, n, "pid %.12s (%.20s)", e->d_name, comm);
            break;
        }
    }
    if (d)
        closedir(d);
}

int drives_at(const char *target)
{
    for (int i = 0; i < MAX_DRIVES; i++)
        if (drives[i].use == AT_TARGET && strcmp(drives[i].target, target) == 0)
            return 1;
    return 0;
}

int drives_mount(const char *serial, const char *target, struct request_fail *why)
{
    if (!drives_target_ok(target)) {
        return request_failed(why, VX_E_MOUNT, 0, "cannot mount at %s: give an absolute path without '.' or '..' parts, "
                 "outside /proc, /sys, /dev, /tmp and /run", target);
    }
    if (find_drive(serial)) {
        return request_failed(why, VX_E_BUSY, 0, "drive %s is already in use", serial);
    }
    if (folders_at(target)) {
        return request_failed(why, VX_E_BUSY, 0, "%s is already the mount point of a host folder", target);
    }
    for (int i = 0; i < MAX_DRIVES; i++) {
        if (drives[i].use == AT_TARGET && strcmp(drives[i].target, target) == 0) {
            return request_failed(why, VX_E_BUSY, 0, "%s is already the mount point of drive %s", target, drives[i].serial);
        }
    }
    struct drive *d = NULL;
    for (int i = 0; !d && i < MAX_DRIVES; i++)
        if (drives[i].use == UNUSED)
            d = &drives[i];
    if (!d) {
        return request_failed(why, VX_E_MOUNT, 0, "at most %d drives at once", MAX_DRIVES);
    }
    struct drive candidate = {AT_TARGET, {0}, {0}, {0}};
    snprintf(candidate.serial, sizeof candidate.serial, "%s", serial);
    snprintf(candidate.target, sizeof candidate.target, "%s", target);
    if (drives_find(serial, candidate.dev, sizeof candidate.dev, 0)) {
        return request_failed(why, VX_E_MOUNT, 0, "no drive with serial %s appeared within 10 s", serial);
    }
    int rc = mount_at_target(&candidate, why);
    if (rc == 0)
        *d = candidate;
    return rc;
}

int drives_unmount(const char *serial, struct request_fail *why)
{
    struct drive *d = find_drive(serial);
    if (!d) {
        return request_failed(why, VX_E_MOUNT, 0, "no drive %s is mounted", serial);
    }
    if (d->use == AS_LAYER) {
        return request_failed(why, VX_E_BUSY, 0, "drive %s is a layer of the root; send LAYERS without it instead",
                              serial);
    }
    char path[sizeof VX_NEWROOT + 256];
    snprintf(path, sizeof path, "%s%s", VX_NEWROOT, d->target);
    if (umount2(path, UMOUNT_NOFOLLOW) != 0) {
        if (errno == EBUSY) {
            char who[128];
            find_user(d->target, who, sizeof who);
            return request_failed(why, VX_E_BUSY, EBUSY, "%s is in use by %s; end it first", d->target, who);
        }
        if (errno != EINVAL) { /* EINVAL: not mounted (any more) */
            return request_failed(why, VX_E_MOUNT, errno, "unmount %s: %s", d->target, strerror(errno));
        }
    }
    memset(d, 0, sizeof *d);
    return 0;
}

/* Finds or stages the drive for layer i of a LAYERS request; its index goes to *slot. */
static int want_layer(const char *const *serials, unsigned i, int *slot, struct request_fail *why)
{
    struct drive *d = find_drive(serials[i]);
    if (d && d->use != AS_LAYER) {
        return request_failed(why, VX_E_BUSY, 0, "drive %s is mounted at %s, not a layer", serials[i], d->target);
    }
    for (unsigned j = 0; j < i; j++) {
        if (strcmp(serials[i], serials[j]) == 0) {
            return request_failed(why, VX_E_MOUNT, 0, "drive %s is named twice", serials[i]);
        }
    }
    for (int k = 0; !d && k < MAX_DRIVES; k++) {
        if (drives[k].use != UNUSED)
            continue;
        struct drive fresh = {AS_LAYER, {0}, {0}, {0}};
        snprintf(fresh.serial, sizeof fresh.serial, "%s", serials[i]);
        if (drives_find(serials[i], fresh.dev, sizeof fresh.dev, 0)) {
            return request_failed(why, VX_E_MOUNT, 0, "no drive with serial %s appeared within 10 s", serials[i]);
        }
        int rc = stage(&fresh, why);
        if (rc)
            return rc;
        drives[k] = fresh;
        d = &drives[k];
    }
    if (!d) {
        return request_failed(why, VX_E_MOUNT, 0, "at most %d drives at once", MAX_DRIVES);
    }
    *slot = (int)(d - drives);
    return 0;
}

int drives_set_layers(const char *const *serials, unsigned count, unsigned running, struct request_fail *why)
{
    if (running) {
        return request_failed(why, VX_E_BUSY, 0,
                              "%u command%s still run%s in the current root; the layers change only when none does",
                              running, running == 1 ? "" : "s", running == 1 ? "s" : "");
    }
    int next[VX_MAX_LAYERS];
    int rc = 0;
    unsigned i;
    for (i = 0; i < count && rc == 0; i++)
        rc = want_layer(serials, i, &next[i], why);
    if (rc) { /* drop what this request staged */
        for (unsigned j = 0; j + 1 < i; j++) {
            int current = 0;
            for (unsigned k = 0; k < layer_count; k++)
                current |= layers[k] == next[j];
            if (!current) {
                unstage(&drives[next[j]]);
                memset(&drives[next[j]], 0, sizeof drives[next[j]]);
            }
        }
        return rc;
    }
    /* Take the old root down whole (overlay and everything mounted inside it). */
    if (umount2(VX_NEWROOT, MNT_DETACH) != 0) {
        return request_failed(why, VX_E_MOUNT, errno, "unmount the old root: %s", strerror(errno));
    }
    /* Drop the layers that are no longer wanted. */
    for (unsigned i = 0; i < layer_count; i++) {
        int kept = 0;
        for (unsigned j = 0; j < count; j++)
            kept |= next[j] == layers[i];
        if (!kept) {
            unstage(&drives[layers[i]]);
            memset(&drives[layers[i]], 0, sizeof drives[layers[i]]);
        }
    }
    memcpy(layers, next, sizeof next[0] * count);
    layer_count = count;
    rc = build_root(why);
    if (rc)
        vx_log("rebuilding the root failed: %s", why->msg);
    return rc;
}

int drives_use_store(const char *serial, unsigned running, struct request_fail *why)
{
    if (have_store) {
        return request_failed(why, VX_E_BUSY, 0, "the guest already has its store");
    }
    if (running) {
        return request_failed(why, VX_E_BUSY, 0, "%u command%s still run%s; the store is taken on only when none does",
                              running, running == 1 ? "" : "s", running == 1 ? "s" : "");
    }
    char dev[32];
    if (drives_find(serial, dev, sizeof dev, 0)) {
        return request_failed(why, VX_E_MOUNT, 0, "no drive with serial %s appeared within 10 s", serial);
    }
    mkdir(STORE_DIR, 0755);
    /* The journal is replayed here after a crash of the host or the guest. */
    int rc = -1;
    for (int waited = 0; rc != 0; waited += 20) {
        rc = mount(dev, STORE_DIR, "ext4", MS_NODEV | MS_NOSUID, NULL);
        if (rc != 0 && ((errno != ENXIO && errno != ENODEV) || waited >= 2000)) {
            return request_failed(why, VX_E_MOUNT, errno, "mount the store %s (drive %s) as ext4: %s", dev, serial, strerror(errno));
        }
        if (rc != 0)
            vx_sleep_ms(20);
    }
    mkdir(STORE_DIR "/upper", 0755);
    mkdir(STORE_DIR "/work", 0755);
    if (umount2(VX_NEWROOT, MNT_DETACH) != 0) {
        request_failed(why, VX_E_MOUNT, errno, "unmount the old root: %s", strerror(errno));
        umount2(STORE_DIR, 0);
        return -1;
    }
    upper_dir = STORE_DIR "/upper";
    work_dir = STORE_DIR "/work";
    have_store = 1;
    rc = build_root(why);
    if (rc)
        vx_log("rebuilding the root over the store failed: %s", why->msg);
    return rc;
}

/* FIFREEZE and FITHAW, _IOWR('X', 119/120, int) (musl ships no kernel headers). */
#define VX_FIFREEZE 0xC0045877u
#define VX_FITHAW 0xC0045878u
static int frozen;

int drives_freeze(int freeze, struct request_fail *why)
{
    if (!have_store) {
        return request_failed(why, VX_E_STATE, 0, "the guest has no store to %s", freeze ? "freeze" : "thaw");
    }
    if (freeze == frozen)
        return 0;
    int fd = open(STORE_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, freeze ? VX_FIFREEZE : VX_FITHAW, 0) != 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        return request_failed(why, VX_E_INTERNAL, saved, "%s the store: %s", freeze ? "freeze" : "thaw", strerror(saved));
    }
    close(fd);
    frozen = freeze;
    return 0;
}

void drives_thaw_if_frozen(void)
{
    struct request_fail why;
    if (frozen && drives_freeze(0, &why))
        vx_log("%s", why.msg);
}

int drives_sync(struct request_fail *why)
{
    const char *what = have_store ? STORE_DIR : "/";
    int fd = open(what, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || syncfs(fd) != 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        return request_failed(why, VX_E_INTERNAL, saved, "sync %s: %s", what, strerror(saved));
    }
    close(fd);
    return 0;
}
