/*
 * procs.h - the host's process requests: PS lists the guest's processes
 * from /proc, KILL signals one of them or its process group.
 */
#ifndef VX_PROCS_H
#define VX_PROCS_H

#include "request.h"
#include "vx_proto.h"

#include <dirent.h>
#include <stdint.h>

/* Largest PROCESS payload: fixed fields, the argument count and the arguments.
 * Each byte of /proc/PID/cmdline (at most VX_MAX_ARGV) becomes at most two
 * encoded bytes (an empty argument: its NUL becomes a 2-byte length). */
#define PROCS_ENTRY_MAX (VX_PROCESS_FIXED + 2u + 2u * VX_MAX_ARGV + 2u)

/* Opens /proc for procs_next(). */
DIR *procs_open(struct request_fail *f);

/*
 * The next process (not PID 1, not a kernel thread) as a PROCESS payload
 * with stream 0, and its process group: 1; 0 at the end.
 */
int procs_next(DIR *proc, uint8_t *out, uint32_t *len, uint32_t *pgid);

/* KILL: 0, or -1 with the reason (no such process, or its group is the init's). */
int procs_kill(const struct vx_kill *k, struct request_fail *f);

#endif
