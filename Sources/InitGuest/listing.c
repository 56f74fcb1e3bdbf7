/* listing.c - see listing.h. */
#define _GNU_SOURCE
#include "listing.h"

#include "exec.h"
#include "files.h"
#include "procs.h"
#include "stream.h"
#include "wire.h"

#include <errno.h>
#include <stdio.h>

/* The largest ENTRY or PROCESS payload. */
#define LISTING_MAX (PROCS_ENTRY_MAX > FILES_ENTRY_MAX ? PROCS_ENTRY_MAX : FILES_ENTRY_MAX)

void listing_start_dir(const struct vx_frame *f, uint64_t max_entries, const char *path)
{
    struct request_fail why;
    struct stream *s = stream_new(f->stream);
    if (!s)
        return;
    if (!(s->dir = files_open_dir(path, &why))) {
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
        return;
    }
    s->used = 1;
    s->kind = K_LIST;
    s->expect = max_entries;
}

void listing_start_ps(const struct vx_frame *f)
{
    struct request_fail why;
    struct stream *s = stream_new(f->stream);
    if (!s)
        return;
    if (!(s->dir = procs_open(&why))) {
        emit_error(f->stream, why.code, why.err, "%s", why.msg);
        return;
    }
    s->used = 1;
    s->kind = K_PS;
}

void listing_pump(void)
{
    static uint8_t entry[LISTING_MAX];
    for (unsigned i = 0; i < MAX_STREAMS; i++) {
        struct stream *s = &streams[i];
        while (s->used && (s->kind == K_LIST || s->kind == K_PS) && wire_used() < WIRE_DATA_LIMIT) {
            struct request_fail why;
            uint32_t len = 0, pgid = 0;
            int rc = s->kind == K_LIST ? files_next_entry(s->dir, entry, &len, &why)
                                       : procs_next(s->dir, entry, &len, &pgid);
            if (rc > 0 && s->expect && s->moved == s->expect)
                rc = request_failed(&why, VX_E_LIMIT, E2BIG, "the directory has more than the %llu entries asked for",
                                    (unsigned long long)s->expect);
            if (rc < 0) {
                emit_error(s->id, why.code, why.err, "%s", why.msg);
                stream_free(s);
            } else if (rc == 0) {
                emit(VX_DONE, 0, s->id, NULL, 0);
                stream_free(s);
            } else {
                if (s->kind == K_PS)
                    vx_put_u32(entry + 16, exec_stream_of_group(pgid));
                emit(s->kind == K_LIST ? VX_ENTRY : VX_PROCESS, 0, s->id, entry, len);
                s->moved++;
            }
        }
    }
}
