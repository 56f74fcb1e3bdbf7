/* exec.c - see exec.h. */
#define _GNU_SOURCE
#include "exec.h"

#include "boot.h"
#include "jobs.h"
#include "procs.h"
#include "spawn.h"
#include "stream.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define STDOUT_PIPE_SIZE (256 << 10)
/* How often commands with a memory limit are checked for thrashing. */
#define MEMORY_WATCH_NS 500000000ull

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41) /* Linux 4.13; older C libraries lack the name */
#endif

static int devnull = -1;

void exec_setup(void)
{
    spawn_setup();
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
}

/*
 * A pty pair for a terminal command: the master stays with the init, the
 * slave becomes the command's stdin, stdout and stderr. The slave is opened
 * through the master (TIOCGPTPEER), never by a path in /dev/pts that a
 * command could race, and belongs to the command's user, as login(1) would
 * leave it. 0, or -1 with errno.
 */
static int open_terminal(const struct vx_exec *e, int *master, int *slave)
{
    struct winsize ws = {.ws_row = e->rows, .ws_col = e->cols};
    int unlock = 0;
    *master = *slave = -1;
    if ((*master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 || ioctl(*master, TIOCSPTLCK, &unlock) != 0 ||
        ioctl(*master, TIOCSWINSZ, &ws) != 0 ||
        (*slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 ||
        fchown(*slave, e->policy.uid, e->policy.gid) != 0 || fchmod(*slave, 0620) != 0) {
        int saved = errno;
        close_fd(master);
        close_fd(slave);
        errno = saved;
        return -1;
    }
    return 0;
}

void exec_start(const struct vx_frame *f)
{
    /* Static: the init is single-threaded and the child uses them only before exec. */
    static char arena[VX_MAX_PAYLOAD + VX_MAX_ARGS + VX_MAX_ENVS + 8];
    static char *argv[VX_MAX_ARGS + 1], *envp[VX_MAX_ENVS + 1];

    struct stream *p = stream_new(f->stream);
    if (!p)
        return;
    struct vx_exec e;
    if (vx_exec_decode(f, &e)) {
        emit_error(f->stream, VX_E_MALFORMED, 0, "EXEC payload is malformed");
        return;
    }
    /* Copy the strings out as C strings: cwd, then argv, then env. */
    size_t a = 0, pos = 0;
    memcpy(arena, e.cwd.p, e.cwd.len);
    arena[e.cwd.len] = 0;
    char *cwd = arena;
    a = e.cwd.len + 1u;
    for (unsigned i = 0; i < (unsigned)e.argc + e.envc; i++) {
        struct vx_str s;
        vx_str_next(e.strings, e.strings_len, &pos, &s); /* validated by vx_exec_decode */
        memcpy(arena + a, s.p, s.len);
        arena[a + s.len] = 0;
        if (i < e.argc)
            argv[i] = arena + a;
        else
            envp[i - e.argc] = arena + a;
        a += s.len + 1u;
    }
    argv[e.argc] = NULL;
    envp[e.envc] = NULL;

    struct job job;
    char why[256];
    if (jobs_create(&job, &e.policy, why, sizeof why) != 0) {
        emit_error(f->stream, VX_E_INTERNAL, errno, "%s", why);
        return;
    }
    int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1};
    int has_stdin = (e.flags & VX_EXEC_STDIN) != 0, tty = (e.flags & VX_EXEC_PTY) != 0;
    if (tty) {
        /* One terminal for all three: in[1] and out[0] are the master, the rest the slave. */
        if (open_terminal(&e, &out[0], &out[1]) != 0) {
            int saved = errno;
            emit_error(f->stream, VX_E_INTERNAL, saved, "cannot open a terminal: %s", strerror(saved));
            jobs_end(&job);
            return;
        }
        in[0] = err[1] = out[1];
    } else if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (has_stdin && pipe2(in, O_CLOEXEC))) {
        int saved = errno;
        int fds[] = {out[0], out[1], err[0], err[1], in[0], in[1]};
        for (unsigned i = 0; i < 6; i++)
            close_fd(&fds[i]);
        emit_error(f->stream, VX_E_INTERNAL, saved, "cannot create pipes: %s", strerror(saved));
        jobs_end(&job);
        return;
    } else {
        fcntl(out[0], F_SETPIPE_SZ, STDOUT_PIPE_SIZE);
    }
    /* The command's ends belong to its user, as pipes it made itself would:
     * reopening them (/dev/stdin, /proc/self/fd/N) checks the owner. */
    if (!tty && (e.policy.uid || e.policy.gid)) {
        int ends[] = {in[0], out[1], err[1]};
        for (unsigned i = 0; i < 3; i++)
            if (ends[i] >= 0 && fchown(ends[i], e.policy.uid, e.policy.gid) != 0)
                vx_log("cannot give a command its pipe: %s", strerror(errno));
    }
    /* A private /tmp and /dev/shm hold what the host asked for, else no more
     * than the command's memory limit (their pages are charged to the
     * command's cgroup either way). */
    char tmp_options[64] = "mode=1777";
    uint64_t tmp_size = e.policy.tmp_bytes ? e.policy.tmp_bytes : e.policy.memory_max;
    if (tmp_size)
        snprintf(tmp_options, sizeof tmp_options, "mode=1777,size=%llu", (unsigned long long)tmp_size);
    struct spawn_request req = {has_stdin ? in[0] : devnull, out[1], err[1], cwd, argv, envp, &e.policy,
                                job.dir_fd, tmp_options, tty};
    struct spawn_failure failed;
    uint64_t start = now_ns();
    pid_t pid = spawn_command(&req, &failed);
    int saved = errno;
    jobs_spawned(&job);
    close_fd(&out[1]);
    if (tty)
        err[1] = in[0] = -1; /* the slave, closed once above */
    close_fd(&err[1]);
    close_fd(&in[0]);
    /* The terminal's master is read (output), written (input) and kept for
     * RESIZE through descriptors of its own, each closed once. */
    int pty = -1;
    if (tty && pid > 0 && !failed.stage &&
        ((pty = fcntl(out[0], F_DUPFD_CLOEXEC, 0)) < 0 || (in[1] = fcntl(out[0], F_DUPFD_CLOEXEC, 0)) < 0)) {
        saved = errno;
        kill(-pid, SIGKILL);
        close_fd(&pty);
        failed.stage = STAGE_SETUP;
        failed.err = saved;
    }
    if (pid < 0 || failed.stage) {
        if (pid > 0)
            waitpid(pid, NULL, 0);
        jobs_end(&job);
        close_fd(&out[0]);
        close_fd(&err[0]);
        close_fd(&in[1]);
        if (pid < 0)
            emit_error(f->stream, VX_E_INTERNAL, saved, "fork: %s", strerror(saved));
        else
            emit_error(f->stream, failed.stage == STAGE_CHDIR ? VX_E_WORKDIR : VX_E_EXEC, failed.err,
                       "cannot %s %s: %s", spawn_stage_name(failed.stage),
                       failed.stage == STAGE_CHDIR ? cwd : argv[0], strerror(failed.err));
        return;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK); /* our pipe ends carry no other status flags */
    if (err[0] >= 0)
        fcntl(err[0], F_SETFL, O_NONBLOCK);
    p->used = 1;
    p->kind = K_COMMAND;
    p->pid = pid;
    p->fd_in = -1;
    p->fd_out[0] = -1;
    p->fd_out[VX_STDOUT] = out[0];
    p->fd_out[VX_STDERR] = err[0];
    p->credit[VX_STDOUT] = p->credit[VX_STDERR] = streams_host_window();
    p->pty_fd = pty;
    p->has_stdin = has_stdin;
    if (has_stdin) {
        p->fd_in = in[1];
        fcntl(p->fd_in, F_SETFL, O_NONBLOCK);
        p->in_credit = STDIN_WINDOW;
    }
    p->job = job;
    p->memory_limited = e.policy.memory_max != 0;
    p->service = (e.policy.options & VX_POLICY_SERVICE) != 0;
    p->start_ns = start;
    p->deadline_ns = e.timeout_ms ? start + (uint64_t)e.timeout_ms * 1000000ull : 0;
    emit_u32(VX_STARTED, 0, f->stream, (uint32_t)pid);
    if (tty) /* everything comes through the terminal, on stdout */
        emit(VX_EOF, VX_STDERR, f->stream, NULL, 0);
}

