/*
 * serve.c - PID 1's event loop over the control port: the session (HELLO,
 * resynchronising after garbage), the dispatch of host frames, and the loop
 * itself, which reads as its steps in serve_forever.
 *
 * One poll() loop, no threads. Memory is bounded up front: one input buffer
 * of two maximal frames, one output buffer (wire.c), a stdin buffer of one
 * window per stream (stream.c). Commands are exec.c's, file transfers
 * transfer.c's, listings listing.c's, drives drives.c's. See docs/PROTOCOL.md.
 */
#define _GNU_SOURCE
#include "serve.h"

#include "boot.h"
#include "drives.h"
#include "folders.h"
#include "exec.h"
#include "jobs.h"
#include "listing.h"
#include "stream.h"
#include "transfer.h"
#include "userland.h"
#include "vx_proto.h"
#include "wire.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define IN_CAP (2 * (VX_HEADER_SIZE + VX_MAX_PAYLOAD))
/* How long a drive request waits for its hot-plugged disk to appear. */
#define DRIVE_WAIT_NS (10000ull * 1000000ull)
#define DRIVE_RETRY_MS 10

enum session { DISCONNECTED, WAIT_HELLO, READY, RESYNC };

static struct {
    int sigfd;
    enum session state;
    uint8_t in[IN_CAP];
    size_t in_len;
    const char *boot_error;
    long init_ms, ready_ms;
} S;

/*
 * A drive request whose disk has not appeared yet (a hot-plugged disk takes
 * a moment to be scanned): kept here and tried again on each turn of the
 * loop until the disk is there or DRIVE_WAIT_NS pass, while every stream
 * goes on being served. One at a time: the host waits for each answer.
 */
static struct {
    int waiting;
    struct vx_frame f;
    uint8_t payload[VX_MAX_PAYLOAD];
    uint64_t deadline_ns;
} pending_drive;

/* ---- the session ---------------------------------------------------------- */

static void send_hello(void)
{
    uint8_t p[VX_HELLO_FIXED + 256];
    memcpy(p, "VMXC", 4);
    vx_put_u16(p + 4, VX_MAJOR);
    vx_put_u16(p + 6, VX_MINOR);
    vx_put_u32(p + 8, VX_MAX_PAYLOAD);
    vx_put_u32(p + 12, STDIN_WINDOW);
    vx_put_u32(p + 16, MAX_STREAMS);
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

/* Ends what the session started: its commands are killed, its transfers dropped. */
static void reset_session(void)
{
    /* First: a writer blocked on a frozen store cannot even die. */
    drives_thaw_if_frozen();
    streams_end_all();
    pending_drive.waiting = 0;
}

static void on_disconnect(void)
{
    if (S.state == DISCONNECTED)
        return;
    reset_session();
    S.state = DISCONNECTED;
    S.in_len = 0;
    wire_disconnect();
}

static void on_connect(void)
{
    S.state = WAIT_HELLO;
    S.in_len = 0;
    wire_connect();
    send_hello();
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

/* 1-63 letters, digits, '-' and '.', not starting with '-' or '.'. */
static int valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || s[0] == '-' || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.'))
            return 0;
    return 1;
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
    /* The sandbox's host name (since 1.7), on every session: a state saved
     * for one sandbox must not carry its name into another's. */
    const char *hostname = "vmexec";
    if (info_value(info, "hostname", value, sizeof value) && valid_hostname(value))
        hostname = value;
    char err[160];
    if (userland_hostname(hostname, err, sizeof err) != 0)
        vx_log("cannot name the host %s: %s", hostname, err);
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
    streams_set_host_window(h.window);
    S.state = READY;
    send_hello();
}

static void on_shutdown(void)
{
    reset_session();
    sync();
    emit(VX_BYE, 0, 0, NULL, 0);
    for (int i = 0; i < 100 && wire_used() > 0 && S.state != DISCONNECTED; i++) {
        struct pollfd pp = {wire_port(), POLLOUT, 0};
        poll(&pp, 1, 10);
        if (wire_flush() != 0)
            on_disconnect();
    }
    boot_poweroff();
}

/* ---- drive requests ---------------------------------------------------------- */

/* A decoded string (already checked: no NUL, bounded) as a C string. */
static void c_string(char *dst, size_t n, struct vx_str s)
{
    size_t l = s.len < n - 1 ? s.len : n - 1;
    memcpy(dst, s.p, l);
    dst[l] = 0;
}

static int disk_present(struct vx_str serial_str)
{
    char serial[VX_MAX_SERIAL + 1], dev[32];
    c_string(serial, sizeof serial, serial_str);
    return drives_find(serial, dev, sizeof dev, 0) == 0;
}

/* Whether every disk a MOUNT, STORE or LAYERS request names is there (others need none). */
static int drive_disks_present(const struct vx_frame *f)
{
    struct vx_mount m;
    if (f->type == VX_MOUNT) {
        vx_mount_decode(f, &m);
        return disk_present(m.serial);
    }
    if (f->type == VX_STORE) {
        vx_unmount_decode(f, &m);
        return disk_present(m.serial);
    }
    if (f->type == VX_LAYERS) {
        struct vx_layers l;
        vx_layers_decode(f, &l);
        size_t pos = 0;
        for (unsigned i = 0; i < l.count; i++) {
            struct vx_str s;
            vx_str_next(l.serials, l.serials_len, &pos, &s);
            if (!disk_present(s))
                return 0;
        }
    }
    return 1;
}

/* MOUNT, UNMOUNT, LAYERS, STORE, SYNC, FREEZE, THAW, FOLDER: DONE or ERROR on the request's stream. */
static void run_drive_request(const struct vx_frame *f)
{
    struct request_fail why;
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
        rc = drives_set_layers(serials, l.count, streams_count(), &why);
    } else if (f->type == VX_SYNC) {
        rc = drives_sync(&why);
    } else if (f->type == VX_FOLDER) {
        struct vx_folder d;
        char tag[VX_MAX_SERIAL + 1], target[256];
        vx_folder_decode(f, &d);
        c_string(tag, sizeof tag, d.tag);
        c_string(target, sizeof target, d.target);
        rc = folders_mount(tag, target, d.mode, &why);
    } else if (f->type == VX_FREEZE || f->type == VX_THAW) {
        rc = drives_freeze(f->type == VX_FREEZE, &why);
    } else if (f->type == VX_STORE) {
        struct vx_mount m;
        char serial[VX_MAX_SERIAL + 1];
        vx_unmount_decode(f, &m);
        c_string(serial, sizeof serial, m.serial);
        rc = drives_use_store(serial, streams_count(), &why);
    } else {
        struct vx_mount m;
        char serial[VX_MAX_SERIAL + 1], target[256];
        if (f->type == VX_MOUNT)
            vx_mount_decode(f, &m);
        else
            vx_unmount_decode(f, &m);
        c_string(serial, sizeof serial, m.serial);
        c_string(target, sizeof target, m.target);
        rc = f->type == VX_MOUNT ? drives_mount(serial, target, &why) : drives_unmount(serial, &why);
    }
    if (rc)
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, f->stream, NULL, 0);
}

