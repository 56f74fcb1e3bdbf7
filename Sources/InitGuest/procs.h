/*
 * procs.h - the host's process requests: PS lists the guest's processes
 * from /proc, KILL signals one of them or its process group.
 */
#ifndef VX_PROCS_H
#define VX_PROCS_H

#include "files.h"
#include "vx_proto.h"

#include <dirent.h>
#include <stdint.h>

/* Largest PROCESS payload: fixed fields, the argument count and the arguments. */
#define PROCS_ENTRY_MAX (VX_PROCESS_FIXED + 2u + VX_MAX_ARGV + 2u * (VX_MAX_ARGV / 2u + 1u))

/* Opens /proc for procs_next(). */
DIR *procs_open(struct file_fail *f);

/*
 * The next process (not PID 1, not a kernel thread) as a PROCESS payload
 * with stream 0, and its process group: 1; 0 at the end.
 */
int procs_next(DIR *proc, uint8_t *out, uint32_t *len, uint32_t *pgid);

/* KILL: 0, or -1 with the reason (no such process, or its group is the init's). */
int procs_kill(const struct vx_kill *k, struct file_fail *f);

#endif
