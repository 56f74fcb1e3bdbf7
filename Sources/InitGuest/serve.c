/*
 * serve.c - PID 1's event loop over the control port.
 *
 * One poll() loop, no threads. Memory is bounded up front: one input buffer
 * of two maximal frames, one output buffer, and a stdin buffer of one window
 * per process. Process output is read from its pipe only while the host has
 * granted credit for it, so a slow host reader blocks that process's writes
 * (through its full pipe) and nothing else. See docs/PROTOCOL.md.
 */
#define _GNU_SOURCE
#include "serve.h"

#include "boot.h"
#include "drives.h"
#include "files.h"
#include "jobs.h"
#include "procs.h"
#include "spawn.h"
#include "vx_proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 128u
#define STDIN_WINDOW 65536u
#define MAX_HOST_WINDOW (16u << 20)
#define OUT_CAP (1u << 20)
/* Process output may fill only half the output buffer; the rest is for replies. */
#define OUT_DATA_LIMIT (OUT_CAP / 2)
#define IN_CAP (2 * (VX_HEADER_SIZE + VX_MAX_PAYLOAD))
#define REPLY_ROOM (VX_HEADER_SIZE + VX_MAX_PAYLOAD + 256)
#define STDOUT_PIPE_SIZE (256 << 10)

enum session { DISCONNECTED, WAIT_HELLO, READY, RESYNC };

/*
 * What a stream carries. A command is a process; PUT and GET move a file
 * through the same stdin / stdout machinery (credit, EOF) with the file in
 * place of the pipe; LIST and PS stream entries while the output has room.
 */
enum kind { K_COMMAND, K_PUT, K_GET, K_LIST, K_PS };

struct proc {
    int used;
    enum kind kind;
    uint32_t stream;
    pid_t pid;
    int fd_in;         /* write end of the child's stdin, or -1 */
    int fd_out[3];     /* [VX_STDOUT], [VX_STDERR]: read ends, or -1 once at EOF */
    uint32_t credit[3]; /* bytes of output the host still accepts */
    uint8_t *in_buf;   /* stdin bytes received, not yet written to the pipe */
    uint32_t in_len, in_credit, in_ungranted;
    int has_stdin, in_eof;
    int exited, status, timed_out;
    int memory_limited, memory_killed;
    struct job job;
    struct rusage ru;
    uint64_t start_ns, end_ns, deadline_ns;
    /* PUT: bytes announced; GET: most bytes accepted; LIST: most entries (0: no cap). */
    uint64_t expect, moved;
    struct put_target put; /* PUT */
    DIR *dir;              /* LIST, PS */
};

static struct {
    int port, sigfd, devnull;
    enum session state;
    uint8_t in[IN_CAP];
    size_t in_len;
    uint8_t *out;
    size_t out_start, out_end;
    uint32_t host_window;
    struct proc procs[MAX_PROCS];
    const char *boot_error;
    long init_ms, ready_ms;
} S;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- output buffer ---------------------------------------------------- */

static size_t out_used(void)
{
    return S.out_end - S.out_start;
}

static size_t out_room(void)
{
    return OUT_CAP - out_used();
}

/* Returns space for n more bytes at S.out + S.out_end, compacting if needed. */
static uint8_t *out_reserve(size_t n)
{
    if (OUT_CAP - S.out_end < n && S.out_start > 0) {
        memmove(S.out, S.out + S.out_start, out_used());
        S.out_end -= S.out_start;
        S.out_start = 0;
    }
    return OUT_CAP - S.out_end < n ? NULL : S.out + S.out_end;
}

static void emit(uint8_t type, uint8_t sub, uint32_t stream, const void *payload, uint32_t len)
{
    if (S.state == DISCONNECTED)
        return;
    uint8_t *d = out_reserve(VX_HEADER_SIZE + len);
    if (!d) {
        /* Cannot happen while the reply room rule holds; never overflow. */
        vx_log("output buffer full, %s frame for stream %u dropped", vx_type_name(type), stream);
        return;
    }
    vx_header_write(d, type, sub, stream, len);
    if (len)
        memcpy(d + VX_HEADER_SIZE, payload, len);
    S.out_end += VX_HEADER_SIZE + len;
}

static void emit_error(uint32_t stream, int code, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void emit_error(uint32_t stream, int code, int err, const char *fmt, ...)
{
    uint8_t p[8 + 512];
    vx_put_u32(p, (uint32_t)code);
    vx_put_u32(p + 4, (uint32_t)err);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)p + 8, sizeof p - 8, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof p - 9)
        n = (int)(sizeof p - 9);
    emit(VX_ERROR, 0, stream, p, 8u + (uint32_t)n);
}

static void emit_u32(uint8_t type, uint8_t sub, uint32_t stream, uint32_t v)
{
    uint8_t p[4];
    vx_put_u32(p, v);
    emit(type, sub, stream, p, 4);
}

