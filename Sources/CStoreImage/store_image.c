/*
 * store_image.c - see store_image.h. Everything is read-only: the image is
 * opened without EXT2_FLAG_RW, so nothing here can change a store.
 */
#define _DEFAULT_SOURCE
#include "store_image.h"

#include <sys/types.h>

#include <ext2fs/ext2fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct vx_ext2 {
    ext2_filsys fs;
};

int vx_ext2_open(const char *path, struct vx_ext2 **out, char *err, size_t n)
{
    struct vx_ext2 *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    errcode_t rc = ext2fs_open(path, EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &v->fs);
    if (rc) {
        snprintf(err, n, "%s is not a readable ext4 image (libext2fs error %ld)", path, (long)rc);
        free(v);
        return -1;
    }
    *out = v;
    return 0;
}

void vx_ext2_close(struct vx_ext2 *v)
{
    if (!v)
        return;
    ext2fs_close_free(&v->fs);
    free(v);
}

int vx_ext2_needs_recovery(struct vx_ext2 *v)
{
    return ext2fs_has_feature_journal_needs_recovery(v->fs->super) ? 1 : 0;
}

int vx_ext2_lookup(struct vx_ext2 *v, const char *path, uint32_t *ino)
{
    ext2_ino_t found;
    if (strcmp(path, "/") == 0) {
        *ino = EXT2_ROOT_INO;
        return 0;
    }
    if (ext2fs_namei(v->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path[0] == '/' ? path + 1 : path, &found))
        return -1;
    *ino = found;
    return 0;
}

struct listing {
    struct vx_ext2_entry *entries;
    size_t count, cap;
    int failed;
};

static int collect(struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv)
{
    (void)offset;
    (void)blocksize;
    (void)buf;
    struct listing *l = priv;
    int len = ext2fs_dirent_name_len(dirent);
    if ((len == 1 && dirent->name[0] == '.') || (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
        return 0;
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        struct vx_ext2_entry *grown = realloc(l->entries, cap * sizeof *grown);
        if (!grown) {
            l->failed = 1;
            return DIRENT_ABORT;
        }
        l->entries = grown;
        l->cap = cap;
    }
    struct vx_ext2_entry *e = &l->entries[l->count++];
    e->ino = dirent->inode;
    memcpy(e->name, dirent->name, (size_t)len);
    e->name[len] = 0;
    return 0;
}

int vx_ext2_list(struct vx_ext2 *v, uint32_t dir, struct vx_ext2_entry **entries, size_t *count)
{
    struct listing l = {NULL, 0, 0, 0};
    if (ext2fs_dir_iterate(v->fs, dir, 0, NULL, collect, &l) || l.failed) {
        free(l.entries);
        return -1;
    }
    *entries = l.entries;
    *count = l.count;
    return 0;
}

int vx_ext2_stat(struct vx_ext2 *v, uint32_t ino, struct vx_ext2_stat *st)
{
    struct ext2_inode inode;
    if (ext2fs_read_inode(v->fs, ino, &inode))
        return -1;
    memset(st, 0, sizeof *st);
    st->mode = inode.i_mode;
    st->uid = inode_uid(inode);
    st->gid = inode_gid(inode);
    st->size = EXT2_I_SIZE(&inode);
    st->mtime = (int64_t)(int32_t)inode.i_mtime;
    if (LINUX_S_ISCHR(inode.i_mode) || LINUX_S_ISBLK(inode.i_mode)) {
        /* Old encoding in i_block[0], new (large numbers) in i_block[1]. */
        uint32_t old = inode.i_block[0], new = inode.i_block[1];
        if (old) {
            st->rdev_major = (old >> 8) & 0xff;
            st->rdev_minor = old & 0xff;
        } else {
            st->rdev_major = (new & 0xfff00) >> 8;
            st->rdev_minor = (new & 0xff) | ((new >> 12) & 0xfff00);
        }
    }
    if (LINUX_S_ISDIR(inode.i_mode)) {
        struct ext2_xattr_handle *h;
        if (ext2fs_xattrs_open(v->fs, ino, &h) == 0) {
            void *value = NULL;
            size_t len = 0;
            if (ext2fs_xattrs_read(h) == 0 && ext2fs_xattr_get(h, "trusted.overlay.opaque", &value, &len) == 0) {
                st->opaque = len == 1 && ((char *)value)[0] == 'y';
                ext2fs_free_mem(&value);
            }
            ext2fs_xattrs_close(&h);
        }
    }
    return 0;
}

long vx_ext2_readlink(struct vx_ext2 *v, uint32_t ino, char *buf, size_t n)
{
    struct ext2_inode inode;
    if (ext2fs_read_inode(v->fs, ino, &inode) || !LINUX_S_ISLNK(inode.i_mode))
        return -1;
    size_t size = EXT2_I_SIZE(&inode);
    if (size >= n)
        return -1;
    if (ext2fs_is_fast_symlink(&inode)) {
        memcpy(buf, (char *)inode.i_block, size);
    } else if (inode.i_flags & EXT4_INLINE_DATA_FL) {
        size_t got = size;
        if (ext2fs_inline_data_get(v->fs, ino, &inode, buf, &got))
            return -1;
    } else {
        long got = vx_ext2_read(v, ino, 0, buf, size);
        if (got != (long)size)
            return -1;
    }
    buf[size] = 0;
    return (long)size;
}

long vx_ext2_read(struct vx_ext2 *v, uint32_t ino, uint64_t offset, void *buf, size_t n)
{
    ext2_file_t file;
    if (ext2fs_file_open(v->fs, ino, 0, &file))
        return -1;
    unsigned int got = 0;
    errcode_t rc = ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, NULL);
    if (!rc)
        rc = ext2fs_file_read(file, buf, (unsigned int)(n > 1u << 30 ? 1u << 30 : n), &got);
    ext2fs_file_close(file);
    return rc ? -1 : (long)got;
}
