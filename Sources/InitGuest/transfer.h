/*
 * transfer.h - file requests: PUT and GET move a file on a stream of their
 * own (stdin or stdout with the file in place of the pipe); STAT, MKDIR,
 * DELETE and MOVE are answered at once; LIST goes to listing.c. Paths are
 * resolved inside the command root (files.c).
 */
#ifndef VX_TRANSFER_H
#define VX_TRANSFER_H

#include "stream.h"
#include "vx_proto.h"

/* PUT, GET, STAT, LIST, MKDIR, DELETE, MOVE. */
void transfer_request(const struct vx_frame *f);

/* The host's EOF of a PUT with every byte written: checks the count, puts
 * the file in place (DONE) or drops it (ERROR); frees the stream. */
void transfer_finish_put(struct stream *s);

#endif
