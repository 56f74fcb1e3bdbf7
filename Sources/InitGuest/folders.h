/*
 * folders.h - host folders in the root: FOLDER requests (virtiofs).
 * Each request returns 0, or -1 with why it failed (code, errno, sentence).
 */
#ifndef VX_FOLDERS_H
#define VX_FOLDERS_H

#include "request.h"

#include <stdint.h>

/* FOLDER: the folder shared under virtiofs `tag`, at `target` in the root, in `mode` (enum vx_folder_mode). */
int folders_mount(const char *tag, const char *target, uint8_t mode, struct request_fail *why);

/* Binds every mounted folder into a freshly built root again (drives.c's build_root). */
int folders_bind_all(struct request_fail *why);

/* Whether a folder is mounted at `target`. */
int folders_at(const char *target);

#endif
