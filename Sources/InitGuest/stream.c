/* stream.c - see stream.h. */
#define _GNU_SOURCE
#include "stream.h"

#include "boot.h"
#include "transfer.h"
#include "wire.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

struct stream streams[MAX_STREAMS];
static uint32_t host_window;

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void streams_init(void)
{
    for (unsigned i = 0; i < MAX_STREAMS; i++)
        stream_free(&streams[i]);
}

void streams_set_host_window(uint32_t window)
{
    host_window = window > MAX_HOST_WINDOW ? MAX_HOST_WINDOW : window;
}

uint32_t streams_host_window(void)
{
    return host_window;
}

unsigned streams_count(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < MAX_STREAMS; i++)
        n += streams[i].used ? 1u : 0u;
    return n;
}

struct stream *stream_find(uint32_t id)
{
    for (unsigned i = 0; i < MAX_STREAMS; i++)
        if (streams[i].used && !streams[i].orphan && streams[i].id == id)
            return &streams[i];
    return NULL;
}

struct stream *stream_new(uint32_t id)
{
    if (stream_find(id)) {
        emit_error(id, VX_E_BAD_STREAM, 0, "stream %u is in use", id);
        return NULL;
    }
    for (unsigned i = 0; i < MAX_STREAMS; i++) {
        struct stream *s = &streams[i];
        if (!s->used) {
            stream_free(s);
            s->id = id;
            return s;
        }
    }
    emit_error(id, VX_E_LIMIT, 0, "too many processes and transfers at once (at most %u)", MAX_STREAMS);
    return NULL;
}

struct stream *stream_of(const struct vx_frame *f)
{
    struct stream *s = stream_find(f->stream);
    if (!s)
        emit_error(f->stream, VX_E_BAD_STREAM, 0, "no process on stream %u", f->stream);
    return s;
}

void stream_free(struct stream *s)
{
    if (s->kind == K_COMMAND)
        jobs_end(&s->job);
    if (s->kind == K_PUT) { /* fd_in is the put target's file: it closes it */
        s->fd_in = -1;
        files_put_abort(&s->put);
    }
    if (s->dir)
        closedir(s->dir);
    close_fd(&s->fd_in);
    close_fd(&s->pty_fd);
    close_fd(&s->fd_out[VX_STDOUT]);
    close_fd(&s->fd_out[VX_STDERR]);
    free(s->in_buf);
    memset(s, 0, sizeof *s);
    s->fd_in = s->pty_fd = s->fd_out[0] = s->fd_out[1] = s->fd_out[2] = -1;
    jobs_clear(&s->job);
    s->put.fd = s->put.dirfd = -1;
}

void streams_end_all(void)
{
    for (unsigned i = 0; i < MAX_STREAMS; i++) {
        struct stream *s = &streams[i];
        if (!s->used || s->orphan)
            continue;
        if (s->kind == K_COMMAND && s->service && !s->exited) {
            /* A service (the warm interpreter) outlives the session that started
             * it: its stream goes, its process, cgroup and limits stay. What it
             * writes from now on meets closed pipes. */
            close_fd(&s->fd_in);
            close_fd(&s->pty_fd);
            close_fd(&s->fd_out[VX_STDOUT]);
            close_fd(&s->fd_out[VX_STDERR]);
            free(s->in_buf);
            s->in_buf = NULL;
            s->in_len = 0;
            s->has_stdin = 0;
            s->orphan = 1;
            continue;
        }
        if (s->kind == K_COMMAND && kill(-s->pid, SIGKILL) != 0)
            kill(s->pid, SIGKILL);
        stream_free(s); /* an unfinished PUT leaves nothing behind */
    }
}

/* Returns stdin credit to the host once a good part of the window is free. */
static void maybe_grant_stdin(struct stream *s)
{
    if (s->in_ungranted >= STDIN_WINDOW / 2 || (s->in_ungranted > 0 && s->in_len == 0)) {
        s->in_credit += s->in_ungranted;
        emit_u32(VX_WINDOW, VX_STDIN, s->id, s->in_ungranted);
        s->in_ungranted = 0;
    }
}

