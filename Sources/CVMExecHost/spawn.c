/*
 * spawn.c - start QEMU so that it never outlives the host process.
 *
 * PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and
 * the threads of Swift's and Dispatch's pools come and go. So every fork
 * happens on one dedicated thread that is never stopped: the signal then
 * fires exactly when the process ends, even by SIGKILL.
 */
#define _GNU_SOURCE
#include "vmexec_host.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* A confinement prepared before the fork: the child only makes syscalls. */
struct confinement {
    char uid_map[32], gid_map[32];
    const char *read_only_path;
};

struct request {
    const char *path;
    char *const *argv;
    int log_fd;
    const struct confinement *confine;
    int result;
    int done;
};

/* Tells the log which step failed (async-signal-safe: no stdio) and ends the child. */
static void fail(const char *step)
{
    char n[12];
    int e = errno, i = sizeof n;
    n[--i] = 0;
    do {
        n[--i] = (char)('0' + e % 10);
        e /= 10;
    } while (e && i > 0);
    static const char prefix[] = "vmexec: confining the process failed: ";
    if (write(2, prefix, sizeof prefix - 1) < 0 || write(2, step, strlen(step)) < 0 || write(2, " (errno ", 8) < 0 ||
        write(2, n + i, strlen(n + i)) < 0 || write(2, ")\n", 2) < 0)
        _exit(126);
    _exit(126);
}

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        fail(path);
    close(fd);
}

/*
 * A user namespace of the child's own, mapping one id inside to the caller's
 * uid and gid (nothing else: an unprivileged caller can map no more), with a
 * mount namespace; `read_only_path` bound read-only there. The capabilities
 * the new namespace grants stay across exec as ambient ones, so the program
 * (virtiofsd) holds them only over what the namespace owns.
 */
static void confine(const struct confinement *c)
{
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
        fail("unshare(CLONE_NEWUSER | CLONE_NEWNS)");
    write_file("/proc/self/setgroups", "deny");
    write_file("/proc/self/uid_map", c->uid_map);
    write_file("/proc/self/gid_map", c->gid_map);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        fail("making the mounts private");
    if (c->read_only_path) {
        struct statfs st;
        if (mount(c->read_only_path, c->read_only_path, NULL, MS_BIND | MS_REC, NULL) != 0 ||
            statfs(c->read_only_path, &st) != 0)
            fail("binding the folder");
        /* A remount in a user namespace must keep the flags it cannot change. */
        unsigned long keep = 0;
        keep |= (st.f_flags & ST_NOSUID) ? MS_NOSUID : 0;
        keep |= (st.f_flags & ST_NODEV) ? MS_NODEV : 0;
        keep |= (st.f_flags & ST_NOEXEC) ? MS_NOEXEC : 0;
        keep |= (st.f_flags & ST_NOATIME) ? MS_NOATIME : 0;
        keep |= (st.f_flags & ST_NODIRATIME) ? MS_NODIRATIME : 0;
        keep |= (st.f_flags & ST_RELATIME) ? MS_RELATIME : 0;
        if (mount(NULL, c->read_only_path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, NULL) != 0)
            fail("making the folder read-only");
    }
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) != 0)
        fail("capget");
    data[0].inheritable = data[0].permitted;
    data[1].inheritable = data[1].permitted;
    if (syscall(SYS_capset, &head, data) != 0)
        fail("capset");
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0 && errno != EINVAL)
            fail("raising ambient capabilities");
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static struct request *pending;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void child(const struct request *r, pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(127); /* the parent is already gone */
    setpgid(0, 0);  /* terminal signals are for vmexec, which forwards them */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(r->log_fd, 1) < 0 || dup2(r->log_fd, 2) < 0)
        _exit(127);
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    if (r->confine)
        confine(r->confine);
    execv(r->path, r->argv);
    _exit(127);
}

static void *spawner(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!pending)
            pthread_cond_wait(&cond, &lock);
        struct request *r = pending;
        pending = NULL;
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid == 0)
            child(r, parent);
        r->result = pid < 0 ? -errno : pid;
        r->done = 1;
        pthread_cond_broadcast(&cond);
    }
    return NULL;
}

static void start_spawner(void)
{
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&t, &attr, spawner, NULL);
    pthread_attr_destroy(&attr);
}

static int spawn(const char *path, char *const argv[], int log_fd, const struct confinement *c)
{
    pthread_once(&once, start_spawner);
    struct request r = {path, argv, log_fd, c, 0, 0};
    pthread_mutex_lock(&lock);
    while (pending)
        pthread_cond_wait(&cond, &lock);
    pending = &r;
    pthread_cond_broadcast(&cond);
    while (!r.done)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return r.result;
}

int vmexec_spawn(const char *path, char *const argv[], int log_fd)
{
    return spawn(path, argv, log_fd, NULL);
}

int vmexec_spawn_confined(const char *path, char *const argv[], int log_fd, unsigned inside_uid, unsigned inside_gid,
                          const char *read_only_path)
{
    struct confinement c;
    snprintf(c.uid_map, sizeof c.uid_map, "%u %u 1", inside_uid, (unsigned)getuid());
    snprintf(c.gid_map, sizeof c.gid_map, "%u %u 1", inside_gid, (unsigned)getgid());
    c.read_only_path = read_only_path;
    return spawn(path, argv, log_fd, &c);
}

int vmexec_wait(int pid)
{
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, 0);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}
