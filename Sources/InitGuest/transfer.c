/* transfer.c - see transfer.h. */
#define _GNU_SOURCE
#include "transfer.h"

#include "files.h"
#include "listing.h"
#include "wire.h"

#include <errno.h>
#include <stdio.h>

void transfer_finish_put(struct stream *s)
{
    struct request_fail why;
    if (s->moved != s->expect)
        emit_error(s->id, VX_E_FILE, EIO, "%llu bytes arrived for %s, %llu were announced; nothing written",
                   (unsigned long long)s->moved, s->put.name, (unsigned long long)s->expect);
    else if (files_put_commit(&s->put, &why) != 0)
        emit_error(s->id, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, s->id, NULL, 0);
    stream_free(s);
}

/* PUT: the file is written beside its destination, renamed into place at the end. */
static void start_put(const struct vx_frame *f, const struct vx_file_req *r, const char *path)
{
    struct request_fail why;
    struct stream *s = stream_new(f->stream);
    if (!s)
        return;
    if (files_put_begin(r, path, &s->put, &why) != 0) {
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
        return;
    }
    s->used = 1;
    s->kind = K_PUT;
    s->fd_in = s->put.fd;
    s->has_stdin = 1;
    s->in_credit = STDIN_WINDOW;
    s->expect = r->size;
    emit_u32(VX_STARTED, 0, f->stream, 0);
}

/* GET: the file's ENTRY, then its bytes as stdout within the host's credit. */
static void start_get(const struct vx_frame *f, const struct vx_file_req *r, const char *path)
{
    static uint8_t entry[FILES_ENTRY_MAX];
    struct request_fail why;
    uint32_t len;
    struct stream *s = stream_new(f->stream);
    if (!s)
        return;
    int fd = files_open_get(path, r->size, entry, &len, &why);
    if (fd < 0) {
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
        return;
    }
    s->used = 1;
    s->kind = K_GET;
    s->fd_out[VX_STDOUT] = fd;
    s->credit[VX_STDOUT] = streams_host_window();
    s->expect = r->size;
    emit(VX_ENTRY, 0, f->stream, entry, len);
}

void transfer_request(const struct vx_frame *f)
{
    static uint8_t entry[FILES_ENTRY_MAX];
    static char path[VX_MAX_PATH + 1], to[VX_MAX_PATH + 1];
    struct vx_file_req r;
    struct request_fail why;
    uint32_t len = 0;
    int rc;
    vx_file_decode(f, &r); /* validated by vx_frame_check */
    files_path(r.path, path);
    switch (f->type) {
    case VX_PUT: start_put(f, &r, path); return;
    case VX_GET: start_get(f, &r, path); return;
    case VX_LIST: listing_start_dir(f, r.size, path); return;
    case VX_STAT:
        rc = files_stat(path, (r.flags & VX_F_NOFOLLOW) != 0, entry, &len, &why);
        if (rc == 0)
            emit(VX_ENTRY, 0, f->stream, entry, len);
        break;
    case VX_MKDIR: rc = files_mkdir(&r, path, &why); break;
    case VX_DELETE: rc = files_delete(&r, path, &why); break;
    default: /* VX_MOVE */
        files_path(r.to, to);
        rc = files_move(&r, path, to, &why);
        break;
    }
    if (rc)
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
    else
        emit(VX_DONE, 0, f->stream, NULL, 0);
}
