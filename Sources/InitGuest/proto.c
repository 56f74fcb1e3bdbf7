/*
 * proto.c - frame parsing and payload decoding for the vmexec protocol.
 * No I/O and no allocation: every length is checked against the bytes
 * actually present before anything is read.
 */
#include "vx_proto.h"

#include <string.h>

void vx_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void vx_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void vx_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint16_t vx_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t vx_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

uint64_t vx_get_u64(const uint8_t *p)
{
    return (uint64_t)vx_get_u32(p) | ((uint64_t)vx_get_u32(p + 4) << 32);
}

void vx_header_write(uint8_t *out, uint8_t type, uint8_t sub, uint32_t stream, uint32_t len)
{
    vx_put_u32(out, len);
    out[4] = type;
    out[5] = sub;
    vx_put_u16(out + 6, 0);
    vx_put_u32(out + 8, stream);
}

long vx_frame_parse(const uint8_t *buf, size_t len, struct vx_frame *f)
{
    if (len < VX_HEADER_SIZE)
        return 0;
    uint32_t plen = vx_get_u32(buf);
    if (plen > VX_MAX_PAYLOAD)
        return -VX_E_TOO_BIG;
    if (vx_get_u16(buf + 6) != 0)
        return -VX_E_MALFORMED;
    if (len - VX_HEADER_SIZE < plen)
        return 0;
    f->len = plen;
    f->type = buf[4];
    f->sub = buf[5];
    f->stream = vx_get_u32(buf + 8);
    f->payload = buf + VX_HEADER_SIZE;
    return (long)(VX_HEADER_SIZE + plen);
}

int vx_str_next(const uint8_t *p, size_t n, size_t *pos, struct vx_str *s)
{
    if (*pos > n || n - *pos < 2)
        return VX_E_MALFORMED;
    uint16_t l = vx_get_u16(p + *pos);
    if (n - *pos - 2 < l)
        return VX_E_MALFORMED;
    s->p = p + *pos + 2;
    s->len = l;
    /* Strings become C strings in the guest: an embedded NUL is refused. */
    if (l && memchr(s->p, 0, l))
        return VX_E_MALFORMED;
    *pos += 2u + l;
    return 0;
}

int vx_hello_decode(const struct vx_frame *f, struct vx_hello *h)
{
    if (f->len < VX_HELLO_FIXED || f->len > VX_HELLO_FIXED + VX_MAX_INFO)
        return VX_E_MALFORMED;
    const uint8_t *p = f->payload;
    if (memcmp(p, "VMXC", 4) != 0)
        return VX_E_MALFORMED;
    h->major = vx_get_u16(p + 4);
    h->minor = vx_get_u16(p + 6);
    h->max_payload = vx_get_u32(p + 8);
    h->window = vx_get_u32(p + 12);
    h->max_streams = vx_get_u32(p + 16);
    h->info.p = p + VX_HELLO_FIXED;
    h->info.len = (uint16_t)(f->len - VX_HELLO_FIXED);
    return 0;
}