void exec_reap(int sigfd)
{
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) > 0) {
    }
    int status;
    struct rusage ru;
    pid_t pid;
    while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
        jobs_reaped();
        for (unsigned i = 0; i < MAX_STREAMS; i++) {
            struct stream *p = &streams[i];
            if (p->used && p->kind == K_COMMAND && p->pid == pid && !p->exited) {
                p->exited = 1;
                p->status = status;
                p->ru = ru;
                p->end_ns = now_ns();
                /* A command ends with its main process: what it left behind goes too. */
                jobs_kill(&p->job);
            }
        }
    }
}

void exec_report_exits(void)
{
    for (unsigned i = 0; i < MAX_STREAMS; i++) {
        struct stream *p = &streams[i];
        if (!p->used || !p->exited || p->fd_out[VX_STDOUT] >= 0 || p->fd_out[VX_STDERR] >= 0)
            continue;
        if (p->orphan) { /* no session to tell */
            stream_free(p);
            continue;
        }
        if (wire_room() < VX_HEADER_SIZE + VX_EXIT_SIZE)
            return;
        uint8_t x[VX_EXIT_SIZE] = {0};
        int st = p->status, oom = 0;
        uint64_t peak_kb = (uint64_t)p->ru.ru_maxrss;
        jobs_account(&p->job, &oom, &peak_kb);
        x[0] = p->timed_out ? VX_TIMED_OUT
               : WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && (oom || p->memory_killed) ? VX_MEMORY
               : WIFSIGNALED(st) ? VX_SIGNALED : VX_EXITED;
        vx_put_u32(x + 4, (uint32_t)(WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st)));
        vx_put_u64(x + 8, p->end_ns - p->start_ns);
        vx_put_u64(x + 16, (uint64_t)p->ru.ru_utime.tv_sec * 1000000u + (uint64_t)p->ru.ru_utime.tv_usec);
        vx_put_u64(x + 24, (uint64_t)p->ru.ru_stime.tv_sec * 1000000u + (uint64_t)p->ru.ru_stime.tv_usec);
        vx_put_u64(x + 32, peak_kb);
        emit(VX_EXIT, 0, p->id, x, VX_EXIT_SIZE);
        stream_free(p);
    }
}

