/*
 * files.h - the host's file requests (PUT, GET, STAT, LIST, MKDIR, DELETE,
 * MOVE), carried out inside the root that commands run in.
 */
#ifndef VX_FILES_H
#define VX_FILES_H

#include "request.h"
#include "vx_proto.h"

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>

/* Largest ENTRY payload: fixed fields, a name and a symlink target. */
#define FILES_ENTRY_MAX (VX_ENTRY_FIXED + 2u + 255u + 2u + VX_MAX_PATH)

/* A PUT in progress: a temporary file beside its destination. */
struct put_target {
    int dirfd, fd;
    char name[256], tmp[64];
    uint32_t mode, uid, gid, flags;
};

/* Copies a request's path out as a C string; the decoder bounded it. */
void files_path(struct vx_str s, char out[VX_MAX_PATH + 1]);

/* STAT: the ENTRY payload for `path` (its final symlink itself with nofollow). */
int files_stat(const char *path, int nofollow, uint8_t *entry, uint32_t *len, struct request_fail *f);

/* GET: opens a regular file of at most `max` bytes (0: any) and encodes its ENTRY; returns the fd. */
int files_open_get(const char *path, uint64_t max, uint8_t *entry, uint32_t *len, struct request_fail *f);

/* LIST: opens a directory; files_next_entry() then yields its entries (1), the end (0) or a failure (-1). */
DIR *files_open_dir(const char *path, struct request_fail *f);
int files_next_entry(DIR *dir, uint8_t *entry, uint32_t *len, struct request_fail *f);

/* PUT: creates the temporary file, checks there is room for `size` bytes. */
int files_put_begin(const struct vx_file_req *r, const char *path, struct put_target *t, struct request_fail *f);
/* Sets mode and owner and moves the file into place. */
int files_put_commit(struct put_target *t, struct request_fail *f);
/* Removes the temporary file. */
void files_put_abort(struct put_target *t);

int files_mkdir(const struct vx_file_req *r, const char *path, struct request_fail *f);
int files_delete(const struct vx_file_req *r, const char *path, struct request_fail *f);
int files_move(const struct vx_file_req *r, const char *from, const char *to, struct request_fail *f);

#endif
