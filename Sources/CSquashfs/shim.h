/*
 * shim.h - libsquashfs (squashfs-tools-ng 1.2) for Swift.
 *
 * The helpers below reach what Swift cannot: the flexible array members at
 * the end of inodes and tree nodes, and the function pointers of libsquashfs
 * objects.
 */
#ifndef VMEXEC_CSQUASHFS_SHIM_H
#define VMEXEC_CSQUASHFS_SHIM_H

#include <sqfs/block_processor.h>
#include <sqfs/block_writer.h>
#include <sqfs/compressor.h>
#include <sqfs/data_reader.h>
#include <sqfs/dir_reader.h>
#include <sqfs/dir_writer.h>
#include <sqfs/error.h>
#include <sqfs/frag_table.h>
#include <sqfs/id_table.h>
#include <sqfs/inode.h>
#include <sqfs/io.h>
#include <sqfs/meta_writer.h>
#include <sqfs/super.h>
#include <sqfs/xattr_reader.h>
#include <sqfs/xattr_writer.h>

#include <stdlib.h>
#include <sys/xattr.h>
#include <string.h>

/* A symlink inode holding `target` (not NUL-terminated); free() it. */
static inline sqfs_inode_generic_t *vx_sqfs_symlink_inode(const char *target, size_t len)
{
    sqfs_inode_generic_t *inode = calloc(1, sizeof(*inode) + len);
    if (inode == NULL)
        return NULL;
    inode->base.type = SQFS_INODE_SLINK;
    inode->data.slink.target_size = (sqfs_u32)len;
    inode->payload_bytes_available = (sqfs_u32)len;
    inode->payload_bytes_used = (sqfs_u32)len;
    memcpy(inode->extra, target, len);
    return inode;
}

/* An inode without payload (directories come from the dir writer); free() it. */
static inline sqfs_inode_generic_t *vx_sqfs_plain_inode(SQFS_INODE_TYPE type)
{
    sqfs_inode_generic_t *inode = calloc(1, sizeof(*inode));
    if (inode != NULL)
        inode->base.type = (sqfs_u16)type;
    return inode;
}

/* A symlink inode's target bytes; its length is data.slink(_ext).target_size. */
static inline const char *vx_sqfs_symlink_target(const sqfs_inode_generic_t *inode)
{
    return (const char *)inode->extra;
}

static inline const char *vx_sqfs_tree_node_name(const sqfs_tree_node_t *node)
{
    return (const char *)node->name;
}

static inline sqfs_u64 vx_sqfs_file_size(sqfs_file_t *file)
{
    return file->get_size(file);
}

static inline int vx_sqfs_file_write_at(sqfs_file_t *file, sqfs_u64 offset, const void *data, size_t size)
{
    return file->write_at(file, offset, data, size);
}

static inline int vx_sqfs_compressor_write_options(sqfs_compressor_t *cmp, sqfs_file_t *file)
{
    return cmp->write_options(cmp, file);
}

static inline int vx_sqfs_compressor_read_options(sqfs_compressor_t *cmp, sqfs_file_t *file)
{
    return cmp->read_options(cmp, file);
}

#endif
