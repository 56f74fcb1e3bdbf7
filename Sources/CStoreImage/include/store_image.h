/*
 * store_image.h - read-only access to a store's ext4 image through
 * libext2fs (e2fsprogs), for diff and export without a guest and without
 * mounting anything on the host.
 */
#ifndef VMEXEC_STORE_IMAGE_H
#define VMEXEC_STORE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

struct vx_ext2;

struct vx_ext2_entry {
    uint32_t ino;
    char name[256];
};

struct vx_ext2_stat {
    uint16_t mode; /* type and permission bits */
    uint32_t uid, gid;
    uint64_t size;
    int64_t mtime;
    uint32_t rdev_major, rdev_minor;
    int opaque; /* a directory marked trusted.overlay.opaque=y */
};

/* Opens an image read-only; 0, or -1 with a sentence in err. */
int vx_ext2_open(const char *path, struct vx_ext2 **out, char *err, size_t n);
void vx_ext2_close(struct vx_ext2 *fs);

/* Whether the image's journal holds changes not yet written to their place. */
int vx_ext2_needs_recovery(struct vx_ext2 *fs);

/* The inode at an absolute path (no symlinks followed); 0 or -1. */
int vx_ext2_lookup(struct vx_ext2 *fs, const char *path, uint32_t *ino);

/* A directory's entries without "." and ".." (malloc'd; free() them); 0 or -1. */
int vx_ext2_list(struct vx_ext2 *fs, uint32_t dir, struct vx_ext2_entry **entries, size_t *count);

int vx_ext2_stat(struct vx_ext2 *fs, uint32_t ino, struct vx_ext2_stat *st);

/* A symlink's target, NUL-terminated; its length or -1. */
long vx_ext2_readlink(struct vx_ext2 *fs, uint32_t ino, char *buf, size_t n);

/* Reads up to n bytes of a regular file at offset; the count (0 at the end) or -1. */
long vx_ext2_read(struct vx_ext2 *fs, uint32_t ino, uint64_t offset, void *buf, size_t n);

#endif
