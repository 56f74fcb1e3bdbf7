/*
 * spawn.c - starting a command's process.
 *
 * The child shares the init's memory until it executes (vfork semantics):
 * no page tables to copy and no copy-on-write faults, which dominate the
 * cost of fork() under TCG. It runs only syscalls, then execve or _exit,
 * and reports a failure in `failure` below, the only memory it writes.
 *
 * On x86-64 the child is made with clone3(CLONE_VM | CLONE_VFORK |
 * CLONE_INTO_CGROUP) on a stack of its own: it is born in the command's
 * cgroup, where moving it there by writing cgroup.procs costs a cgroup
 * migration per command. Elsewhere, and on kernels without clone3 or
 * CLONE_INTO_CGROUP (before 5.7), it is made with vfork() and moves itself.
 */
#define _GNU_SOURCE
#include "spawn.h"

#include "boot.h"
#include "userland.h"
#include "vx_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Written by the child before _exit; read by the init once the child has gone on. */
static struct {
    volatile int stage;
    volatile int err;
} failure;

/*
 * The init runs on one CPU, and a command starts on it too: the child then
 * runs on the CPU its blocked parent frees, and the wake-ups of exec and
 * exit stay on that CPU. A cross-CPU wake-up is an interrupt between vCPUs,
 * slow under TCG. The child takes every CPU back before it executes, so the
 * command spreads as soon as it has work for more than one.
 */
static cpu_set_t every_cpu;
static int pinned;

void spawn_setup(void)
{
    cpu_set_t one;
    if (sched_getaffinity(0, sizeof every_cpu, &every_cpu) != 0 || CPU_COUNT(&every_cpu) < 2)
        return;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &every_cpu)) {
            CPU_SET(cpu, &one);
            break;
        }
    }
    pinned = sched_setaffinity(0, sizeof one, &one) == 0;
}

/* execve() of `file`, searched in envp's PATH when it has no slash (as execvp,
 * but without touching `environ`, which the child must not change). */
static void exec_search(const char *file, char **argv, char **envp)
{
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return;
    }
    const char *path = DEFAULT_PATH;
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    char buf[4096];
    int denied = 0;
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        int n = snprintf(buf, sizeof buf, "%.*s/%s", end == p ? 1 : (int)(end - p), end == p ? "." : p, file);
        if (n > 0 && (size_t)n < sizeof buf) {
            execve(buf, argv, envp);
            if (errno == EACCES)
                denied = 1;
            else if (errno != ENOENT && errno != ENOTDIR)
                return;
        }
        if (!*end)
            break;
        p = end;
    }
    errno = denied ? EACCES : ENOENT;
}

/* The child: only syscalls, then execve or _exit. `join_cgroup`: it was not
 * born in its cgroup and moves itself there. */
static void child_run(const struct spawn_request *r, int join_cgroup)
{
    const struct vx_policy *policy = r->policy;
    int stage = STAGE_SETUP;
    sigset_t none;
    sigemptyset(&none);
    /* The init ignores SIGPIPE and blocks SIGCHLD; give the program the defaults. */
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0 || dup2(r->in_fd, 0) < 0 || dup2(r->out_fd, 1) < 0 || dup2(r->err_fd, 2) < 0)
        goto fail;
    /* A terminal command leads its session with the pty as its controlling
     * terminal: job control, Ctrl-C to the foreground group, SIGWINCH, SIGHUP. */
    if (r->controlling_tty && ioctl(0, TIOCSCTTY, 0) != 0)
        goto fail;
    /* Into the command's cgroup before anything can fork. */
    if (join_cgroup && r->cgroup_fd >= 0) {
        int procs = openat(r->cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (procs < 0 || write(procs, "0", 1) != 1)
            goto fail;
        close(procs);
    }
    if (policy->nofile) {
        struct rlimit rl = {policy->nofile, policy->nofile};
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            goto fail;
    }
    if (policy->cpu_seconds) {
        struct rlimit rl = {policy->cpu_seconds, (rlim_t)policy->cpu_seconds + 1};
        if (setrlimit(RLIMIT_CPU, &rl) != 0)
            goto fail;
    }
    umask(022);
    if (policy->options & VX_POLICY_PRIVATE_TMP) {
        /* A mount namespace of its own whose copies of the root's (shared)
         * mounts are slaves: what it mounts stays its own, what the init
         * unmounts goes from it too; and an IPC namespace of its own (System V
         * IPC, message queues). Both end with the command's last process. */
        stage = STAGE_TMP;
        if (unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0 ||
            userland_private(r->tmp_options) != 0)
            goto fail;
    }
    stage = STAGE_CHROOT;
    if (chroot(VX_NEWROOT) != 0)
        goto fail;
    stage = STAGE_USER;
    /* No gaining privileges through exec (setuid files, file capabilities), root or not. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        goto fail;
    /* Dropping uid 0 clears every capability. */
    if ((policy->uid || policy->gid) &&
        (setgroups(0, NULL) != 0 || setgid(policy->gid) != 0 || setuid(policy->uid) != 0))
        goto fail;
    stage = STAGE_CHDIR;
    if (chdir(r->cwd[0] ? r->cwd : "/") != 0)
        goto fail;
    stage = STAGE_SETUP;
    if (pinned && sched_setaffinity(0, sizeof every_cpu, &every_cpu) != 0)
        goto fail;
    stage = STAGE_EXEC;
    exec_search(r->argv[0], r->argv, r->envp);
fail:
    failure.err = errno;
    failure.stage = stage;
    _exit(127);
}