int vx_exec_decode(const struct vx_frame *f, struct vx_exec *e)
{
    const uint8_t *p = f->payload;
    size_t n = f->len, pos = 12;
    if (n < 12)
        return VX_E_MALFORMED;
    e->flags = vx_get_u32(p);
    e->timeout_ms = vx_get_u32(p + 4);
    e->argc = vx_get_u16(p + 8);
    e->envc = vx_get_u16(p + 10);
    if ((e->flags & ~VX_EXEC_KNOWN_FLAGS) || e->argc == 0 || e->argc > VX_MAX_ARGS || e->envc > VX_MAX_ENVS)
        return VX_E_MALFORMED;
    if (vx_str_next(p, n, &pos, &e->cwd))
        return VX_E_MALFORMED;
    memset(&e->policy, 0, sizeof e->policy);
    e->rows = e->cols = 0;
    if (e->flags & VX_EXEC_PTY) {
        /* The terminal block is last; its input comes as DATA, so STDIN is required. */
        if (!(e->flags & VX_EXEC_STDIN) || n - pos < VX_TERMINAL_SIZE)
            return VX_E_MALFORMED;
        e->rows = vx_get_u16(p + n - 4);
        e->cols = vx_get_u16(p + n - 2);
        if (!e->rows || !e->cols)
            return VX_E_MALFORMED;
        n -= VX_TERMINAL_SIZE;
    }
    if (e->flags & VX_EXEC_POLICY) {
        if (n - pos < VX_POLICY_SIZE)
            return VX_E_MALFORMED;
        const uint8_t *q = p + n - VX_POLICY_SIZE;
        e->policy.uid = vx_get_u32(q);
        e->policy.gid = vx_get_u32(q + 4);
        e->policy.memory_max = vx_get_u64(q + 8);
        e->policy.pids_max = vx_get_u32(q + 16);
        e->policy.nofile = vx_get_u32(q + 20);
        e->policy.cpu_seconds = vx_get_u32(q + 24);
        e->policy.options = vx_get_u32(q + 28);
        if (e->policy.options & ~VX_POLICY_KNOWN_OPTIONS)
            return VX_E_MALFORMED;
        n -= VX_POLICY_SIZE;
        if (e->policy.options & VX_POLICY_TMP_SIZE) {
            /* The size block sits before the policy block; it sizes a private /tmp only. */
            if (n - pos < VX_TMP_SIZE_SIZE || !(e->policy.options & VX_POLICY_PRIVATE_TMP))
                return VX_E_MALFORMED;
            e->policy.tmp_bytes = vx_get_u64(p + n - VX_TMP_SIZE_SIZE);
            if (e->policy.tmp_bytes == 0)
                return VX_E_MALFORMED;
            n -= VX_TMP_SIZE_SIZE;
        }
    }
    e->strings = p + pos;
    e->strings_len = n - pos;
    /* Walk every string once so that users of the payload can trust it. */
    size_t spos = 0;
    struct vx_str s;
    for (unsigned i = 0; i < (unsigned)e->argc + e->envc; i++) {
        if (vx_str_next(e->strings, e->strings_len, &spos, &s))
            return VX_E_MALFORMED;
        if (i == 0 && s.len == 0)
            return VX_E_MALFORMED;
        if (i >= e->argc && (s.len == 0 || !memchr(s.p, '=', s.len) || s.p[0] == '='))
            return VX_E_MALFORMED;
    }
    if (spos != e->strings_len)
        return VX_E_MALFORMED;
    return 0;
}

int vx_exit_decode(const struct vx_frame *f, struct vx_exit *x)
{
    const uint8_t *p = f->payload;
    if (f->len != VX_EXIT_SIZE || p[0] > VX_MEMORY || p[1] || p[2] || p[3])
        return VX_E_MALFORMED;
    x->how = p[0];
    x->value = (int32_t)vx_get_u32(p + 4);
    x->run_ns = vx_get_u64(p + 8);
    x->utime_us = vx_get_u64(p + 16);
    x->stime_us = vx_get_u64(p + 24);
    x->maxrss_kb = vx_get_u64(p + 32);
    return 0;
}

int vx_error_decode(const struct vx_frame *f, struct vx_error *e)
{
    if (f->len < 8 || f->len > 8 + 4096)
        return VX_E_MALFORMED;
    e->code = vx_get_u32(f->payload);
    e->err = (int32_t)vx_get_u32(f->payload + 4);
    e->message.p = f->payload + 8;
    e->message.len = (uint16_t)(f->len - 8);
    return 0;
}

int vx_u32_decode(const struct vx_frame *f, uint32_t *v)
{
    if (f->len != 4)
        return VX_E_MALFORMED;
    *v = vx_get_u32(f->payload);
    return 0;
}

