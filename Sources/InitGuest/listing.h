/*
 * listing.h - LIST (a directory's entries) and PS (the guest's processes):
 * streams of ENTRY or PROCESS frames, produced only while the output has
 * room, so a listing of any length costs bounded memory.
 */
#ifndef VX_LISTING_H
#define VX_LISTING_H

#include "vx_proto.h"

#include <stdint.h>

/* LIST of `path` inside the command root; at most `max_entries` (0: no cap). */
void listing_start_dir(const struct vx_frame *f, uint64_t max_entries, const char *path);

/* PS. */
void listing_start_ps(const struct vx_frame *f);

/* Emits the next entries of every listing while the output has room; DONE at the end. */
void listing_pump(void);

#endif