static void send_hello(void)
{
    uint8_t p[VX_HELLO_FIXED + 256];
    memcpy(p, "VMXC", 4);
    vx_put_u16(p + 4, VX_MAJOR);
    vx_put_u16(p + 6, VX_MINOR);
    vx_put_u32(p + 8, VX_MAX_PAYLOAD);
    vx_put_u32(p + 12, STDIN_WINDOW);
    vx_put_u32(p + 16, MAX_PROCS);
    struct utsname u;
    if (uname(&u) != 0)
        strcpy(u.release, "?");
    int n = snprintf((char *)p + VX_HELLO_FIXED, sizeof p - VX_HELLO_FIXED,
                     "init=vmexec-init %d.%d\nkernel=%s\ninit_ms=%ld\nready_ms=%ld\nboot_error=%s",
                     VX_MAJOR, VX_MINOR, u.release, S.init_ms, S.ready_ms, S.boot_error);
    if (n < 0 || (size_t)n >= sizeof p - VX_HELLO_FIXED)
        n = (int)(sizeof p - VX_HELLO_FIXED - 1);
    emit(VX_HELLO, 0, 0, p, VX_HELLO_FIXED + (uint32_t)n);
}

/* Writes what the port accepts now; on a dead host, drops the session. */
static void on_disconnect(void);

static void flush_out(void)
{
    while (out_used() > 0) {
        ssize_t w = write(S.port, S.out + S.out_start, out_used());
        if (w > 0) {
            S.out_start += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        on_disconnect();
        return;
    }
    S.out_start = S.out_end = 0;
}

/* ---- process table ------------------------------------------------------ */

static struct proc *find_proc(uint32_t stream)
{
    for (unsigned i = 0; i < MAX_PROCS; i++)
        if (S.procs[i].used && S.procs[i].stream == stream)
            return &S.procs[i];
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void free_proc(struct proc *p)
{
    if (p->kind == K_COMMAND)
        jobs_end(&p->job);
    if (p->kind == K_PUT) { /* fd_in is the put target's file: it closes it */
        p->fd_in = -1;
        files_put_abort(&p->put);
    }
    if (p->dir)
        closedir(p->dir);
    close_fd(&p->fd_in);
    close_fd(&p->fd_out[VX_STDOUT]);
    close_fd(&p->fd_out[VX_STDERR]);
    free(p->in_buf);
    memset(p, 0, sizeof *p);
    p->fd_in = p->fd_out[0] = p->fd_out[1] = p->fd_out[2] = -1;
    jobs_clear(&p->job);
    p->put.fd = p->put.dirfd = -1;
}

/* Kills the process group of every process of the session; they are reaped later. */
static void reset_session(void)
{
    /* First: a writer blocked on a frozen store cannot even die. */
    drives_thaw_if_frozen();
    for (unsigned i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &S.procs[i];
        if (!p->used)
            continue;
        if (p->kind == K_COMMAND && kill(-p->pid, SIGKILL) != 0)
            kill(p->pid, SIGKILL);
        free_proc(p); /* an unfinished PUT leaves nothing behind */
    }
}

static void on_disconnect(void)
{
    if (S.state == DISCONNECTED)
        return;
    reset_session();
    S.state = DISCONNECTED;
    S.in_len = 0;
    S.out_start = S.out_end = 0;
}

static void on_connect(void)
{
    S.state = WAIT_HELLO;
    S.in_len = 0;
    S.out_start = S.out_end = 0;
    send_hello();
}

/* Our pipe ends carry no other status flags, so this replaces none. */
static int set_nonblock(int fd)
{
    return fcntl(fd, F_SETFL, O_NONBLOCK);
}

/* A free slot for a new stream, or NULL after answering why not. */
static struct proc *new_stream(uint32_t stream)
{
    if (find_proc(stream)) {
        emit_error(stream, VX_E_BAD_STREAM, 0, "stream %u is in use", stream);
        return NULL;
    }
    for (unsigned i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &S.procs[i];
        if (!p->used) {
            free_proc(p);
            p->stream = stream;
            return p;
        }
    }
    emit_error(stream, VX_E_LIMIT, 0, "too many processes and transfers at once (at most %u)", MAX_PROCS);
    return NULL;
}

static void on_exec(const struct vx_frame *f)
{
    /* Static: the init is single-threaded and the child uses them only before exec. */
    static char arena[VX_MAX_PAYLOAD + VX_MAX_ARGS + VX_MAX_ENVS + 8];
    static char *argv[VX_MAX_ARGS + 1], *envp[VX_MAX_ENVS + 1];

    if (S.boot_error[0]) {
        emit_error(f->stream, VX_E_INTERNAL, 0, "the guest did not boot: %s", S.boot_error);
        return;
    }
    struct proc *p = new_stream(f->stream);
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
    int has_stdin = (e.flags & VX_EXEC_STDIN) != 0;
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (has_stdin && pipe2(in, O_CLOEXEC))) {
        int saved = errno;
        int fds[] = {out[0], out[1], err[0], err[1], in[0], in[1]};
        for (unsigned i = 0; i < 6; i++)
            close_fd(&fds[i]);
        emit_error(f->stream, VX_E_INTERNAL, saved, "cannot create pipes: %s", strerror(saved));
        jobs_end(&job);
        return;
    }
    fcntl(out[0], F_SETPIPE_SZ, STDOUT_PIPE_SIZE);
    /* The command's ends belong to its user, as pipes it made itself would:
     * reopening them (/dev/stdin, /proc/self/fd/N) checks the owner. */
    if (e.policy.uid || e.policy.gid) {
        int ends[] = {in[0], out[1], err[1]};
        for (unsigned i = 0; i < 3; i++)
            if (ends[i] >= 0 && fchown(ends[i], e.policy.uid, e.policy.gid) != 0)
                vx_log("cannot give a command its pipe: %s", strerror(errno));
    }
    /* A private /tmp holds no more than the command's memory limit (its
     * pages are charged to the command's cgroup either way). */
    char tmp_options[64] = "mode=1777";
    if (e.policy.memory_max)
        snprintf(tmp_options, sizeof tmp_options, "mode=1777,size=%llu", (unsigned long long)e.policy.memory_max);
    struct spawn_request req = {has_stdin ? in[0] : S.devnull, out[1], err[1], cwd, argv, envp, &e.policy,
                                job.dir_fd, tmp_options};
    struct spawn_failure failed;
    uint64_t start = now_ns();
    pid_t pid = spawn_command(&req, &failed);
    int saved = errno;
    jobs_spawned(&job);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&in[0]);
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
    set_nonblock(out[0]);
    set_nonblock(err[0]);
    p->used = 1;
    p->stream = f->stream;
    p->pid = pid;
    p->fd_in = -1;
    p->fd_out[0] = -1;
    p->fd_out[VX_STDOUT] = out[0];
    p->fd_out[VX_STDERR] = err[0];
    p->credit[VX_STDOUT] = p->credit[VX_STDERR] = S.host_window;
    p->has_stdin = has_stdin;
    if (has_stdin) {
        p->fd_in = in[1];
        set_nonblock(p->fd_in);
        p->in_credit = STDIN_WINDOW;
    }
    p->job = job;
    p->memory_limited = e.policy.memory_max != 0;
    p->start_ns = start;
    p->deadline_ns = e.timeout_ms ? start + (uint64_t)e.timeout_ms * 1000000ull : 0;
    emit_u32(VX_STARTED, 0, f->stream, (uint32_t)pid);
}

