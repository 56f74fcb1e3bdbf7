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
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct request {
    const char *path;
    char *const *argv;
    int log_fd;
    int result;
    int done;
};

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

int vmexec_spawn(const char *path, char *const argv[], int log_fd)
{
    pthread_once(&once, start_spawner);
    struct request r = {path, argv, log_fd, 0, 0};
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
