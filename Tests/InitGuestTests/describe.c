/*
 * describe.c - the C side of the golden vectors: turns bytes into the
 * canonical description of Tests/Vectors/frames.vec using only the init's
 * parser (vx_proto.h). The Swift tests hold their codec to the same text.
 */
#include "describe.h"

#include "vx_proto.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct out {
    char *p;
    size_t len, cap;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len = o->len + (size_t)n < o->cap ? o->len + (size_t)n : o->cap - 1;
}

static void put_str(struct out *o, const uint8_t *s, size_t n)
{
    put(o, "\"");
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\')
            put(o, "\\%c", c);
        else if (c == '\n')
            put(o, "\\n");
        else if (c < 0x20 || c >= 0x7f)
            put(o, "\\x%02x", c);
        else
            put(o, "%c", c);
    }
    put(o, "\"");
}

static void put_list(struct out *o, const char *name, const uint8_t *p, size_t n, size_t *pos, unsigned count)
{
    put(o, " %s=[", name);
    for (unsigned i = 0; i < count; i++) {
        struct vx_str s;
        vx_str_next(p, n, pos, &s);
        if (i)
            put(o, ",");
        put_str(o, s.p, s.len);
    }
    put(o, "]");
}

size_t vx_describe(const uint8_t *buf, size_t len, char *text, size_t cap)
{
    struct out o = {text, 0, cap};
    text[0] = 0;
    struct vx_frame f;
    long n = vx_frame_parse(buf, len, &f);
    if (n == 0) {
        put(&o, "incomplete");
        return 0;
    }
    if (n < 0) {
        put(&o, "fatal %s", vx_err_name((int)-n));
        return 0;
    }
    int rc = vx_frame_check(&f);
    if (rc) {
        put(&o, "refused %s", vx_err_name(rc));
        return (size_t)n;
    }
    put(&o, "%s stream=%" PRIu32 " sub=%u", vx_type_name(f.type), f.stream, f.sub);
    switch (f.type) {
    case VX_HELLO: {
        struct vx_hello h;
        vx_hello_decode(&f, &h);
        put(&o, " major=%u minor=%u max_payload=%" PRIu32 " window=%" PRIu32 " max_streams=%" PRIu32 " info=",
            h.major, h.minor, h.max_payload, h.window, h.max_streams);
        put_str(&o, h.info.p, h.info.len);
        break;
    }
    case VX_PING: case VX_PONG: case VX_DATA:
        put(&o, " hex=");
        for (uint32_t i = 0; i < f.len; i++)
            put(&o, "%02x", f.payload[i]);
        break;
    case VX_ERROR: {
        struct vx_error e;
        vx_error_decode(&f, &e);
        const char *name = vx_err_name((int)e.code);
        put(&o, " code=%s errno=%" PRId32 " message=", name, e.err);
        put_str(&o, e.message.p, e.message.len);
        break;
    }
    case VX_EXEC: {
        struct vx_exec e;
        vx_exec_decode(&f, &e);
        put(&o, " flags=%" PRIu32 " timeout_ms=%" PRIu32 " cwd=", e.flags, e.timeout_ms);
        put_str(&o, e.cwd.p, e.cwd.len);
        size_t pos = 0;
        put_list(&o, "argv", e.strings, e.strings_len, &pos, e.argc);
        put_list(&o, "env", e.strings, e.strings_len, &pos, e.envc);
        if (e.flags & VX_EXEC_POLICY)
            put(&o, " uid=%" PRIu32 " gid=%" PRIu32 " memory_max=%" PRIu64 " pids_max=%" PRIu32 " nofile=%" PRIu32
                    " cpu_seconds=%" PRIu32, e.policy.uid, e.policy.gid, e.policy.memory_max, e.policy.pids_max,
                e.policy.nofile, e.policy.cpu_seconds);
        if (e.policy.options & VX_POLICY_PRIVATE_TMP)
            put(&o, " private_tmp");
        if (e.policy.options & VX_POLICY_SERVICE)
            put(&o, " service");
        if (e.policy.options & VX_POLICY_TMP_SIZE)
            put(&o, " tmp_bytes=%" PRIu64, e.policy.tmp_bytes);
        if (e.flags & VX_EXEC_PTY)
            put(&o, " rows=%u cols=%u", (unsigned)e.rows, (unsigned)e.cols);
        break;
    }
    case VX_RESIZE: {
        struct vx_resize r;
        vx_resize_decode(&f, &r);
        put(&o, " rows=%u cols=%u", (unsigned)r.rows, (unsigned)r.cols);
        break;
    }
    case VX_STARTED:
        put(&o, " pid=%" PRIu32, vx_get_u32(f.payload));
        break;
    case VX_WINDOW:
        put(&o, " credit=%" PRIu32, vx_get_u32(f.payload));
        break;
    case VX_SIGNAL:
        put(&o, " signal=%" PRIu32, vx_get_u32(f.payload));
        break;
    case VX_EXIT: {
        struct vx_exit x;
        vx_exit_decode(&f, &x);
        static const char *const how[] = {"exited", "signaled", "timed_out", "memory"};
        put(&o, " how=%s value=%" PRId32 " run_ns=%" PRIu64 " utime_us=%" PRIu64 " stime_us=%" PRIu64
                " maxrss_kb=%" PRIu64, how[x.how], x.value, x.run_ns, x.utime_us, x.stime_us, x.maxrss_kb);
        break;
    }
    case VX_MOUNT: case VX_UNMOUNT: case VX_STORE: {
        struct vx_mount m;
        if (f.type == VX_MOUNT)
            vx_mount_decode(&f, &m);
        else
            vx_unmount_decode(&f, &m);
        put(&o, " serial=");
        put_str(&o, m.serial.p, m.serial.len);
        if (f.type == VX_MOUNT) {
            put(&o, " target=");
            put_str(&o, m.target.p, m.target.len);
        }
        break;
    }
    case VX_FOLDER: {
        struct vx_folder d;
        vx_folder_decode(&f, &d);
        static const char *const mode[] = {"ro", "rw", "overlay"};
        put(&o, " tag=");
        put_str(&o, d.tag.p, d.tag.len);
        put(&o, " target=");
        put_str(&o, d.target.p, d.target.len);
        put(&o, " mode=%s", mode[d.mode]);
        break;
    }
    case VX_LAYERS: {
        struct vx_layers l;
        vx_layers_decode(&f, &l);
        size_t pos = 0;
        put_list(&o, "serials", l.serials, l.serials_len, &pos, l.count);
        break;
    }
    case VX_PUT: case VX_GET: case VX_STAT: case VX_LIST: case VX_MKDIR: case VX_DELETE: case VX_MOVE: {
        struct vx_file_req r;
        vx_file_decode(&f, &r);
        put(&o, " flags=%" PRIu32 " mode=%" PRIo32 " uid=%" PRIu32 " gid=%" PRIu32 " size=%" PRIu64 " path=",
            r.flags, r.mode, r.uid, r.gid, r.size);
        put_str(&o, r.path.p, r.path.len);
        if (f.type == VX_MOVE) {
            put(&o, " to=");
            put_str(&o, r.to.p, r.to.len);
        }
        break;
    }
    case VX_ENTRY: {
        struct vx_entry e;
        vx_entry_decode(&f, &e);
        put(&o, " mode=%" PRIo32 " uid=%" PRIu32 " gid=%" PRIu32 " nlink=%" PRIu32 " size=%" PRIu64
                " mtime_ns=%" PRId64 " name=",
            e.mode, e.uid, e.gid, e.nlink, e.size, e.mtime_ns);
        put_str(&o, e.name.p, e.name.len);
        put(&o, " link=");
        put_str(&o, e.link.p, e.link.len);
        break;
    }
    case VX_PROCESS: {
        struct vx_process x;
        vx_process_decode(&f, &x);
        put(&o, " pid=%" PRIu32 " ppid=%" PRIu32 " pgid=%" PRIu32 " uid=%" PRIu32 " process_stream=%" PRIu32
                " state=%c start_ns=%" PRIu64 " cpu_us=%" PRIu64 " rss_kb=%" PRIu64,
            x.pid, x.ppid, x.pgid, x.uid, x.stream, x.state, x.start_ns, x.cpu_us, x.rss_kb);
        size_t pos = 0;
        put_list(&o, "argv", x.argv, x.argv_len, &pos, x.argc);
        break;
    }
    case VX_KILL: {
        struct vx_kill k;
        vx_kill_decode(&f, &k);
        put(&o, " pid=%" PRIu32 " signal=%" PRIu32 " flags=%" PRIu32, k.pid, k.signal, k.flags);
        break;
    }
    default: /* SHUTDOWN, BYE, EOF, DONE, SYNC, FREEZE, THAW, PS: nothing more */
        break;
    }
    return (size_t)n;
}