/* Returns stdin credit to the host once a good part of the window is free. */
static void maybe_grant_stdin(struct proc *p)
{
    if (p->in_ungranted >= STDIN_WINDOW / 2 || (p->in_ungranted > 0 && p->in_len == 0)) {
        p->in_credit += p->in_ungranted;
        emit_u32(VX_WINDOW, VX_STDIN, p->stream, p->in_ungranted);
        p->in_ungranted = 0;
    }
}

/* The host's EOF of a PUT, with every byte written: checks the count, puts the file in place. */
static void finish_put(struct proc *p)
{
    struct request_fail why;
    if (p->moved != p->expect)
        emit_error(p->stream, VX_E_FILE, EIO, "%llu bytes arrived for %s, %llu were announced; nothing written",
                   (unsigned long long)p->moved, p->put.name, (unsigned long long)p->expect);
    else if (files_put_commit(&p->put, &why) != 0)
        emit_error(p->stream, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, p->stream, NULL, 0);
    free_proc(p);
}

static struct proc *stream_proc(const struct vx_frame *f)
{
    struct proc *p = find_proc(f->stream);
    if (!p)
        emit_error(f->stream, VX_E_BAD_STREAM, 0, "no process on stream %u", f->stream);
    return p;
}

static void on_data(const struct vx_frame *f)
{
    struct proc *p = stream_proc(f);
    if (!p)
        return;
    if (f->sub != VX_STDIN || !p->has_stdin || p->in_eof) {
        emit_error(f->stream, VX_E_STATE, 0, "stdin of stream %u is not open for DATA", f->stream);
        return;
    }
    if (f->len > p->in_credit) {
        emit_error(f->stream, VX_E_FLOW, 0, "%u bytes of stdin exceed the %u bytes of credit",
                   f->len, p->in_credit);
        return;
    }
    p->in_credit -= f->len;
    if (p->kind == K_PUT && f->len > p->expect - p->moved) {
        emit_error(f->stream, VX_E_FILE, EFBIG, "more bytes than the %llu announced for %s; nothing written",
                   (unsigned long long)p->expect, p->put.name);
        free_proc(p);
        return;
    }
    p->moved += f->len;
    if (p->fd_in < 0) { /* the process closed its stdin: drop, but give the credit back */
        p->in_ungranted += f->len;
        maybe_grant_stdin(p);
        return;
    }
    if (!p->in_buf && !(p->in_buf = malloc(STDIN_WINDOW))) {
        emit_error(f->stream, VX_E_INTERNAL, ENOMEM, "out of memory for stdin");
        return;
    }
    memcpy(p->in_buf + p->in_len, f->payload, f->len);
    p->in_len += f->len;
}