static void on_drive(const struct vx_frame *f)
{
    if (drive_disks_present(f)) {
        run_drive_request(f);
        return;
    }
    if (pending_drive.waiting) {
        emit_error(f->stream, VX_E_BUSY, 0, "another drive request is waiting for its disk; send one at a time");
        return;
    }
    pending_drive.waiting = 1;
    pending_drive.f = *f;
    memcpy(pending_drive.payload, f->payload, f->len);
    pending_drive.f.payload = pending_drive.payload;
    pending_drive.deadline_ns = now_ns() + DRIVE_WAIT_NS;
}

/* Runs the waiting drive request once its disks are there or its time is up;
 * returns the poll timeout (ms) until the next look, or -1 when none waits. */
static int retry_pending_drive(void)
{
    if (!pending_drive.waiting)
        return -1;
    if (!drive_disks_present(&pending_drive.f) && now_ns() < pending_drive.deadline_ns)
        return DRIVE_RETRY_MS;
    pending_drive.waiting = 0;
    run_drive_request(&pending_drive.f); /* past the deadline: "no drive ... appeared" */
    return -1;
}

/* ---- dispatch ------------------------------------------------------------------ */

/* Requests that need a booted guest are refused with the boot's failure. */
static int refuse_unbooted(const struct vx_frame *f)
{
    if (!S.boot_error[0])
        return 0;
    emit_error(f->stream, VX_E_INTERNAL, 0, "the guest did not boot: %s", S.boot_error);
    return 1;
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
    case VX_EXEC:
        if (!refuse_unbooted(f))
            exec_start(f);
        break;
    case VX_DATA: stream_on_data(f); break;
    case VX_EOF: stream_on_eof(f); break;
    case VX_WINDOW: stream_on_window(f); break;
    case VX_SIGNAL: stream_on_signal(f); break;
    case VX_RESIZE: stream_on_resize(f); break;
    case VX_MOUNT: case VX_UNMOUNT: case VX_LAYERS: case VX_STORE: case VX_SYNC:
    case VX_FREEZE: case VX_THAW: case VX_FOLDER: on_drive(f); break;
    case VX_PUT: case VX_GET: case VX_STAT: case VX_LIST: case VX_MKDIR: case VX_DELETE: case VX_MOVE:
        if (!refuse_unbooted(f))
            transfer_request(f);
        break;
    case VX_PS: listing_start_ps(f); break;
    case VX_KILL: exec_kill_request(f); break;
    case VX_ERROR: vx_log("host reported an error on stream %u", f->stream); break;
    default:
        emit_error(f->stream, VX_E_STATE, 0, "%s is sent by the guest, not the host", vx_type_name(f->type));
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

/* Handles every whole frame in the input while a reply still has room. */
static void handle_input(void)
{
    size_t off = 0;
    while (S.state != DISCONNECTED && wire_room() >= WIRE_REPLY_ROOM) {
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
    ssize_t r = read(wire_port(), S.in + S.in_len, IN_CAP - S.in_len);
    if (r > 0)
        S.in_len += (size_t)r;
    else if (r == 0 || (errno != EAGAIN && errno != EINTR))
        on_disconnect();
}

/* ---- the loop ----------------------------------------------------------------- */

/* A host is on the port when polling it shows neither hang-up nor error. */
static void notice_host(void)
{
    if (S.state != DISCONNECTED)
        return;
    struct pollfd pp = {wire_port(), POLLIN, 0};
    if (poll(&pp, 1, 0) >= 0 && !(pp.revents & (POLLHUP | POLLERR)))
        on_connect();
}

static void flush_output(void)
{
    if (S.state != DISCONNECTED && wire_flush() != 0)
        on_disconnect();
}

/* The poll set: the port, SIGCHLD, and each stream's descriptors that may move now. */
struct poll_set {
    struct pollfd fd[2 + 3 * MAX_STREAMS];
    struct stream *owner[2 + 3 * MAX_STREAMS];
    int sub[2 + 3 * MAX_STREAMS];
    unsigned n;
};

static void build_poll_set(struct poll_set *ps)
{
    ps->n = 0;
    short port_events = (short)((S.in_len < IN_CAP ? POLLIN : 0) | (wire_used() ? POLLOUT : 0));
    ps->fd[ps->n] = (struct pollfd){S.state == DISCONNECTED ? -1 : wire_port(), port_events, 0};
    ps->owner[ps->n++] = NULL;
    ps->fd[ps->n] = (struct pollfd){S.sigfd, POLLIN, 0};
    ps->owner[ps->n++] = NULL;
    for (unsigned i = 0; i < MAX_STREAMS; i++) {
        struct stream *s = &streams[i];
        if (!s->used)
            continue;
        for (int sub = VX_STDOUT; sub <= VX_STDERR; sub++) {
            if (s->fd_out[sub] < 0 || !s->credit[sub] || wire_used() >= WIRE_DATA_LIMIT)
                continue;
            ps->fd[ps->n] = (struct pollfd){s->fd_out[sub], POLLIN, 0};
            ps->owner[ps->n] = s;
            ps->sub[ps->n++] = sub;
        }
        if (s->fd_in >= 0 && s->in_len) {
            ps->fd[ps->n] = (struct pollfd){s->fd_in, POLLOUT, 0};
            ps->owner[ps->n] = s;
            ps->sub[ps->n++] = VX_STDIN;
        }
    }
}

/* Waits for something in the poll set, at most `timeout` ms. Deferred work
 * (cgroups of ended commands, cgroups for the next ones) is done only while
 * nothing else is ready, a piece at a time. Returns poll's count. */
static int wait_ready(struct poll_set *ps, int timeout)
{
    int ready = poll(ps->fd, ps->n, 0);
    while (ready == 0 && jobs_idle())
        ready = poll(ps->fd, ps->n, 0);
    if (ready == 0)
        ready = poll(ps->fd, ps->n, timeout);
    if (ready < 0 && errno != EINTR)
        vx_log("poll: %s", strerror(errno));
    return ready;
}

/* Serves what poll found ready: reaping, each stream's pipes or file, then the port. */
static void dispatch_ready(const struct poll_set *ps)
{
    if (ps->fd[1].revents)
        exec_reap(S.sigfd);
    for (unsigned i = 2; i < ps->n; i++) {
        struct stream *s = ps->owner[i];
        if (!ps->fd[i].revents || !s->used)
            continue;
        if (ps->sub[i] == VX_STDIN)
            stream_pump_input(s);
        else if (s->fd_out[ps->sub[i]] >= 0)
            stream_pump_output(s, ps->sub[i]);
    }
    if (S.state != DISCONNECTED) {
        if (ps->fd[0].revents & POLLIN)
            read_port();
        else if (ps->fd[0].revents & (POLLHUP | POLLERR))
            on_disconnect();
    }
}

/* The sooner of two poll timeouts (-1: none). */
static int sooner(int a, int b)
{
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

void serve_forever(const char *port_path, const char *boot_error, long init_ms, long ready_ms)
{
    static struct poll_set ps;

    S.boot_error = boot_error;
    S.init_ms = init_ms;
    S.ready_ms = ready_ms;
    exec_setup();
    streams_init();
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    S.sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (wire_open(port_path) != 0 || S.sigfd < 0) {
        vx_log("cannot start serving %s: %s", port_path, strerror(errno));
        boot_poweroff();
    }
    S.state = DISCONNECTED;

    for (;;) {
        notice_host();
        handle_input();
        exec_report_exits();
        listing_pump();
        flush_output();

        int timeout = sooner(exec_check_deadlines(), retry_pending_drive());
        if (S.state == DISCONNECTED)
            timeout = sooner(timeout, 20); /* a disconnected port always polls HUP: look again soon */
        build_poll_set(&ps);
        if (wait_ready(&ps, timeout) >= 0)
            dispatch_ready(&ps);
    }
}
