/*
 * jobs.c - a cgroup (v2) per command, so that its limits, its accounting and
 * its end cover every process it starts, however it forks or detaches.
 *
 *   /sys/fs/cgroup/init        PID 1, with a memory reserve (memory.min)
 *   /sys/fs/cgroup/jobs/<id>   one per command: memory.max, pids.max
 *
 * A command's cgroup is killed whole (cgroup.kill) on timeout and when its
 * main process ends, and removed once empty. A command with neither a memory
 * nor a process limit gets none: making and removing a cgroup costs a few
 * milliseconds under TCG, more than the rest of an exec.
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
/* Share of the last 10 s in which every task of a command at its memory limit
 * waited on memory: past it the command is thrashing (re-reading its own code
 * from disk), which the kernel's OOM killer does not call a failure. */
#define JOBS_STALL_PERCENT 40.0

static int available;
/* Job cgroups whose processes were killed but not yet reaped: removed later. */
static char graves[MAX_GRAVES][64];

static int write_file(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = (ssize_t)strlen(value);
    ssize_t w = write(fd, value, (size_t)len);
    int saved = errno;
    close(fd);
    errno = saved;
    return w == len ? 0 : -1;
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
    /* The OOM killer never picks the init. */
    if (write_file("/proc/self/oom_score_adj", "-1000") != 0)
        vx_log("cannot protect the init from the OOM killer: %s", strerror(errno));
    available = 1;
    return 0;
}

int jobs_create(struct job *job, uint32_t stream, const struct vx_policy *policy, char *err, size_t n)
{
    static unsigned long serial;
    memset(job, 0, sizeof *job);
    job->procs_fd = -1;
    if (!available || (!policy->memory_max && !policy->pids_max)) {
        if (!available && (policy->memory_max || policy->pids_max)) {
            snprintf(err, n, "memory and process limits need cgroup v2, which the guest could not set up");
            return -1;
        }
        return 0;
    }
    snprintf(job->path, sizeof job->path, CG "/jobs/%u-%lu", stream, ++serial);
    char file[96], value[32];
    if (mkdir(job->path, 0755) != 0) {
        snprintf(err, n, "cannot make the command's cgroup: %s", strerror(errno));
        return -1;
    }
    snprintf(file, sizeof file, "%s/memory.max", job->path);
    snprintf(value, sizeof value, "%llu", (unsigned long long)policy->memory_max);
    int rc = write_file(file, policy->memory_max ? value : "max");
    snprintf(file, sizeof file, "%s/memory.swap.max", job->path);
    if (rc == 0)
        write_file(file, "0"); /* absent without swap support: fine */
    snprintf(file, sizeof file, "%s/pids.max", job->path);
    snprintf(value, sizeof value, "%u", policy->pids_max);
    if (rc == 0)
        rc = write_file(file, policy->pids_max ? value : "max");
    snprintf(file, sizeof file, "%s/cgroup.procs", job->path);
    if (rc == 0)
        job->procs_fd = open(file, O_WRONLY | O_CLOEXEC);
    if (rc != 0 || job->procs_fd < 0) {
        snprintf(err, n, "cannot set the command's limits: %s", strerror(errno));
        rmdir(job->path);
        job->path[0] = 0;
        return -1;
    }
    return 0;
}

void jobs_spawned(struct job *job)
{
    if (job->procs_fd >= 0)
        close(job->procs_fd);
    job->procs_fd = -1;
}

void jobs_kill(struct job *job)
{
    char file[96];
    if (!job->path[0])
        return;
    snprintf(file, sizeof file, "%s/cgroup.kill", job->path);
    write_file(file, "1");
}

/* A "key value" line's value from a cgroup file; 0 when absent. */
static unsigned long long keyed(const char *path, const char *key)
{
    char buf[512];
    long r = vx_read_small(path, buf, sizeof buf);
    size_t kl = strlen(key);
    for (char *line = buf; r > 0 && line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ')
            return strtoull(line + kl + 1, NULL, 10);
    return 0;
}

void jobs_account(const struct job *job, int *oom_killed, uint64_t *peak_kb)
{
    char file[96], buf[32];
    *oom_killed = 0;
    if (!job->path[0])
        return;
    snprintf(file, sizeof file, "%s/memory.events", job->path);
    *oom_killed = keyed(file, "oom_kill") > 0;
    snprintf(file, sizeof file, "%s/memory.peak", job->path);
    if (vx_read_small(file, buf, sizeof buf) > 0)
        *peak_kb = strtoull(buf, NULL, 10) / 1024;
}

int jobs_memory_stalled(const struct job *job)
{
    char file[96], buf[256];
    if (!job->path[0])
        return 0;
    snprintf(file, sizeof file, "%s/memory.events", job->path);
    if (keyed(file, "max") == 0)
        return 0; /* it never reached its limit */
    snprintf(file, sizeof file, "%s/memory.pressure", job->path);
    if (vx_read_small(file, buf, sizeof buf) <= 0)
        return 0;
    const char *full = strstr(buf, "full avg10=");
    return full && strtod(full + strlen("full avg10="), NULL) >= JOBS_STALL_PERCENT;
}

static void bury(void)
{
    for (int i = 0; i < MAX_GRAVES; i++)
        if (graves[i][0] && (rmdir(graves[i]) == 0 || errno == ENOENT))
            graves[i][0] = 0;
}

void jobs_end(struct job *job)
{
    jobs_spawned(job);
    if (!job->path[0])
        return;
    jobs_kill(job);
    if (rmdir(job->path) != 0 && errno == EBUSY) {
        /* Killed processes leave once reaped; try again later. */
        for (int i = 0; i < MAX_GRAVES; i++) {
            if (!graves[i][0]) {
                snprintf(graves[i], sizeof graves[i], "%s", job->path);
                break;
            }
        }
    }
    job->path[0] = 0;
    bury();
}

void jobs_tick(void)
{
    bury();
}