int exec_check_deadlines(void)
{
    uint64_t now = now_ns(), next = 0;
    for (unsigned i = 0; i < MAX_STREAMS; i++) {
        struct stream *p = &streams[i];
        if (!p->used || p->kind != K_COMMAND)
            continue;
        if (p->memory_limited && !p->exited && !p->memory_killed) {
            if (jobs_memory_stalled(&p->job)) {
                vx_log("stream %u: stuck at its memory limit; killed", p->id);
                p->memory_killed = 1;
                jobs_kill(&p->job);
            } else if (!next || now + MEMORY_WATCH_NS < next) {
                next = now + MEMORY_WATCH_NS;
            }
        }
        if (!p->deadline_ns)
            continue;
        if (now >= p->deadline_ns) {
            if (!p->exited)
                p->timed_out = 1;
            kill(-p->pid, SIGKILL);
            jobs_kill(&p->job);
            p->deadline_ns = 0;
        } else if (!next || p->deadline_ns < next) {
            next = p->deadline_ns;
        }
    }
    if (!next)
        return -1;
    return (int)((next - now) / 1000000u) + 1;
}

uint32_t exec_stream_of_group(uint32_t pgid)
{
    for (unsigned i = 0; i < MAX_STREAMS; i++)
        if (streams[i].used && streams[i].kind == K_COMMAND && (uint32_t)streams[i].pid == pgid)
            return streams[i].orphan ? 0 : streams[i].id;
    return 0;
}

void exec_kill_request(const struct vx_frame *f)
{
    struct vx_kill k;
    struct request_fail why;
    vx_kill_decode(f, &k);
    if (procs_kill(&k, &why) != 0)
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, f->stream, NULL, 0);
}