static void on_eof(const struct vx_frame *f)
{
    struct proc *p = stream_proc(f);
    if (!p)
        return;
    if (f->sub != VX_STDIN || !p->has_stdin) {
        emit_error(f->stream, VX_E_STATE, 0, "EOF from the host applies to stdin only");
        return;
    }
    p->in_eof = 1;
    if (p->kind == K_PUT && p->in_len == 0)
        finish_put(p);
    else if (p->in_len == 0)
        close_fd(&p->fd_in);
}

static void on_window(const struct vx_frame *f)
{
    struct proc *p = stream_proc(f);
    if (!p)
        return;
    uint32_t v = vx_get_u32(f->payload);
    if (f->sub == VX_STDIN) {
        emit_error(f->stream, VX_E_STATE, 0, "the host grants credit for stdout and stderr only");
        return;
    }
    if (v > MAX_HOST_WINDOW - p->credit[f->sub]) {
        emit_error(f->stream, VX_E_FLOW, 0, "credit would exceed %u bytes", MAX_HOST_WINDOW);
        return;
    }
    p->credit[f->sub] += v;
}

static void on_signal(const struct vx_frame *f)
{
    struct proc *p = stream_proc(f);
    if (!p)
        return;
    if (p->kind != K_COMMAND) { /* a transfer or listing: SIGNAL cancels it, leaving nothing behind */
        emit_error(f->stream, VX_E_STATE, ECANCELED, "cancelled by the host");
        free_proc(p);
        return;
    }
    int sig = (int)vx_get_u32(f->payload);
    if (kill(-p->pid, sig) != 0 && kill(p->pid, sig) != 0 && errno != ESRCH)
        emit_error(f->stream, VX_E_INTERNAL, errno, "kill: %s", strerror(errno));
}

/* The Linux RNG ioctls (musl ships no kernel headers). */
#define VX_RNDADDENTROPY 0x40085203
#define VX_RNDRESEEDCRNG 0x5207