/* A drive serial: 1..36 of [A-Za-z0-9._-] (what QEMU's scsi-hd keeps). */
static int serial_ok(struct vx_str s)
{
    if (s.len == 0 || s.len > VX_MAX_SERIAL)
        return 0;
    for (uint16_t i = 0; i < s.len; i++) {
        uint8_t c = s.p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int vx_mount_decode(const struct vx_frame *f, struct vx_mount *m)
{
    size_t pos = 0;
    if (vx_str_next(f->payload, f->len, &pos, &m->serial) || vx_str_next(f->payload, f->len, &pos, &m->target) ||
        pos != f->len || !serial_ok(m->serial) || m->target.len < 2 || m->target.len > 255 || m->target.p[0] != '/')
        return VX_E_MALFORMED;
    return 0;
}

int vx_unmount_decode(const struct vx_frame *f, struct vx_mount *m)
{
    size_t pos = 0;
    m->target.p = NULL;
    m->target.len = 0;
    if (vx_str_next(f->payload, f->len, &pos, &m->serial) || pos != f->len || !serial_ok(m->serial))
        return VX_E_MALFORMED;
    return 0;
}

int vx_folder_decode(const struct vx_frame *f, struct vx_folder *d)
{
    size_t pos = 0;
    if (vx_str_next(f->payload, f->len, &pos, &d->tag) || vx_str_next(f->payload, f->len, &pos, &d->target) ||
        pos + 1 != f->len || !serial_ok(d->tag) || d->target.len < 2 || d->target.len > 255 || d->target.p[0] != '/')
        return VX_E_MALFORMED;
    d->mode = f->payload[pos];
    return d->mode <= VX_FOLDER_OVERLAY ? 0 : VX_E_MALFORMED;
}

int vx_layers_decode(const struct vx_frame *f, struct vx_layers *l)
{
    if (f->len < 2)
        return VX_E_MALFORMED;
    l->count = vx_get_u16(f->payload);
    l->serials = f->payload + 2;
    l->serials_len = f->len - 2;
    if (l->count > VX_MAX_LAYERS)
        return VX_E_MALFORMED;
    size_t pos = 0;
    struct vx_str s;
    for (unsigned i = 0; i < l->count; i++)
        if (vx_str_next(l->serials, l->serials_len, &pos, &s) || !serial_ok(s))
            return VX_E_MALFORMED;
    return pos == l->serials_len ? 0 : VX_E_MALFORMED;
}

/* Which flags each file request accepts. */
static uint32_t file_flags(uint8_t type)
{
    switch (type) {
    case VX_PUT: return VX_F_NO_REPLACE | VX_F_PARENTS;
    case VX_MKDIR: return VX_F_PARENTS | VX_F_EXIST_OK;
    case VX_STAT: return VX_F_NOFOLLOW;
    case VX_DELETE: return VX_F_RECURSIVE;
    case VX_MOVE: return VX_F_NO_REPLACE;
    default: return 0;
    }
}

static int path_ok(struct vx_str s)
{
    return s.len >= 1 && s.len <= VX_MAX_PATH;
}

int vx_file_decode(const struct vx_frame *f, struct vx_file_req *r)
{
    const uint8_t *p = f->payload;
    size_t pos = VX_FILE_FIXED;
    if (f->len < VX_FILE_FIXED)
        return VX_E_MALFORMED;
    r->flags = vx_get_u32(p);
    r->mode = vx_get_u32(p + 4);
    r->uid = vx_get_u32(p + 8);
    r->gid = vx_get_u32(p + 12);
    r->size = vx_get_u64(p + 16);
    r->to.p = NULL;
    r->to.len = 0;
    if (r->flags & ~file_flags(f->type))
        return VX_E_MALFORMED;
    /* Only PUT and MKDIR create something with a mode and owner. */
    int owns = f->type == VX_PUT || f->type == VX_MKDIR;
    if (r->mode > 07777 || (!owns && (r->mode || r->uid || r->gid)))
        return VX_E_MALFORMED;
    if (r->size && f->type != VX_PUT && f->type != VX_GET && f->type != VX_LIST)
        return VX_E_MALFORMED;
    if (vx_str_next(p, f->len, &pos, &r->path) || !path_ok(r->path))
        return VX_E_MALFORMED;
    if (f->type == VX_MOVE && (vx_str_next(p, f->len, &pos, &r->to) || !path_ok(r->to)))
        return VX_E_MALFORMED;
    return pos == f->len ? 0 : VX_E_MALFORMED;
}

int vx_entry_decode(const struct vx_frame *f, struct vx_entry *e)
{
    const uint8_t *p = f->payload;
    size_t pos = VX_ENTRY_FIXED;
    if (f->len < VX_ENTRY_FIXED)
        return VX_E_MALFORMED;
    e->mode = vx_get_u32(p);
    e->uid = vx_get_u32(p + 4);
    e->gid = vx_get_u32(p + 8);
    e->nlink = vx_get_u32(p + 12);
    e->size = vx_get_u64(p + 16);
    e->mtime_ns = (int64_t)vx_get_u64(p + 24);
    if (vx_str_next(p, f->len, &pos, &e->name) || e->name.len > 255 ||
        vx_str_next(p, f->len, &pos, &e->link) || e->link.len > VX_MAX_PATH)
        return VX_E_MALFORMED;
    return pos == f->len ? 0 : VX_E_MALFORMED;
}

int vx_process_decode(const struct vx_frame *f, struct vx_process *x)
{
    const uint8_t *p = f->payload;
    if (f->len < VX_PROCESS_FIXED || p[21] || p[22] || p[23])
        return VX_E_MALFORMED;
    x->pid = vx_get_u32(p);
    x->ppid = vx_get_u32(p + 4);
    x->pgid = vx_get_u32(p + 8);
    x->uid = vx_get_u32(p + 12);
    x->stream = vx_get_u32(p + 16);
    x->state = p[20];
    x->start_ns = vx_get_u64(p + 24);
    x->cpu_us = vx_get_u64(p + 32);
    x->rss_kb = vx_get_u64(p + 40);
    if (f->len < VX_PROCESS_FIXED + 2)
        return VX_E_MALFORMED;
    x->argc = vx_get_u16(p + VX_PROCESS_FIXED);
    x->argv = p + VX_PROCESS_FIXED + 2;
    x->argv_len = f->len - VX_PROCESS_FIXED - 2;
    if (x->state < 'A' || x->state > 'Z' || x->argv_len > VX_MAX_ARGV + 2u * x->argc)
        return VX_E_MALFORMED;
    size_t pos = 0;
    struct vx_str s;
    for (unsigned i = 0; i < x->argc; i++)
        if (vx_str_next(x->argv, x->argv_len, &pos, &s))
            return VX_E_MALFORMED;
    return pos == x->argv_len ? 0 : VX_E_MALFORMED;
}

int vx_kill_decode(const struct vx_frame *f, struct vx_kill *k)
{
    if (f->len != 12)
        return VX_E_MALFORMED;
    k->pid = vx_get_u32(f->payload);
    k->signal = vx_get_u32(f->payload + 4);
    k->flags = vx_get_u32(f->payload + 8);
    if (k->pid < 2 || k->pid > 0x3fffffff || k->signal < 1 || k->signal > 64 || (k->flags & ~VX_KILL_GROUP))
        return VX_E_MALFORMED;
    return 0;
}

int vx_resize_decode(const struct vx_frame *f, struct vx_resize *r)
{
    if (f->len != VX_TERMINAL_SIZE)
        return VX_E_MALFORMED;
    r->rows = vx_get_u16(f->payload);
    r->cols = vx_get_u16(f->payload + 2);
    return r->rows && r->cols ? 0 : VX_E_MALFORMED;
}

/* Which frames live on stream 0, and which use the sub byte. */
static int is_control(uint8_t t)
{
    return t == VX_HELLO || t == VX_PING || t == VX_PONG || t == VX_SHUTDOWN || t == VX_BYE;
}

static int uses_sub(uint8_t t)
{
    return t == VX_DATA || t == VX_EOF || t == VX_WINDOW;
}

int vx_frame_check(const struct vx_frame *f)
{
    switch (f->type) {
    case VX_HELLO: case VX_PING: case VX_PONG: case VX_ERROR: case VX_SHUTDOWN: case VX_BYE:
    case VX_EXEC: case VX_STARTED: case VX_DATA: case VX_EOF: case VX_WINDOW: case VX_SIGNAL: case VX_EXIT:
    case VX_RESIZE: case VX_MOUNT: case VX_UNMOUNT: case VX_LAYERS: case VX_DONE: case VX_STORE: case VX_SYNC:
    case VX_FREEZE: case VX_THAW: case VX_FOLDER: case VX_PUT: case VX_GET: case VX_STAT: case VX_LIST:
    case VX_MKDIR: case VX_DELETE: case VX_MOVE: case VX_ENTRY: case VX_PS: case VX_PROCESS: case VX_KILL:
        break;
    default:
        return VX_E_UNKNOWN_TYPE;
    }
    if (is_control(f->type) && f->stream != 0)
        return VX_E_BAD_STREAM;
    if (!is_control(f->type) && f->type != VX_ERROR && f->stream == 0)
        return VX_E_BAD_STREAM;
    if (uses_sub(f->type) ? f->sub > VX_STDERR : f->sub != 0)
        return VX_E_MALFORMED;

    uint32_t v;
    switch (f->type) {
    case VX_HELLO: {
        struct vx_hello h;
        return vx_hello_decode(f, &h);
    }
    case VX_SHUTDOWN: case VX_BYE: case VX_EOF: case VX_DONE: case VX_SYNC: case VX_FREEZE: case VX_THAW:
    case VX_PS:
        return f->len == 0 ? 0 : VX_E_MALFORMED;
    case VX_PUT: case VX_GET: case VX_STAT: case VX_LIST: case VX_MKDIR: case VX_DELETE: case VX_MOVE: {
        struct vx_file_req r;
        return vx_file_decode(f, &r);
    }
    case VX_ENTRY: {
        struct vx_entry e;
        return vx_entry_decode(f, &e);
    }
    case VX_PROCESS: {
        struct vx_process x;
        return vx_process_decode(f, &x);
    }
    case VX_KILL: {
        struct vx_kill k;
        return vx_kill_decode(f, &k);
    }
    case VX_RESIZE: {
        struct vx_resize r;
        return vx_resize_decode(f, &r);
    }
    case VX_MOUNT: {
        struct vx_mount m;
        return vx_mount_decode(f, &m);
    }
    case VX_UNMOUNT: case VX_STORE: {
        struct vx_mount m;
        return vx_unmount_decode(f, &m);
    }
    case VX_LAYERS: {
        struct vx_layers l;
        return vx_layers_decode(f, &l);
    }
    case VX_FOLDER: {
        struct vx_folder d;
        return vx_folder_decode(f, &d);
    }
    case VX_ERROR: {
        struct vx_error e;
        return vx_error_decode(f, &e);
    }
    case VX_EXEC: {
        struct vx_exec e;
        return vx_exec_decode(f, &e);
    }
    case VX_STARTED:
        return vx_u32_decode(f, &v);
    case VX_DATA:
        return f->len > 0 ? 0 : VX_E_MALFORMED;
    case VX_WINDOW:
        return vx_u32_decode(f, &v) || v == 0 ? VX_E_MALFORMED : 0;
    case VX_SIGNAL:
        return vx_u32_decode(f, &v) || v < 1 || v > 64 ? VX_E_MALFORMED : 0;
    case VX_EXIT: {
        struct vx_exit x;
        return vx_exit_decode(f, &x);
    }
    default: /* PING, PONG: any payload */
        return 0;
    }
}

const char *vx_type_name(uint8_t type)
{
    switch (type) {
    case VX_HELLO: return "HELLO";
    case VX_PING: return "PING";
    case VX_PONG: return "PONG";
    case VX_ERROR: return "ERROR";
    case VX_SHUTDOWN: return "SHUTDOWN";
    case VX_BYE: return "BYE";
    case VX_EXEC: return "EXEC";
    case VX_STARTED: return "STARTED";
    case VX_DATA: return "DATA";
    case VX_EOF: return "EOF";
    case VX_WINDOW: return "WINDOW";
    case VX_SIGNAL: return "SIGNAL";
    case VX_EXIT: return "EXIT";
    case VX_RESIZE: return "RESIZE";
    case VX_MOUNT: return "MOUNT";
    case VX_UNMOUNT: return "UNMOUNT";
    case VX_LAYERS: return "LAYERS";
    case VX_DONE: return "DONE";
    case VX_STORE: return "STORE";
    case VX_SYNC: return "SYNC";
    case VX_FREEZE: return "FREEZE";
    case VX_THAW: return "THAW";
    case VX_FOLDER: return "FOLDER";
    case VX_PUT: return "PUT";
    case VX_GET: return "GET";
    case VX_STAT: return "STAT";
    case VX_LIST: return "LIST";
    case VX_MKDIR: return "MKDIR";
    case VX_DELETE: return "DELETE";
    case VX_MOVE: return "MOVE";
    case VX_ENTRY: return "ENTRY";
    case VX_PS: return "PS";
    case VX_PROCESS: return "PROCESS";
    case VX_KILL: return "KILL";
    default: return "UNKNOWN";
    }
}

const char *vx_err_name(int code)
{
    switch (code) {
    case VX_E_MALFORMED: return "MALFORMED";
    case VX_E_TOO_BIG: return "TOO_BIG";
    case VX_E_UNKNOWN_TYPE: return "UNKNOWN_TYPE";
    case VX_E_BAD_STREAM: return "BAD_STREAM";
    case VX_E_VERSION: return "VERSION";
    case VX_E_EXEC: return "EXEC";
    case VX_E_LIMIT: return "LIMIT";
    case VX_E_FLOW: return "FLOW";
    case VX_E_INTERNAL: return "INTERNAL";
    case VX_E_STATE: return "STATE";
    case VX_E_WORKDIR: return "WORKDIR";
    case VX_E_MOUNT: return "MOUNT";
    case VX_E_BUSY: return "BUSY";
    case VX_E_FILE: return "FILE";
    case VX_E_PROCESS: return "PROCESS";
    default: return "UNKNOWN";
    }
}
