/*
 * files.c - the host's file requests, carried out inside the root that
 * commands run in (VX_NEWROOT).
 *
 * That root is written by untrusted commands, so no path is ever walked
 * by hand: the kernel resolves each one with openat2(RESOLVE_IN_ROOT)
 * against the root, where ".." stops at the root and a planted symlink,
 * absolute or relative, resolves inside it as it would for a command.
 * The last component of a path that is created, removed or renamed is
 * never followed (the *at calls act on the name itself), and a directory
 * or file that is created gets its owner and mode through a descriptor
 * opened without following, so a swapped-in symlink cannot redirect them.
 */
#define _GNU_SOURCE
#include "files.h"

#include "boot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437 /* the same number on every architecture */
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1
#endif

/* struct open_how and the RESOLVE_ flags of linux/openat2.h (musl ships no kernel headers). */
struct open_how_v0 {
    uint64_t flags, mode, resolve;
};
#define VX_RESOLVE_NO_MAGICLINKS 0x02u
#define VX_RESOLVE_IN_ROOT 0x10u

/* renameat2(2), which musl does not wrap. */
static int rename_at(int olddir, const char *oldname, int newdir, const char *newname, unsigned flags)
{
    return (int)syscall(SYS_renameat2, olddir, oldname, newdir, newname, flags);
}

/* How deep DELETE descends; deeper trees are refused rather than exhaust descriptors. */
#define MAX_DEPTH 256

void files_path(struct vx_str s, char out[VX_MAX_PATH + 1])
{
    memcpy(out, s.p, s.len);
    out[s.len] = 0;
}

/* Opens `path` as a command would see it: resolved by the kernel inside the
 * root, symlinks followed but never out of it (drives.c's open_mount_point
 * follows none). */