/* Value of `key=` in a HELLO info text, copied into out; 0 if absent. */
static int info_value(struct vx_str info, const char *key, char *out, size_t n)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < info.len;) {
        size_t end = i;
        while (end < info.len && info.p[end] != '\n')
            end++;
        if (end - i > klen && memcmp(info.p + i, key, klen) == 0 && info.p[i + klen] == '=') {
            size_t vlen = end - i - klen - 1;
            if (vlen >= n)
                return 0;
            memcpy(out, info.p + i + klen + 1, vlen);
            out[vlen] = 0;
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

/*
 * Takes the host's wall clock and fresh entropy from its HELLO. A guest
 * restored from a saved state wakes with the clock and RNG state of the
 * moment it was saved, and every guest restored from the same state would
 * otherwise draw the same "random" numbers.
 */
static void adopt_host_facts(struct vx_str info)
{
    char value[160];
    if (info_value(info, "time_ns", value, sizeof value)) {
        char *end;
        unsigned long long ns = strtoull(value, &end, 10);
        struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
        if (*end == 0 && ns > 0 && clock_settime(CLOCK_REALTIME, &ts) != 0)
            vx_log("cannot set the clock: %s", strerror(errno));
    }
    if (info_value(info, "seed", value, sizeof value) && strlen(value) == 64) {
        struct {
            int entropy_count, buf_size;
            uint8_t buf[32];
        } pool = {256, 32, {0}};
        for (int i = 0; i < 32; i++) {
            unsigned byte;
            if (sscanf(value + 2 * i, "%2x", &byte) != 1)
                return;
            pool.buf[i] = (uint8_t)byte;
        }
        int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ioctl(fd, VX_RNDADDENTROPY, &pool) != 0 || ioctl(fd, VX_RNDRESEEDCRNG) != 0)
            vx_log("cannot reseed the RNG: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
    }
}

static void on_hello(const struct vx_frame *f)
{
    struct vx_hello h;
    vx_hello_decode(f, &h); /* validated by vx_frame_check */
    if (h.major != VX_MAJOR) {
        emit_error(0, VX_E_VERSION, 0,
                   "the guest init speaks protocol %d.%d and cannot serve a host speaking %u.%u; "
                   "rebuild the guest images to match the host",
                   VX_MAJOR, VX_MINOR, h.major, h.minor);
        S.state = WAIT_HELLO;
        return;
    }
    if (h.window == 0) {
        emit_error(0, VX_E_MALFORMED, 0, "HELLO window must not be 0");
        return;
    }
    reset_session();
    adopt_host_facts(h.info);
    S.host_window = h.window > MAX_HOST_WINDOW ? MAX_HOST_WINDOW : h.window;
    S.state = READY;
    send_hello();
}

static unsigned running_procs(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < MAX_PROCS; i++)
        n += S.procs[i].used ? 1u : 0u;
    return n;
}

/* A decoded string (already checked: no NUL, bounded) as a C string. */
static void c_string(char *dst, size_t n, struct vx_str s)
{
    size_t l = s.len < n - 1 ? s.len : n - 1;
    memcpy(dst, s.p, l);
    dst[l] = 0;
}

/* MOUNT, UNMOUNT, LAYERS, STORE, SYNC, FREEZE, THAW: answered with DONE or ERROR on the request's stream. */
static void on_drive(const struct vx_frame *f)
{
    char err[512] = "";
    int rc;
    if (f->type == VX_LAYERS) {
        struct vx_layers l;
        vx_layers_decode(f, &l);
        char names[VX_MAX_LAYERS][VX_MAX_SERIAL + 1];
        const char *serials[VX_MAX_LAYERS];
        size_t pos = 0;
        for (unsigned i = 0; i < l.count; i++) {
            struct vx_str s;
            vx_str_next(l.serials, l.serials_len, &pos, &s);
            c_string(names[i], sizeof names[i], s);
            serials[i] = names[i];
        }
        rc = drives_set_layers(serials, l.count, running_procs(), err, sizeof err);
    } else if (f->type == VX_SYNC) {
        rc = drives_sync(err, sizeof err);
    } else if (f->type == VX_FREEZE || f->type == VX_THAW) {
        rc = drives_freeze(f->type == VX_FREEZE, err, sizeof err);
    } else if (f->type == VX_STORE) {
        struct vx_mount m;
        char serial[VX_MAX_SERIAL + 1];
        vx_unmount_decode(f, &m);
        c_string(serial, sizeof serial, m.serial);
        rc = drives_use_store(serial, running_procs(), err, sizeof err);
    } else {
        struct vx_mount m;
        char serial[VX_MAX_SERIAL + 1], target[256];
        if (f->type == VX_MOUNT)
            vx_mount_decode(f, &m);
        else
            vx_unmount_decode(f, &m);
        c_string(serial, sizeof serial, m.serial);
        c_string(target, sizeof target, m.target);
        rc = f->type == VX_MOUNT ? drives_mount(serial, target, err, sizeof err)
                                 : drives_unmount(serial, err, sizeof err);
    }
    if (rc)
        emit_error(f->stream, rc, 0, "%s", err);
    else
        emit(VX_DONE, 0, f->stream, NULL, 0);
}

/* The largest ENTRY or PROCESS payload. */
#define LISTING_MAX (PROCS_ENTRY_MAX > FILES_ENTRY_MAX ? PROCS_ENTRY_MAX : FILES_ENTRY_MAX)

/* PUT, GET, LIST: a stream that lives until the file or listing is through. */
static void start_transfer(const struct vx_frame *f, const struct vx_file_req *r, const char *path)
{
    static uint8_t entry[FILES_ENTRY_MAX];
    struct request_fail why;
    uint32_t len;
    struct proc *p = new_stream(f->stream);
    if (!p)
        return;
    if (f->type == VX_PUT) {
        if (files_put_begin(r, path, &p->put, &why) != 0) {
            emit_error(f->stream, why.code, why.err, "%s", why.msg);
            return;
        }
        p->kind = K_PUT;
        p->fd_in = p->put.fd;
        p->has_stdin = 1;
        p->in_credit = STDIN_WINDOW;
        emit_u32(VX_STARTED, 0, f->stream, 0);
    } else if (f->type == VX_GET) {
        int fd = files_open_get(path, r->size, entry, &len, &why);
        if (fd < 0) {
            emit_error(f->stream, why.code, why.err, "%s", why.msg);
            return;
        }
        p->kind = K_GET;
        p->fd_out[VX_STDOUT] = fd;
        p->credit[VX_STDOUT] = S.host_window;
        emit(VX_ENTRY, 0, f->stream, entry, len);
    } else {
        if (!(p->dir = files_open_dir(path, &why))) {
            emit_error(f->stream, why.code, why.err, "%s", why.msg);
            return;
        }
        p->kind = K_LIST;
    }
    p->used = 1;
    p->expect = r->size;
}

/* PUT, GET, STAT, LIST, MKDIR, DELETE, MOVE: paths resolved inside the command root (files.c). */
static void on_file(const struct vx_frame *f)
{
    static uint8_t entry[FILES_ENTRY_MAX];
    static char path[VX_MAX_PATH + 1], to[VX_MAX_PATH + 1];
    struct vx_file_req r;
    struct request_fail why;
    uint32_t len = 0;
    int rc;
    if (S.boot_error[0]) {
        emit_error(f->stream, VX_E_INTERNAL, 0, "the guest did not boot: %s", S.boot_error);
        return;
    }
    vx_file_decode(f, &r); /* validated by vx_frame_check */
    files_path(r.path, path);
    switch (f->type) {
    case VX_STAT:
        rc = files_stat(path, (r.flags & VX_F_NOFOLLOW) != 0, entry, &len, &why);
        if (rc == 0)
            emit(VX_ENTRY, 0, f->stream, entry, len);
        break;
    case VX_MKDIR: rc = files_mkdir(&r, path, &why); break;
    case VX_DELETE: rc = files_delete(&r, path, &why); break;
    case VX_MOVE:
        files_path(r.to, to);
        rc = files_move(&r, path, to, &why);
        break;
    default:
        start_transfer(f, &r, path);
        return;
    }
    if (rc)
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, f->stream, NULL, 0);
}