#if defined(__x86_64__)

/* struct clone_args of clone3(2), as of Linux 5.7 (musl ships no kernel headers). */
struct clone3_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
        cgroup;
};
#define VX_CLONE_INTO_CGROUP 0x200000000ULL
#define VX_SYS_CLONE3 435

static const struct spawn_request *born_request;

static void born_in_cgroup(void)
{
    child_run(born_request, 0);
}

/* The child's stack: the init is suspended while the child uses it (CLONE_VFORK). */
static _Alignas(16) unsigned char child_stack[64 << 10];
static int no_clone3;

/* clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP): the child starts on
 * child_stack and calls born_in_cgroup(), which never returns. Returns the
 * child's pid (once it has executed or exited) or -errno. */
static long clone3_into(int cgroup_fd)
{
    struct clone3_args a;
    memset(&a, 0, sizeof a);
    a.flags = CLONE_VM | CLONE_VFORK | VX_CLONE_INTO_CGROUP;
    a.exit_signal = SIGCHLD;
    a.stack = (uint64_t)(uintptr_t)child_stack;
    a.stack_size = sizeof child_stack;
    a.cgroup = (uint64_t)cgroup_fd;
    register long rax __asm__("rax") = VX_SYS_CLONE3;
    register struct clone3_args *rdi __asm__("rdi") = &a;
    register unsigned long rsi __asm__("rsi") = sizeof a;
    register void (*r12)(void) __asm__("r12") = born_in_cgroup;
    /* The child resumes after `syscall` with rax 0 on the new stack: no
     * compiled code may run there, so it calls straight into C (the stack
     * top is 16-byte aligned, as a call expects) and exits should it return. */
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "call *%%r12\n\t"
                     "mov $60, %%eax\n\t"
                     "mov $127, %%edi\n\t"
                     "syscall\n"
                     "1:"
                     : "+r"(rax)
                     : "r"(rdi), "r"(rsi), "r"(r12)
                     : "rcx", "r11", "memory");
    return rax;
}

#endif

pid_t spawn_command(const struct spawn_request *r, struct spawn_failure *failed)
{
    failure.stage = 0;
    failure.err = 0;
    pid_t pid = -1;
    int done = 0;
#if defined(__x86_64__)
    if (r->cgroup_fd >= 0 && !no_clone3) {
        born_request = r;
        long rc = clone3_into(r->cgroup_fd);
        if (rc >= 0) {
            pid = (pid_t)rc;
            done = 1;
        } else if (rc == -ENOSYS || rc == -EINVAL || rc == -E2BIG) {
            vx_log("clone3 into a cgroup is not available (%s); commands move into theirs", strerror((int)-rc));
            no_clone3 = 1;
        } else {
            errno = (int)-rc;
            return -1;
        }
    }
#endif
    if (!done) {
        pid = vfork();
        if (pid == 0)
            child_run(r, 1);
    }
    failed->stage = failure.stage;
    failed->err = failure.err;
    return pid;
}

const char *spawn_stage_name(int stage)
{
    switch (stage) {
    case STAGE_TMP: return "make a private /tmp and /dev/shm for";
    case STAGE_CHROOT: return "enter the root file system";
    case STAGE_USER: return "become the command's user for";
    case STAGE_CHDIR: return "change to the working directory";
    case STAGE_EXEC: return "execute";
    default: return "set up the process";
    }
}