static int open_resolved_in_root(const char *path, int flags)
{
    int root = open(VX_NEWROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return -1;
    struct open_how_v0 how = {(uint64_t)(flags | O_CLOEXEC), 0, VX_RESOLVE_IN_ROOT | VX_RESOLVE_NO_MAGICLINKS};
    long fd;
    int tries = 0;
    do /* EAGAIN: a rename raced with the resolution of ".."; the kernel asks to retry */
        fd = syscall(SYS_openat2, root, path, &how, sizeof how);
    while (fd < 0 && errno == EAGAIN && ++tries < 8);
    int saved = errno;
    close(root);
    errno = saved;
    return (int)fd;
}

/*
 * Opens the directory that holds the last component of `path` and copies
 * that component to `name`. A path must end in a name: the root, "." and
 * ".." cannot be created, removed or renamed.
 */
static int open_parent(const char *path, char name[256], const char *verb, struct request_fail *f)
{
    char buf[VX_MAX_PATH + 1];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = 0;
    char *slash = strrchr(buf, '/');
    const char *last = slash ? slash + 1 : buf;
    if (!*last || strcmp(last, ".") == 0 || strcmp(last, "..") == 0)
        return request_failed(f, VX_E_FILE, EINVAL, "cannot %s %s: the path must end in a name (not /, . or ..)", verb, path);
    if (strlen(last) > 255)
        return request_failed(f, VX_E_FILE, ENAMETOOLONG, "cannot %s %s: %s", verb, path, strerror(ENAMETOOLONG));
    memcpy(name, last, strlen(last) + 1);
    const char *parent = "/";
    if (slash && slash != buf) {
        *slash = 0;
        parent = buf;
    }
    int fd = open_resolved_in_root(parent, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return request_failed(f, VX_E_FILE, errno, "cannot %s %s: %s", verb, path, strerror(errno));
    return fd;
}

static void put_str(uint8_t *e, uint32_t *len, const char *s, size_t n)
{
    vx_put_u16(e + *len, (uint16_t)n);
    memcpy(e + *len + 2, s, n);
    *len += 2u + (uint32_t)n;
}

static void encode_entry(const struct stat *st, const char *name, const char *link, uint8_t *e, uint32_t *len)
{
    vx_put_u32(e, st->st_mode);
    vx_put_u32(e + 4, st->st_uid);
    vx_put_u32(e + 8, st->st_gid);
    vx_put_u32(e + 12, (uint32_t)st->st_nlink);
    vx_put_u64(e + 16, (uint64_t)st->st_size);
    vx_put_u64(e + 24, (uint64_t)((int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec));
    *len = VX_ENTRY_FIXED;
    size_t n = strlen(name);
    put_str(e, len, name, n > 255 ? 255 : n);
    put_str(e, len, link, strlen(link));
}

/* The ENTRY of `name` in `dirfd`, not following it; a symlink carries its target. */
static int entry_at(int dirfd, const char *name, uint8_t *e, uint32_t *len)
{
    struct stat st;
    char link[VX_MAX_PATH + 1] = "";
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return -1;
    if (S_ISLNK(st.st_mode)) {
        ssize_t r = readlinkat(dirfd, name, link, VX_MAX_PATH);
        link[r > 0 ? r : 0] = 0;
    }
    encode_entry(&st, name, link, e, len);
    return 0;
}

/* The last name of a path, for an ENTRY ("/" for the root). */
static const char *base_name(const char *path, char out[256])
{
    char buf[VX_MAX_PATH + 1];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = 0;
    const char *slash = strrchr(buf, '/');
    const char *name = slash && slash[1] ? slash + 1 : slash ? "/" : buf;
    size_t len = strnlen(name, 255);
    memcpy(out, name, len);
    out[len] = 0;
    return out;
}

int files_stat(const char *path, int nofollow, uint8_t *entry, uint32_t *len, struct request_fail *f)
{
    char name[256];
    if (nofollow) {
        struct request_fail ignored;
        int dirfd = open_parent(path, name, "stat", &ignored);
        if (dirfd >= 0) {
            int rc = entry_at(dirfd, name, entry, len);
            int saved = errno;
            close(dirfd);
            return rc == 0 ? 0 : request_failed(f, VX_E_FILE, saved, "cannot stat %s: %s", path, strerror(saved));
        }
        /* "/", "." or "..": nothing to not follow; describe the directory itself. */
    }
    int fd = open_resolved_in_root(path, O_PATH);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        return request_failed(f, VX_E_FILE, saved, "cannot stat %s: %s", path, strerror(saved));
    }
    close(fd);
    encode_entry(&st, base_name(path, name), "", entry, len);
    return 0;
}

int files_open_get(const char *path, uint64_t max, uint8_t *entry, uint32_t *len, struct request_fail *f)
{
    /* O_NONBLOCK: opening a FIFO planted under the name must not hang the init. */
    int fd = open_resolved_in_root(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        return request_failed(f, VX_E_FILE, saved, "cannot read %s: %s", path, strerror(saved));
    }
    char name[256];
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return request_failed(f, VX_E_FILE, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, "cannot read %s: not a regular file", path);
    }
    if (max && (uint64_t)st.st_size > max) {
        close(fd);
        return request_failed(f, VX_E_LIMIT, EFBIG, "cannot read %s: %llu bytes, more than the %llu accepted", path,
                    (unsigned long long)st.st_size, (unsigned long long)max);
    }
    encode_entry(&st, base_name(path, name), "", entry, len);
    return fd;
}

DIR *files_open_dir(const char *path, struct request_fail *f)
{
    int fd = open_resolved_in_root(path, O_RDONLY | O_DIRECTORY);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        request_failed(f, VX_E_FILE, errno, "cannot list %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    return d;
}

int files_next_entry(DIR *dir, uint8_t *entry, uint32_t *len, struct request_fail *f)
{
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (!de)
            return errno ? request_failed(f, VX_E_FILE, errno, "cannot list the directory: %s", strerror(errno)) : 0;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (entry_at(dirfd(dir), de->d_name, entry, len) == 0)
            return 1;
        /* removed since readdir saw it: skip */
    }
}

/* Gives a file or directory just made its owner and exact mode, through a descriptor. */
static int set_owner(int fd, uint32_t uid, uint32_t gid, uint32_t mode)
{
    /* chown first: it clears setuid and setgid bits that fchmod then sets. */
    return fchown(fd, uid, gid) == 0 && fchmod(fd, mode) == 0 ? 0 : -1;
}

/* Whether `path` is a directory, following symlinks inside the root (merged /usr has /bin -> usr/bin). */
static int is_dir_in_root(const char *path)
{
    int fd = open_resolved_in_root(path, O_PATH | O_DIRECTORY);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* mkdir of `name` in `dirfd` (the parent of `path`) with owner and mode; 0 if made, 1 if a directory was there. */
static int make_dir(int dirfd, const char *name, const char *path, uint32_t uid, uint32_t gid, uint32_t mode)
{
    if (mkdirat(dirfd, name, 0700) != 0) {
        if (errno != EEXIST)
            return -1;
        if (is_dir_in_root(path))
            return 1;
        errno = EEXIST;
        return -1;
    }
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int rc = fd >= 0 ? set_owner(fd, uid, gid, mode) : -1;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    errno = saved;
    return rc;
}

/* Creates the missing directories above the last component of `path` (owner uid:gid, mode 0755). */
static int make_parents(const char *path, uint32_t uid, uint32_t gid, struct request_fail *f)
{
    char prefix[VX_MAX_PATH + 1], name[256];
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    for (size_t i = 1; i < n; i++) {
        if (path[i] != '/' || path[i - 1] == '/')
            continue;
        memcpy(prefix, path, i);
        prefix[i] = 0;
        int dirfd = open_parent(prefix, name, "create", f);
        if (dirfd < 0)
            return -1;
        int rc = make_dir(dirfd, name, prefix, uid, gid, 0755);
        int saved = errno;
        close(dirfd);
        if (rc < 0)
            return request_failed(f, VX_E_FILE, saved, "cannot create %s: %s", prefix, strerror(saved));
    }
    return 0;
}

int files_put_begin(const struct vx_file_req *r, const char *path, struct put_target *t, struct request_fail *f)
{
    static unsigned long serial;
    memset(t, 0, sizeof *t);
    t->fd = t->dirfd = -1;
    if ((r->flags & VX_F_PARENTS) && make_parents(path, r->uid, r->gid, f) != 0)
        return -1;
    t->dirfd = open_parent(path, t->name, "write", f);
    if (t->dirfd < 0)
        return -1;
    struct stat st;
    if ((r->flags & VX_F_NO_REPLACE) && fstatat(t->dirfd, t->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        files_put_abort(t);
        return request_failed(f, VX_E_FILE, EEXIST, "cannot write %s: %s", path, strerror(EEXIST));
    }
    snprintf(t->tmp, sizeof t->tmp, ".vmexec-put-%lu-%d", ++serial, (int)getpid());
    /* O_EXCL with O_CREAT never follows a symlink, even one planted under this name. */
    t->fd = openat(t->dirfd, t->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (t->fd < 0) {
        int saved = errno;
        files_put_abort(t);
        return request_failed(f, VX_E_FILE, saved, "cannot write %s: %s", path, strerror(saved));
    }
    struct statvfs vfs;
    if (fstatvfs(t->fd, &vfs) == 0 && (unsigned long long)vfs.f_bavail * vfs.f_frsize < r->size) {
        unsigned long long room = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
        files_put_abort(t);
        return request_failed(f, VX_E_FILE, ENOSPC, "cannot write %s: %s (%llu bytes do not fit in the %llu bytes free)", path,
                    strerror(ENOSPC), (unsigned long long)r->size, room);
    }
    t->mode = r->mode;
    t->uid = r->uid;
    t->gid = r->gid;
    t->flags = r->flags;
    return 0;
}

int files_put_commit(struct put_target *t, struct request_fail *f)
{
    int rc = set_owner(t->fd, t->uid, t->gid, t->mode);
    if (rc == 0)
        rc = close(t->fd);
    t->fd = -1;
    if (rc == 0)
        rc = rename_at(t->dirfd, t->tmp, t->dirfd, t->name, (t->flags & VX_F_NO_REPLACE) ? RENAME_NOREPLACE : 0);
    if (rc != 0) {
        int saved = errno;
        files_put_abort(t);
        return request_failed(f, VX_E_FILE, saved, "cannot put %s in place: %s", t->name, strerror(saved));
    }
    close(t->dirfd);
    t->dirfd = -1;
    return 0;
}

void files_put_abort(struct put_target *t)
{
    if (t->fd >= 0)
        close(t->fd);
    if (t->dirfd >= 0 && t->tmp[0])
        unlinkat(t->dirfd, t->tmp, 0);
    if (t->dirfd >= 0)
        close(t->dirfd);
    t->fd = t->dirfd = -1;
    t->tmp[0] = 0;
}

int files_mkdir(const struct vx_file_req *r, const char *path, struct request_fail *f)
{
    char name[256];
    if ((r->flags & VX_F_PARENTS) && make_parents(path, r->uid, r->gid, f) != 0)
        return -1;
    int dirfd = open_parent(path, name, "create", f);
    if (dirfd < 0)
        return -1;
    int rc = make_dir(dirfd, name, path, r->uid, r->gid, r->mode);
    int saved = errno;
    close(dirfd);
    if (rc < 0)
        return request_failed(f, VX_E_FILE, saved, "cannot create %s: %s", path, strerror(saved));
    if (rc == 1 && !(r->flags & (VX_F_EXIST_OK | VX_F_PARENTS)))
        return request_failed(f, VX_E_FILE, EEXIST, "cannot create %s: %s", path, strerror(EEXIST));
    return 0;
}

/* Removes `name` in `dirfd` and, for a directory, everything in it, never following a symlink. */
static int remove_tree(int dirfd, const char *name, int depth, char *failed, size_t n)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        goto fail;
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dirfd, name, 0) != 0)
            goto fail;
        return 0;
    }
    if (depth >= MAX_DEPTH) {
        errno = ELOOP;
        goto fail;
    }
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        goto fail;
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            rc = remove_tree(fd, de->d_name, depth + 1, failed, n);
    closedir(d);
    if (rc != 0)
        return -1;
    if (unlinkat(dirfd, name, AT_REMOVEDIR) != 0)
        goto fail;
    return 0;
fail:
    snprintf(failed, n, "%s", name);
    return -1;
}