static void on_ps(const struct vx_frame *f)
{
    struct request_fail why;
    struct proc *p = new_stream(f->stream);
    if (!p)
        return;
    if (!(p->dir = procs_open(&why))) {
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
        return;
    }
    p->kind = K_PS;
    p->used = 1;
}

static void on_kill(const struct vx_frame *f)
{
    struct vx_kill k;
    struct request_fail why;
    vx_kill_decode(f, &k);
    if (procs_kill(&k, &why) != 0)
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, f->stream, NULL, 0);
}

/* The stream of the command whose process group is `pgid`, or 0. */
static uint32_t stream_of_group(uint32_t pgid)
{
    for (unsigned i = 0; i < MAX_PROCS; i++)
        if (S.procs[i].used && S.procs[i].kind == K_COMMAND && (uint32_t)S.procs[i].pid == pgid)
            return S.procs[i].stream;
    return 0;
}

/* Streams LIST and PS entries while the output buffer has room; the rest waits for the host to read. */
static void pump_listings(void)
{
    static uint8_t entry[LISTING_MAX];
    for (unsigned i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &S.procs[i];
        while (p->used && (p->kind == K_LIST || p->kind == K_PS) && out_used() < OUT_DATA_LIMIT) {
            struct request_fail why;
            uint32_t len = 0, pgid = 0;
            int rc = p->kind == K_LIST ? files_next_entry(p->dir, entry, &len, &why)
                                       : procs_next(p->dir, entry, &len, &pgid);
            if (rc > 0 && p->expect && p->moved == p->expect) {
                why.code = VX_E_LIMIT;
                why.err = E2BIG;
                snprintf(why.msg, sizeof why.msg, "the directory has more than the %llu entries asked for",
                         (unsigned long long)p->expect);
                rc = -1;
            }
            if (rc < 0) {
                emit_error(p->stream, why.code, why.err, "%s", why.msg);
                free_proc(p);
            } else if (rc == 0) {
                emit(VX_DONE, 0, p->stream, NULL, 0);
                free_proc(p);
            } else {
                if (p->kind == K_PS)
                    vx_put_u32(entry + 16, stream_of_group(pgid));
                emit(p->kind == K_LIST ? VX_ENTRY : VX_PROCESS, 0, p->stream, entry, len);
                p->moved++;
            }
        }
    }
}

static void on_shutdown(void)
{
    reset_session();
    sync();
    emit(VX_BYE, 0, 0, NULL, 0);
    for (int i = 0; i < 100 && out_used() > 0 && S.state != DISCONNECTED; i++) {
        struct pollfd pp = {S.port, POLLOUT, 0};
        poll(&pp, 1, 10);
        flush_out();
    }
    boot_poweroff();
}

static void handle_frame(const struct vx_frame *f)
{
    int rc = vx_frame_check(f);
    if (rc) {
        emit_error(f->stream, rc, 0, "%s frame (type 0x%02x) refused: %s", vx_type_name(f->type),
                   f->type, vx_err_name(rc));
        return;
    }
    if (f->type == VX_HELLO) {
        on_hello(f);
        return;
    }
    if (S.state != READY) {
        emit_error(f->stream, VX_E_STATE, 0, "%s before HELLO", vx_type_name(f->type));
        return;
    }
    switch (f->type) {
    case VX_PING: emit(VX_PONG, 0, 0, f->payload, f->len); break;
    case VX_SHUTDOWN: on_shutdown(); break;
    case VX_EXEC: on_exec(f); break;
    case VX_DATA: on_data(f); break;
    case VX_EOF: on_eof(f); break;
    case VX_WINDOW: on_window(f); break;
    case VX_SIGNAL: on_signal(f); break;
    case VX_MOUNT: case VX_UNMOUNT: case VX_LAYERS: case VX_STORE: case VX_SYNC:
    case VX_FREEZE: case VX_THAW: on_drive(f); break;
    case VX_PUT: case VX_GET: case VX_STAT: case VX_LIST: case VX_MKDIR: case VX_DELETE: case VX_MOVE:
        on_file(f);
        break;
    case VX_PS: on_ps(f); break;
    case VX_KILL: on_kill(f); break;
    case VX_ERROR: vx_log("host reported an error on stream %u", f->stream); break;
    default:
        emit_error(f->stream, VX_E_STATE, 0, "%s is sent by the guest, not the host",
                   vx_type_name(f->type));
    }
}

/* After a fatal framing error: position of the next host HELLO in S.in, or -1. */
static long find_hello(void)
{
    for (size_t i = 0; i + VX_HEADER_SIZE + 4 <= S.in_len; i++) {
        const uint8_t *h = S.in + i;
        uint32_t len = vx_get_u32(h);
        if (h[4] == VX_HELLO && h[5] == 0 && vx_get_u16(h + 6) == 0 && vx_get_u32(h + 8) == 0 &&
            len >= VX_HELLO_FIXED && len <= VX_HELLO_FIXED + VX_MAX_INFO &&
            memcmp(h + VX_HEADER_SIZE, "VMXC", 4) == 0)
            return (long)i;
    }
    return -1;
}

