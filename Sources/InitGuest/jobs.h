/*
 * jobs.h - a cgroup per command: limits, accounting, killing it whole.
 */
#ifndef VX_JOBS_H
#define VX_JOBS_H

#include <stddef.h>
#include <stdint.h>

struct vx_policy;

struct job {
    char path[64]; /* its cgroup, or "" without one */
    int procs_fd;  /* its cgroup.procs, open until the child has joined */
};

/* Mounts cgroup2, moves the init into its own group with a memory reserve. */
int jobs_setup(char *err, size_t n);

/* Makes the command's cgroup with the policy's limits; 0, or -1 with a sentence. */
int jobs_create(struct job *job, uint32_t stream, const struct vx_policy *policy, char *err, size_t n);

/* The child has joined (or failed): the parent lets go of cgroup.procs. */
void jobs_spawned(struct job *job);

/* Kills every process of the command (cgroup.kill). */
void jobs_kill(struct job *job);

/* Whether the OOM killer struck inside the command's limit, and its peak memory in KiB. */
void jobs_account(const struct job *job, int *oom_killed, uint64_t *peak_kb);

/* Whether the command is stuck at its memory limit (PSI: its tasks stall on memory). */
int jobs_memory_stalled(const struct job *job);

/* Kills what is left and removes the cgroup (later, once its processes are reaped). */
void jobs_end(struct job *job);

/* Removes emptied cgroups of ended commands. */
void jobs_tick(void);

#endif
