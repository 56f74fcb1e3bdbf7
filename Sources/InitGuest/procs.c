/*
 * procs.c - PS and KILL: the guest's processes as /proc shows them.
 */
#define _GNU_SOURCE
#include "procs.h"

#include "boot.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PF_KTHREAD 0x00200000u /* /proc/PID/stat flags: a kernel thread */

DIR *procs_open(struct request_fail *f)
{
    DIR *d = opendir("/proc");
    if (!d)
        request_failed(f, VX_E_INTERNAL, errno, "cannot read /proc: %s", strerror(errno));
    return d;
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Fields of /proc/PID/stat after the command name, which may hold spaces and ')'. */
struct stat_fields {
    char state;
    unsigned long ppid, pgrp, flags, utime, stime, rss;
    unsigned long long starttime;
};

static int read_stat(const char *pid, struct stat_fields *s)
{
    char path[300], buf[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    if (vx_read_small(path, buf, sizeof buf) <= 0)
        return -1;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
     * cutime cstime priority nice threads itrealvalue starttime vsize rss */
    int n = sscanf(p + 1, " %c %lu %lu %*d %*d %*d %lu %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu %*u %lu",
                   &s->state, &s->ppid, &s->pgrp, &s->flags, &s->utime, &s->stime, &s->starttime, &s->rss);
    return n == 8 ? 0 : -1;
}

/* argv from /proc/PID/cmdline as u16 count + strings, at most VX_MAX_ARGV bytes of arguments. */
static void put_argv(const char *pid, uint8_t *out, uint32_t *len)
{
    char path[300], buf[VX_MAX_ARGV + 1];
    snprintf(path, sizeof path, "/proc/%s/cmdline", pid);
    long n = vx_read_small(path, buf, sizeof buf);
    uint32_t at = *len + 2;
    uint16_t argc = 0;
    for (long i = 0; n > 0 && i < n;) {
        size_t l = strnlen(buf + i, (size_t)(n - i));
        vx_put_u16(out + at, (uint16_t)l);
        memcpy(out + at + 2, buf + i, l);
        at += 2u + (uint32_t)l;
        argc++;
        i += (long)l + 1;
    }
    vx_put_u16(out + *len, argc);
    *len = at;
}

int procs_next(DIR *proc, uint8_t *out, uint32_t *len, uint32_t *pgid)
{
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    struct dirent *de;
    while ((de = readdir(proc))) {
        char *end;
        unsigned long pid = strtoul(de->d_name, &end, 10);
        struct stat_fields s;
        if (*end || pid <= 1 || read_stat(de->d_name, &s) != 0 || (s.flags & PF_KTHREAD))
            continue;
        char path[300];
        struct stat st;
        snprintf(path, sizeof path, "/proc/%s", de->d_name);
        if (stat(path, &st) != 0)
            continue; /* gone meanwhile */
        uint64_t since_start = clock_ns(CLOCK_BOOTTIME) - s.starttime * (1000000000ull / (uint64_t)tick);
        memset(out, 0, VX_PROCESS_FIXED);
        vx_put_u32(out, (uint32_t)pid);
        vx_put_u32(out + 4, (uint32_t)s.ppid);
        vx_put_u32(out + 8, (uint32_t)s.pgrp);
        vx_put_u32(out + 12, st.st_uid);
        /* Upper-case letters as /proc has them; 't' (stopped by tracing) is shown as T. */
        out[20] = (uint8_t)(s.state >= 'A' && s.state <= 'Z' ? s.state : s.state == 't' ? 'T' : 'S');
        vx_put_u64(out + 24, clock_ns(CLOCK_REALTIME) - since_start);
        vx_put_u64(out + 32, (uint64_t)(s.utime + s.stime) * (1000000ull / (uint64_t)tick));
        vx_put_u64(out + 40, (uint64_t)s.rss * (uint64_t)page / 1024u);
        *len = VX_PROCESS_FIXED;
        put_argv(de->d_name, out, len);
        *pgid = (uint32_t)s.pgrp;
        return 1;
    }
    return 0;
}

int procs_kill(const struct vx_kill *k, struct request_fail *f)
{
    pid_t target = (pid_t)k->pid;
    if (k->flags & VX_KILL_GROUP) {
        pid_t g = getpgid(target);
        if (g < 0)
            return request_failed(f, VX_E_PROCESS, errno, "cannot signal process %u: %s", k->pid, strerror(errno));
        if (g <= 1 || g == getpgrp())
            return request_failed(f, VX_E_PROCESS, EPERM,
                                  "process %u is in the init's process group, which is not signalled", k->pid);
        target = -g;
    }
    if (kill(target, (int)k->signal) == 0)
        return 0;
    return request_failed(f, VX_E_PROCESS, errno, "cannot signal process %u: %s", k->pid, strerror(errno));
}