static void process_input(void)
{
    size_t off = 0;
    while (S.state != DISCONNECTED && out_room() >= REPLY_ROOM) {
        if (S.state == RESYNC) {
            long at = find_hello();
            if (at < 0) { /* keep a tail that may start a HELLO header */
                off = S.in_len > VX_HEADER_SIZE + 3 ? S.in_len - (VX_HEADER_SIZE + 3) : 0;
                break;
            }
            memmove(S.in, S.in + at, S.in_len - (size_t)at);
            S.in_len -= (size_t)at;
            S.state = WAIT_HELLO;
        }
        struct vx_frame f;
        long n = vx_frame_parse(S.in + off, S.in_len - off, &f);
        if (n == 0)
            break;
        if (n < 0) {
            emit_error(0, (int)-n, 0, "frame header refused (%s); input discarded until the next HELLO",
                       vx_err_name((int)-n));
            reset_session();
            S.state = RESYNC;
            memmove(S.in, S.in + off, S.in_len - off);
            S.in_len -= off;
            off = 0;
            continue;
        }
        off += (size_t)n;
        handle_frame(&f);
    }
    if (off) {
        memmove(S.in, S.in + off, S.in_len - off);
        S.in_len -= off;
    }
}

static void read_port(void)
{
    ssize_t r = read(S.port, S.in + S.in_len, IN_CAP - S.in_len);
    if (r > 0)
        S.in_len += (size_t)r;
    else if (r == 0 || (errno != EAGAIN && errno != EINTR))
        on_disconnect();
}

/* One read of a process's output into a DATA frame; returns 1 when the
 * read filled the frame (more may be waiting), else 0. */
static int pump_output_once(struct proc *p, int sub)
{
    uint32_t want = p->credit[sub] < VX_MAX_PAYLOAD ? p->credit[sub] : VX_MAX_PAYLOAD;
    if (!want || out_used() >= OUT_DATA_LIMIT)
        return 0;
    uint8_t *d = out_reserve(VX_HEADER_SIZE + want);
    if (!d)
        return 0;
    ssize_t r = read(p->fd_out[sub], d + VX_HEADER_SIZE, want);
    if (r > 0 && p->kind == K_GET && p->expect && p->moved + (uint64_t)r > p->expect) {
        emit_error(p->stream, VX_E_LIMIT, EFBIG, "the file grew past the %llu bytes accepted while it was read",
                   (unsigned long long)p->expect);
        free_proc(p);
        return 0;
    }
    if (r > 0) {
        vx_header_write(d, VX_DATA, (uint8_t)sub, p->stream, (uint32_t)r);
        S.out_end += VX_HEADER_SIZE + (size_t)r;
        p->credit[sub] -= (uint32_t)r;
        p->moved += (uint64_t)r;
        return (uint32_t)r == want;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r < 0 && p->kind == K_GET) { /* EIO: a short file must not pass for a whole one */
        emit_error(p->stream, VX_E_FILE, errno, "cannot read the file: %s", strerror(errno));
        free_proc(p);
        return 0;
    }
    close_fd(&p->fd_out[sub]);
    emit(VX_EOF, (uint8_t)sub, p->stream, NULL, 0);
    if (p->kind == K_GET) {
        emit(VX_DONE, 0, p->stream, NULL, 0);
        free_proc(p);
    }
    return 0;
}

/* Reads a process's output while it has credit, the output buffer has room
 * and the pipe has more: fewer trips through poll() per byte streamed. */
static void pump_output(struct proc *p, int sub)
{
    for (int frames = 0; frames < 8 && pump_output_once(p, sub); frames++)
        if (!p->used || p->fd_out[sub] < 0)
            break;
}

static void pump_input(struct proc *p)
{
    ssize_t w = write(p->fd_in, p->in_buf, p->in_len);
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (w < 0 && p->kind == K_PUT) { /* ENOSPC, EIO, EDQUOT: the file is dropped whole */
        emit_error(p->stream, VX_E_FILE, errno, "cannot write %s: %s; nothing written", p->put.name, strerror(errno));
        free_proc(p);
        return;
    }
    if (w < 0) { /* EPIPE: the process stopped reading; drop what is left */
        close_fd(&p->fd_in);
        w = (ssize_t)p->in_len;
    }
    memmove(p->in_buf, p->in_buf + w, p->in_len - (size_t)w);
    p->in_len -= (uint32_t)w;
    p->in_ungranted += (uint32_t)w;
    maybe_grant_stdin(p);
    if (p->in_len == 0 && p->in_eof && p->kind == K_PUT)
        finish_put(p);
    else if (p->in_len == 0 && p->in_eof)
        close_fd(&p->fd_in);
}

