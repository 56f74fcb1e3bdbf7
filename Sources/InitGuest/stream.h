/*
 * stream.h - the streams of a session: each a command, a file moving in
 * (PUT) or out (GET), or a listing (LIST, PS), under the stream id the host
 * chose.
 *
 * A command and a transfer share the machinery: stdin bytes arrive within
 * the credit the guest grants (STDIN_WINDOW at a time), output is read from
 * its descriptor only while the host has granted credit for it, so a slow
 * host reader blocks that stream's writer and nothing else.
 */
#ifndef VX_STREAM_H
#define VX_STREAM_H

#include "files.h"
#include "jobs.h"
#include "vx_proto.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#define MAX_STREAMS 128u
#define STDIN_WINDOW 65536u
#define MAX_HOST_WINDOW (16u << 20)

/* What a stream carries. PUT and GET have the file in place of a pipe. */
enum stream_kind { K_COMMAND, K_PUT, K_GET, K_LIST, K_PS };

struct stream {
    int used;
    enum stream_kind kind;
    uint32_t id;
    pid_t pid;             /* K_COMMAND */
    int fd_in;             /* where stdin goes (the pipe, the terminal, or the PUT file), or -1 */
    int pty_fd;            /* a terminal command's pty master (for RESIZE and end of input), or -1 */
    int fd_out[3];         /* [VX_STDOUT], [VX_STDERR]: read ends (or the GET file), -1 once at EOF */
    uint32_t credit[3];    /* bytes of output the host still accepts */
    uint8_t *in_buf;       /* stdin bytes received, not yet written */
    uint32_t in_len, in_credit, in_ungranted;
    int has_stdin, in_eof;
    int exited, status, timed_out;
    int service;           /* K_COMMAND with VX_POLICY_SERVICE: outlives its session */
    int orphan;            /* a service whose session ended: no stream, reaped quietly */
    int memory_limited, memory_killed;
    struct job job;
    struct rusage ru;
    uint64_t start_ns, end_ns, deadline_ns;
    /* PUT: bytes announced; GET: most bytes accepted; LIST: most entries (0: no cap). */
    uint64_t expect, moved;
    struct put_target put; /* K_PUT */
    DIR *dir;              /* K_LIST, K_PS */
};

extern struct stream streams[MAX_STREAMS];

void streams_init(void);
/* The credit each new stream's output starts with (the host's HELLO window). */
void streams_set_host_window(uint32_t window);
uint32_t streams_host_window(void);
unsigned streams_count(void);

struct stream *stream_find(uint32_t id);
/* A free stream for `id`, or NULL after answering the host why not. */
struct stream *stream_new(uint32_t id);
/* The stream a frame is for, or NULL after answering that there is none. */
struct stream *stream_of(const struct vx_frame *f);
/* Ends a stream: closes its descriptors, drops an unfinished PUT, ends a command's cgroup. */
void stream_free(struct stream *s);
/* Kills every command (its process group) and frees every stream. */
void streams_end_all(void);

/* Host frames on a stream: DATA (stdin), EOF (of stdin), WINDOW (output credit), SIGNAL. */
void stream_on_data(const struct vx_frame *f);
void stream_on_eof(const struct vx_frame *f);
void stream_on_window(const struct vx_frame *f);
void stream_on_signal(const struct vx_frame *f);
/* RESIZE: a terminal command's window size (the kernel sends SIGWINCH to its foreground group). */
void stream_on_resize(const struct vx_frame *f);

/* Writes buffered stdin bytes to the stream's descriptor. */
void stream_pump_input(struct stream *s);
/* Reads output (sub: VX_STDOUT or VX_STDERR) into DATA frames while credit and room last. */
void stream_pump_output(struct stream *s, int sub);

void close_fd(int *fd);
uint64_t now_ns(void);

#endif