void stream_on_data(const struct vx_frame *f)
{
    struct stream *s = stream_of(f);
    if (!s)
        return;
    if (f->sub != VX_STDIN || !s->has_stdin || s->in_eof) {
        emit_error(f->stream, VX_E_STATE, 0, "stdin of stream %u is not open for DATA", f->stream);
        return;
    }
    if (f->len > s->in_credit) {
        emit_error(f->stream, VX_E_FLOW, 0, "%u bytes of stdin exceed the %u bytes of credit", f->len, s->in_credit);
        return;
    }
    s->in_credit -= f->len;
    if (s->kind == K_PUT && f->len > s->expect - s->moved) {
        emit_error(f->stream, VX_E_FILE, EFBIG, "more bytes than the %llu announced for %s; nothing written",
                   (unsigned long long)s->expect, s->put.name);
        stream_free(s);
        return;
    }
    s->moved += f->len;
    if (s->fd_in < 0) { /* the process closed its stdin: drop, but give the credit back */
        s->in_ungranted += f->len;
        maybe_grant_stdin(s);
        return;
    }
    if (!s->in_buf && !(s->in_buf = malloc(STDIN_WINDOW))) {
        emit_error(f->stream, VX_E_INTERNAL, ENOMEM, "out of memory for stdin");
        return;
    }
    memcpy(s->in_buf + s->in_len, f->payload, f->len);
    s->in_len += f->len;
}

/*
 * The host ended stdin. A pipe is closed; a terminal stays open (it is the
 * command's output too), so the end is typed instead: the terminal's EOF
 * character (Ctrl-D), as a user at a terminal ends the input. In canonical
 * mode the line discipline makes it end a read at the start of a line; a
 * program reading raw keys (readline, an editor) sees the key and decides.
 */
static void end_input(struct stream *s)
{
    struct termios t;
    if (s->pty_fd >= 0 && s->fd_in >= 0 && tcgetattr(s->pty_fd, &t) == 0) {
        cc_t c = t.c_cc[VEOF];
        if (write(s->fd_in, &c, 1) != 1)
            vx_log("stream %u: cannot end the terminal's input: %s", s->id, strerror(errno));
    }
    close_fd(&s->fd_in);
}

void stream_on_eof(const struct vx_frame *f)
{
    struct stream *s = stream_of(f);
    if (!s)
        return;
    if (f->sub != VX_STDIN || !s->has_stdin) {
        emit_error(f->stream, VX_E_STATE, 0, "EOF from the host applies to stdin only");
        return;
    }
    s->in_eof = 1;
    if (s->kind == K_PUT && s->in_len == 0)
        transfer_finish_put(s);
    else if (s->in_len == 0)
        end_input(s);
}

void stream_on_window(const struct vx_frame *f)
{
    struct stream *s = stream_of(f);
    if (!s)
        return;
    uint32_t v = vx_get_u32(f->payload);
    if (f->sub == VX_STDIN) {
        emit_error(f->stream, VX_E_STATE, 0, "the host grants credit for stdout and stderr only");
        return;
    }
    if (v > MAX_HOST_WINDOW - s->credit[f->sub]) {
        emit_error(f->stream, VX_E_FLOW, 0, "credit would exceed %u bytes", MAX_HOST_WINDOW);
        return;
    }
    s->credit[f->sub] += v;
}

void stream_on_signal(const struct vx_frame *f)
{
    struct stream *s = stream_of(f);
    if (!s)
        return;
    if (s->kind != K_COMMAND) { /* a transfer or listing: SIGNAL cancels it, leaving nothing behind */
        emit_error(f->stream, VX_E_STATE, ECANCELED, "cancelled by the host");
        stream_free(s);
        return;
    }
    int sig = (int)vx_get_u32(f->payload);
    if (kill(-s->pid, sig) != 0 && kill(s->pid, sig) != 0 && errno != ESRCH)
        emit_error(f->stream, VX_E_INTERNAL, errno, "kill: %s", strerror(errno));
}