static void reap(void)
{
    struct signalfd_siginfo si;
    while (read(S.sigfd, &si, sizeof si) > 0) {
    }
    int status;
    struct rusage ru;
    pid_t pid;
    while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
        jobs_reaped();
        for (unsigned i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &S.procs[i];
            if (p->used && p->pid == pid && !p->exited) {
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

/* Sends EXIT for processes that have ended and whose output is drained. */
static void finish_procs(void)
{
    for (unsigned i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &S.procs[i];
        if (!p->used || !p->exited || p->fd_out[VX_STDOUT] >= 0 || p->fd_out[VX_STDERR] >= 0)
            continue;
        if (out_room() < VX_HEADER_SIZE + VX_EXIT_SIZE)
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
        emit(VX_EXIT, 0, p->stream, x, VX_EXIT_SIZE);
        free_proc(p);
    }
}

/* How often commands with a memory limit are checked for thrashing. */
#define MEMORY_WATCH_NS 500000000ull

/* Kills timed-out commands and commands stuck at their memory limit;
 * returns the poll timeout to the next deadline or check. */
static int check_deadlines(void)
{
    uint64_t now = now_ns(), next = 0;
    for (unsigned i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &S.procs[i];
        if (p->used && p->memory_limited && !p->exited && !p->memory_killed) {
            if (jobs_memory_stalled(&p->job)) {
                vx_log("stream %u: stuck at its memory limit; killed", p->stream);
                p->memory_killed = 1;
                jobs_kill(&p->job);
            } else if (!next || now + MEMORY_WATCH_NS < next) {
                next = now + MEMORY_WATCH_NS;
            }
        }
        if (!p->used || !p->deadline_ns)
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

void serve_forever(const char *port_path, const char *boot_error, long init_ms, long ready_ms)
{
    static struct pollfd pfd[2 + 3 * MAX_PROCS];
    static struct proc *owner[2 + 3 * MAX_PROCS];
    static int which[2 + 3 * MAX_PROCS];

    spawn_setup();
    S.boot_error = boot_error;
    S.init_ms = init_ms;
    S.ready_ms = ready_ms;
    S.out = malloc(OUT_CAP);
    S.devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (unsigned i = 0; i < MAX_PROCS; i++)
        free_proc(&S.procs[i]);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    S.sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    S.port = open(port_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (!S.out || S.sigfd < 0 || S.port < 0) {
        vx_log("cannot start serving %s: %s", port_path, strerror(errno));
        boot_poweroff();
    }
    S.state = DISCONNECTED;

    for (;;) {
        if (S.state == DISCONNECTED) {
            struct pollfd pp = {S.port, POLLIN, 0};
            if (poll(&pp, 1, 0) >= 0 && !(pp.revents & (POLLHUP | POLLERR)))
                on_connect();
        }
        process_input();
        finish_procs();
        pump_listings();
        if (S.state != DISCONNECTED)
            flush_out();

        int timeout = check_deadlines();
        if (S.state == DISCONNECTED && (timeout < 0 || timeout > 20))
            timeout = 20; /* a disconnected port always polls HUP: look again soon */
        unsigned n = 0;
        pfd[n] = (struct pollfd){S.state == DISCONNECTED ? -1 : S.port,
                                 (short)((S.in_len < IN_CAP ? POLLIN : 0) | (out_used() ? POLLOUT : 0)), 0};
        owner[n++] = NULL;
        pfd[n] = (struct pollfd){S.sigfd, POLLIN, 0};
        owner[n++] = NULL;
        for (unsigned i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &S.procs[i];
            if (!p->used)
                continue;
            for (int sub = VX_STDOUT; sub <= VX_STDERR; sub++) {
                if (p->fd_out[sub] < 0 || !p->credit[sub] || out_used() >= OUT_DATA_LIMIT)
                    continue;
                pfd[n] = (struct pollfd){p->fd_out[sub], POLLIN, 0};
                owner[n] = p;
                which[n++] = sub;
            }
            if (p->fd_in >= 0 && p->in_len) {
                pfd[n] = (struct pollfd){p->fd_in, POLLOUT, 0};
                owner[n] = p;
                which[n++] = VX_STDIN;
            }
        }
        /* Deferred work (cgroups of ended commands, cgroups for the next
         * ones) is done only while nothing else is ready, a piece at a time. */
        int ready = poll(pfd, n, 0);
        while (ready == 0 && jobs_idle())
            ready = poll(pfd, n, 0);
        if (ready == 0)
            ready = poll(pfd, n, timeout);
        if (ready < 0) {
            if (errno != EINTR)
                vx_log("poll: %s", strerror(errno));
            continue;
        }
        if (pfd[1].revents)
            reap();
        for (unsigned i = 2; i < n; i++) {
            struct proc *p = owner[i];
            if (!pfd[i].revents || !p->used)
                continue;
            if (which[i] == VX_STDIN)
                pump_input(p);
            else if (p->fd_out[which[i]] >= 0)
                pump_output(p, which[i]);
        }
        if (S.state != DISCONNECTED) {
            if (pfd[0].revents & POLLIN)
                read_port();
            else if (pfd[0].revents & (POLLHUP | POLLERR))
                on_disconnect();
        }
    }
}