int files_delete(const struct vx_file_req *r, const char *path, struct request_fail *f)
{
    char name[256], failed[256] = "";
    int dirfd = open_parent(path, name, "delete", f);
    if (dirfd < 0)
        return -1;
    struct stat st;
    int rc = fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW);
    if (rc == 0 && S_ISDIR(st.st_mode))
        rc = (r->flags & VX_F_RECURSIVE) ? remove_tree(dirfd, name, 0, failed, sizeof failed)
                                         : unlinkat(dirfd, name, AT_REMOVEDIR);
    else if (rc == 0)
        rc = unlinkat(dirfd, name, 0);
    int saved = errno;
    close(dirfd);
    if (rc == 0)
        return 0;
    if (failed[0] && strcmp(failed, name) != 0)
        return request_failed(f, VX_E_FILE, saved, "cannot delete %s: %s (at %s inside it)", path, strerror(saved), failed);
    return request_failed(f, VX_E_FILE, saved, "cannot delete %s: %s", path, strerror(saved));
}

int files_move(const struct vx_file_req *r, const char *from, const char *to, struct request_fail *f)
{
    char name_from[256], name_to[256];
    int a = open_parent(from, name_from, "move", f);
    if (a < 0)
        return -1;
    int b = open_parent(to, name_to, "move to", f);
    if (b < 0) {
        close(a);
        return -1;
    }
    int rc = rename_at(a, name_from, b, name_to, (r->flags & VX_F_NO_REPLACE) ? RENAME_NOREPLACE : 0);
    int saved = errno;
    close(a);
    close(b);
    if (rc != 0)
        return request_failed(f, VX_E_FILE, saved, "cannot move %s to %s: %s", from, to, strerror(saved));
    return 0;
}