void stream_on_resize(const struct vx_frame *f)
{
    struct stream *s = stream_of(f);
    if (!s)
        return;
    struct vx_resize r;
    vx_resize_decode(f, &r); /* checked by vx_frame_check */
    if (s->pty_fd < 0) {
        emit_error(f->stream, VX_E_STATE, 0, "stream %u has no terminal to resize", f->stream);
        return;
    }
    struct winsize ws = {.ws_row = r.rows, .ws_col = r.cols};
    if (ioctl(s->pty_fd, TIOCSWINSZ, &ws) != 0)
        emit_error(f->stream, VX_E_INTERNAL, errno, "cannot resize the terminal: %s", strerror(errno));
}

void stream_pump_input(struct stream *s)
{
    ssize_t w = write(s->fd_in, s->in_buf, s->in_len);
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (w < 0 && s->kind == K_PUT) { /* ENOSPC, EIO, EDQUOT: the file is dropped whole */
        emit_error(s->id, VX_E_FILE, errno, "cannot write %s: %s; nothing written", s->put.name, strerror(errno));
        stream_free(s);
        return;
    }
    if (w < 0) { /* EPIPE: the process stopped reading; drop what is left */
        close_fd(&s->fd_in);
        w = (ssize_t)s->in_len;
    }
    memmove(s->in_buf, s->in_buf + w, s->in_len - (size_t)w);
    s->in_len -= (uint32_t)w;
    s->in_ungranted += (uint32_t)w;
    maybe_grant_stdin(s);
    if (s->in_len == 0 && s->in_eof && s->kind == K_PUT)
        transfer_finish_put(s);
    else if (s->in_len == 0 && s->in_eof)
        end_input(s);
}

/* One read of a stream's output into a DATA frame; returns 1 when the
 * read filled the frame (more may be waiting), else 0. */
static int pump_output_once(struct stream *s, int sub)
{
    uint32_t want = s->credit[sub] < VX_MAX_PAYLOAD ? s->credit[sub] : VX_MAX_PAYLOAD;
    if (!want || wire_used() >= WIRE_DATA_LIMIT)
        return 0;
    uint8_t *d = wire_reserve(VX_HEADER_SIZE + want);
    if (!d)
        return 0;
    ssize_t r = read(s->fd_out[sub], d + VX_HEADER_SIZE, want);
    if (r > 0 && s->kind == K_GET && s->expect && s->moved + (uint64_t)r > s->expect) {
        emit_error(s->id, VX_E_LIMIT, EFBIG, "the file grew past the %llu bytes accepted while it was read",
                   (unsigned long long)s->expect);
        stream_free(s);
        return 0;
    }
    if (r > 0) {
        vx_header_write(d, VX_DATA, (uint8_t)sub, s->id, (uint32_t)r);
        wire_commit(VX_HEADER_SIZE + (size_t)r);
        s->credit[sub] -= (uint32_t)r;
        s->moved += (uint64_t)r;
        return (uint32_t)r == want;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r < 0 && s->kind == K_GET) { /* EIO: a short file must not pass for a whole one */
        emit_error(s->id, VX_E_FILE, errno, "cannot read the file: %s", strerror(errno));
        stream_free(s);
        return 0;
    }
    close_fd(&s->fd_out[sub]);
    emit(VX_EOF, (uint8_t)sub, s->id, NULL, 0);
    if (s->kind == K_GET) {
        emit(VX_DONE, 0, s->id, NULL, 0);
        stream_free(s);
    }
    return 0;
}

/* Reads up to eight frames per wake-up: fewer trips through poll() per byte streamed. */
void stream_pump_output(struct stream *s, int sub)
{
    for (int frames = 0; frames < 8 && pump_output_once(s, sub); frames++)
        if (!s->used || s->fd_out[sub] < 0)
            break;
}
