/*
 * jobs.c - a cgroup (v2) per command, so that its limits, its accounting and
 * its end cover every process it starts, however it forks or detaches.
 *
 *   /sys/fs/cgroup/init        PID 1, with a memory reserve (memory.min)
 *   /sys/fs/cgroup/jobs/<n>    one per command: memory.max, pids.max
 *
 * A command's cgroup is killed whole (cgroup.kill) on timeout and when its
 * main process ends. A command with neither a memory nor a process limit
 * gets none.
 *
 * Making, opening and removing a cgroup costs a millisecond or more under
 * TCG, more than the rest of an exec, so that work waits for idle moments
 * (jobs_idle): ended commands' cgroups are removed then, and a few cgroups
 * are prepared ahead with the limits the last command had. A cgroup is
 * never reused: a fresh one has no charges and a zero memory.peak.
 */
#define _GNU_SOURCE
#include "jobs.h"

#include "boot.h"
#include "vx_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define CG "/sys/fs/cgroup"
#define INIT_RESERVE "33554432" /* 32 MiB the commands cannot take from the init */
#define MAX_GRAVES 256
#define SPARES 2
/* Share of the last 10 s in which every task of a command at its memory limit
 * waited on memory: past it the command is thrashing (re-reading its own code
 * from disk), which the kernel's OOM killer does not call a failure. */
#define JOBS_STALL_PERCENT 40.0

static int available;
static unsigned long serial;

/* Ended commands' cgroups, waiting to be removed (their killed processes
 * leave once reaped); `graves_changed` says a removal may now succeed. */
static struct job graves[MAX_GRAVES];
static int graves_changed;

/* Cgroups made ahead, with the limits in `spare_limits`. */
static struct job spares[SPARES];
static unsigned spare_count;
static struct {
    uint64_t memory_max;
    uint32_t pids_max;
    int known, failed;
} spare_limits;

static int write_fd(int fd, const char *value)
{
    ssize_t len = (ssize_t)strlen(value);
    return write(fd, value, (size_t)len) == len ? 0 : -1;
}

