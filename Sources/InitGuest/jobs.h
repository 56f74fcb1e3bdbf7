/*
 * jobs.h - a cgroup per command: limits, accounting, killing it whole.
 */
#ifndef VX_JOBS_H
#define VX_JOBS_H

#include <stddef.h>
#include <stdint.h>

struct vx_policy;

struct job {
    char path[64];  /* its cgroup, or "" without one */
    int dir_fd;     /* its directory, open until the command's process is made in it */
    int kill_fd;    /* its cgroup.kill */
    int events_fd;  /* its memory.events */
    int peak_fd;    /* its memory.peak */
    int killed;     /* cgroup.kill was written since the main process ended */
};

/* Mounts cgroup2, moves the init into its own group with a memory reserve. */
int jobs_setup(char *err, size_t n);

/* A job without a cgroup (every descriptor closed). */
void jobs_clear(struct job *job);

/* The command's cgroup with the policy's limits (a prepared one when there
 * is one); 0, or -1 with a sentence. */
int jobs_create(struct job *job, const struct vx_policy *policy, char *err, size_t n);

/* The command's process is made (or failed): the init lets go of the directory. */
void jobs_spawned(struct job *job);

/* Kills every process of the command (cgroup.kill). */
void jobs_kill(struct job *job);

/* Whether the OOM killer struck inside the command's limit, and its peak memory in KiB. */
void jobs_account(const struct job *job, int *oom_killed, uint64_t *peak_kb);

/* Whether the command is stuck at its memory limit (PSI: its tasks stall on memory). */
int jobs_memory_stalled(const struct job *job);

/* Kills what is left; the cgroup is removed later, by jobs_idle. */
void jobs_end(struct job *job);

/* Processes were reaped: ended commands' cgroups may be empty now. */
void jobs_reaped(void);

/* One piece of work that can wait for an idle moment: removing an ended
 * command's cgroup, or preparing one for the next command. Returns 0 when
 * there was none. */
int jobs_idle(void);

#endif