static int write_file(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = write_fd(fd, value);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Writes a cgroup file of `job` ("memory.max", ...). */
static int write_in(const struct job *job, const char *name, const char *value)
{
    char file[96];
    snprintf(file, sizeof file, "%s/%s", job->path, name);
    return write_file(file, value);
}

static int open_in(const struct job *job, const char *name, int flags)
{
    return openat(job->dir_fd, name, flags | O_CLOEXEC);
}

int jobs_setup(char *err, size_t n)
{
    /* favordynmods (Linux 6.0+): moving a process into a cgroup does not
     * wait for an RCU grace period, which costs over a millisecond per
     * command under TCG. Older kernels refuse the option: mount without. */
    const unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if ((mount("cgroup2", CG, "cgroup2", flags, "nsdelegate,favordynmods") != 0 &&
         mount("cgroup2", CG, "cgroup2", flags, "nsdelegate") != 0) ||
        mkdir(CG "/init", 0755) != 0 || write_file(CG "/init/cgroup.procs", "1") != 0 ||
        write_file(CG "/cgroup.subtree_control", "+memory +pids") != 0 || mkdir(CG "/jobs", 0755) != 0 ||
        write_file(CG "/jobs/cgroup.subtree_control", "+memory +pids") != 0) {
        snprintf(err, n, "cgroup v2 set-up failed: %s", strerror(errno));
        return -1;
    }
    if (write_file(CG "/init/memory.min", INIT_RESERVE) != 0)
        vx_log("no memory reserve for the init: %s", strerror(errno));
    /* No oom_score_adj for the init: the OOM killer never picks PID 1 (the
     * kernel's oom_unkillable_task), and commands, which inherit the value,
     * must stay candidates, or one at its memory limit could only stall. */
    available = 1;
    for (unsigned i = 0; i < MAX_GRAVES; i++)
        jobs_clear(&graves[i]);
    return 0;
}

void jobs_clear(struct job *job)
{
    memset(job, 0, sizeof *job);
    job->dir_fd = job->kill_fd = job->events_fd = job->peak_fd = -1;
}

static void close_all(struct job *job)
{
    int *fds[] = {&job->dir_fd, &job->kill_fd, &job->events_fd, &job->peak_fd};
    for (unsigned i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

static int set_limits(struct job *job, uint64_t memory_max, uint32_t pids_max)
{
    char value[32];
    snprintf(value, sizeof value, "%llu", (unsigned long long)memory_max);
    if (write_in(job, "memory.max", memory_max ? value : "max") != 0)
        return -1;
    snprintf(value, sizeof value, "%u", pids_max);
    return write_in(job, "pids.max", pids_max ? value : "max");
}

/* Makes a cgroup with these limits and opens what a command needs of it. */
static int make(struct job *job, uint64_t memory_max, uint32_t pids_max)
{
    jobs_clear(job);
    snprintf(job->path, sizeof job->path, CG "/jobs/%lu", ++serial);
    if (mkdir(job->path, 0755) != 0) {
        job->path[0] = 0;
        return -1;
    }
    write_in(job, "memory.swap.max", "0"); /* absent without swap support: fine */
    if (set_limits(job, memory_max, pids_max) != 0 ||
        (job->dir_fd = open(job->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
        (job->kill_fd = open_in(job, "cgroup.kill", O_WRONLY)) < 0 ||
        (job->events_fd = open_in(job, "memory.events", O_RDONLY)) < 0 ||
        (job->peak_fd = open_in(job, "memory.peak", O_RDONLY)) < 0) {
        int saved = errno;
        close_all(job);
        rmdir(job->path);
        job->path[0] = 0;
        errno = saved;
        return -1;
    }
    return 0;
}

int jobs_create(struct job *job, const struct vx_policy *policy, char *err, size_t n)
{
    jobs_clear(job);
    if (!available || (!policy->memory_max && !policy->pids_max)) {
        if (!available && (policy->memory_max || policy->pids_max)) {
            snprintf(err, n, "memory and process limits need cgroup v2, which the guest could not set up");
            return -1;
        }
        return 0;
    }
    if (spare_count) {
        *job = spares[--spare_count];
        int rc = 0;
        if (spare_limits.memory_max != policy->memory_max || spare_limits.pids_max != policy->pids_max)
            rc = set_limits(job, policy->memory_max, policy->pids_max);
        if (rc != 0) {
            snprintf(err, n, "cannot set the command's limits: %s", strerror(errno));
            jobs_end(job);
            return -1;
        }
    } else if (make(job, policy->memory_max, policy->pids_max) != 0) {
        snprintf(err, n, "cannot make the command's cgroup: %s", strerror(errno));
        return -1;
    }
    /* Spares made from now on carry this command's limits; older ones are used as they are. */
    spare_limits.known = 1;
    spare_limits.failed = 0;
    if (spare_limits.memory_max != policy->memory_max || spare_limits.pids_max != policy->pids_max) {
        spare_limits.memory_max = policy->memory_max;
        spare_limits.pids_max = policy->pids_max;
        for (unsigned i = 0; i < spare_count; i++) {
            if (set_limits(&spares[i], policy->memory_max, policy->pids_max) != 0) {
                /* Cannot happen to a cgroup of ours; drop the spares rather than use wrong limits. */
                while (spare_count)
                    jobs_end(&spares[--spare_count]);
            }
        }
    }
    return 0;
}

void jobs_spawned(struct job *job)
{
    if (job->dir_fd >= 0)
        close(job->dir_fd);
    job->dir_fd = -1;
}

void jobs_kill(struct job *job)
{
    if (job->kill_fd >= 0 && write_fd(job->kill_fd, "1") == 0)
        job->killed = 1;
}

/* A "key value" line's value from a cgroup file read whole; 0 when absent. */
static unsigned long long keyed(const char *buf, const char *key)
{
    size_t kl = strlen(key);
    for (const char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ')
            return strtoull(line + kl + 1, NULL, 10);
    return 0;
}

/* A cgroup file read afresh from its start, NUL-terminated; its length or -1. */
static ssize_t reread(int fd, char *buf, size_t n)
{
    ssize_t r = fd >= 0 ? pread(fd, buf, n - 1, 0) : -1;
    buf[r > 0 ? r : 0] = 0;
    return r;
}

void jobs_account(const struct job *job, int *oom_killed, uint64_t *peak_kb)
{
    char buf[512];
    *oom_killed = 0;
    if (!job->path[0])
        return;
    if (reread(job->events_fd, buf, sizeof buf) > 0)
        *oom_killed = keyed(buf, "oom_kill") > 0;
    if (reread(job->peak_fd, buf, sizeof buf) > 0)
        *peak_kb = strtoull(buf, NULL, 10) / 1024;
}

int jobs_memory_stalled(const struct job *job)
{
    char file[96], buf[512];
    if (!job->path[0] || reread(job->events_fd, buf, sizeof buf) <= 0 || keyed(buf, "max") == 0)
        return 0; /* it never reached its limit */
    snprintf(file, sizeof file, "%s/memory.pressure", job->path);
    if (vx_read_small(file, buf, sizeof buf) <= 0)
        return 0;
    const char *full = strstr(buf, "full avg10=");
    return full && strtod(full + strlen("full avg10="), NULL) >= JOBS_STALL_PERCENT;
}

void jobs_end(struct job *job)
{
    if (!job->path[0])
        return; /* nothing of a job without a cgroup is open */
    if (!job->killed)
        jobs_kill(job);
    close_all(job);
    graves_changed = 1;
    for (int i = 0; i < MAX_GRAVES; i++) {
        if (!graves[i].path[0]) {
            graves[i] = *job;
            jobs_clear(job);
            return;
        }
    }
    /* No room to wait: remove it now, or leave it behind (empty, limited, harmless). */
    if (rmdir(job->path) != 0)
        vx_log("cgroup %s left behind: %s", job->path, strerror(errno));
    jobs_clear(job);
}

void jobs_reaped(void)
{
    graves_changed = 1;
}

int jobs_idle(void)
{
    if (graves_changed) {
        graves_changed = 0;
        int removed = 0;
        for (int i = 0; i < MAX_GRAVES; i++) {
            if (!graves[i].path[0])
                continue;
            if (rmdir(graves[i].path) == 0 || errno == ENOENT) {
                jobs_clear(&graves[i]);
                removed = 1;
            }
        }
        if (removed)
            return 1;
    }
    if (available && spare_limits.known && !spare_limits.failed && spare_count < SPARES) {
        if (make(&spares[spare_count], spare_limits.memory_max, spare_limits.pids_max) == 0)
            spare_count++;
        else
            spare_limits.failed = 1; /* tried again after the next command's cgroup */
        return 1;
    }
    return 0;
}
