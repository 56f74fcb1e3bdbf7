/*
 * vx_proto.h - the vmexec wire protocol, guest side: constants, frame
 * parsing and payload decoding. Pure functions, no I/O, no allocation,
 * so that the golden vectors and a fuzzer can drive them directly.
 *
 * The normative description is docs/PROTOCOL.md; keep the two in step.
 */
#ifndef VX_PROTO_H
#define VX_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define VX_MAJOR 1
#define VX_MINOR 8

#define VX_HEADER_SIZE 12u
/* Hard cap on a frame's payload; a header claiming more is fatal. */
#define VX_MAX_PAYLOAD 65536u
#define VX_HELLO_FIXED 20u
#define VX_MAX_INFO 1024u
#define VX_MAX_ARGS 1024u
#define VX_MAX_ENVS 1024u
#define VX_EXIT_SIZE 40u
#define VX_MAX_SERIAL 36u
#define VX_MAX_LAYERS 16u
/* File requests: fixed fields before the path; longest path. */
#define VX_FILE_FIXED 24u
#define VX_MAX_PATH 4095u
#define VX_ENTRY_FIXED 32u
#define VX_PROCESS_FIXED 48u
#define VX_TERMINAL_SIZE 4u
#define VX_MAX_ARGV 4096u

enum vx_type {
    VX_HELLO = 0x01,
    VX_PING = 0x02,
    VX_PONG = 0x03,
    VX_ERROR = 0x04,
    VX_SHUTDOWN = 0x05,
    VX_BYE = 0x06,
    VX_EXEC = 0x10,
    VX_STARTED = 0x11,
    VX_DATA = 0x12,
    VX_EOF = 0x13,
    VX_WINDOW = 0x14,
    VX_SIGNAL = 0x15,
    VX_EXIT = 0x16,
    VX_RESIZE = 0x17,
    VX_MOUNT = 0x20,
    VX_UNMOUNT = 0x21,
    VX_LAYERS = 0x22,
    VX_DONE = 0x23,
    VX_STORE = 0x24,
    VX_SYNC = 0x25,
    VX_FREEZE = 0x26,
    VX_THAW = 0x27,
    VX_FOLDER = 0x28,
    VX_PUT = 0x30,
    VX_GET = 0x31,
    VX_STAT = 0x32,
    VX_LIST = 0x33,
    VX_MKDIR = 0x34,
    VX_DELETE = 0x35,
    VX_MOVE = 0x36,
    VX_ENTRY = 0x37,
    VX_PS = 0x38,
    VX_PROCESS = 0x39,
    VX_KILL = 0x3a,
};

/* Sub-streams of a process stream (the header's `sub` byte). */
enum vx_sub { VX_STDIN = 0, VX_STDOUT = 1, VX_STDERR = 2 };

/* Error codes carried by VX_ERROR frames and returned by the parser. */
enum vx_err {
    VX_E_MALFORMED = 1,
    VX_E_TOO_BIG = 2,
    VX_E_UNKNOWN_TYPE = 3,
    VX_E_BAD_STREAM = 4,
    VX_E_VERSION = 5,
    VX_E_EXEC = 6,
    VX_E_LIMIT = 7,
    VX_E_FLOW = 8,
    VX_E_INTERNAL = 9,
    VX_E_STATE = 10,
    VX_E_WORKDIR = 11,
    VX_E_MOUNT = 12,
    VX_E_BUSY = 13,
    VX_E_FILE = 14,
    VX_E_PROCESS = 15,
};

/* EXEC flags. */
#define VX_EXEC_STDIN 0x1u /* stdin is fed by DATA frames, else /dev/null */
#define VX_EXEC_POLICY 0x2u /* a 32-byte policy block follows the strings */
#define VX_EXEC_PTY 0x4u /* since 1.5: a terminal (rows, cols) ends the payload; needs STDIN */
#define VX_EXEC_KNOWN_FLAGS (VX_EXEC_STDIN | VX_EXEC_POLICY | VX_EXEC_PTY)
#define VX_POLICY_SIZE 32u

/* Flags of the file requests (each request allows some, see docs/PROTOCOL.md) and of KILL. */
#define VX_F_NO_REPLACE 0x1u /* PUT, MOVE: fail with EEXIST rather than replace */
#define VX_F_PARENTS 0x2u    /* PUT, MKDIR: create missing parent directories */
#define VX_F_NOFOLLOW 0x4u   /* STAT: describe a final symlink itself */
#define VX_F_RECURSIVE 0x8u  /* DELETE: a directory with everything in it */
#define VX_F_EXIST_OK 0x10u  /* MKDIR: an existing directory is success */
#define VX_KILL_GROUP 0x1u   /* KILL: the process's whole process group */

/* How a process ended (EXIT payload). */
enum vx_how { VX_EXITED = 0, VX_SIGNALED = 1, VX_TIMED_OUT = 2, VX_MEMORY = 3 };

struct vx_frame {
    uint32_t len;
    uint8_t type;
    uint8_t sub;
    uint32_t stream;
    const uint8_t *payload;
};

/* A length-delimited byte string inside a payload (not NUL-terminated). */
struct vx_str {
    const uint8_t *p;
    uint16_t len;
};

struct vx_hello {
    uint16_t major, minor;
    uint32_t max_payload, window, max_streams;
    struct vx_str info;
};

/* Who runs a command and within which limits (0: none / the default). */
struct vx_policy {
    uint32_t uid, gid;
    uint64_t memory_max; /* bytes, the command's cgroup memory.max */
    uint32_t pids_max;   /* its cgroup pids.max */
    uint32_t nofile;     /* RLIMIT_NOFILE */
    uint32_t cpu_seconds; /* RLIMIT_CPU of each process */
    uint32_t options;     /* VX_POLICY_* bits (since 1.4) */
    uint64_t tmp_bytes;   /* the private /tmp's size with VX_POLICY_TMP_SIZE, else 0 (since 1.7) */
};

#define VX_POLICY_PRIVATE_TMP 0x1u /* a /tmp of its own: a tmpfs in a mount namespace of its own */
#define VX_POLICY_SERVICE 0x2u     /* outlives its session: the stream goes, the process stays (since 1.6) */
#define VX_POLICY_TMP_SIZE 0x4u    /* an 8-byte u64 size of the private /tmp precedes the policy block (since 1.7) */
#define VX_POLICY_KNOWN_OPTIONS (VX_POLICY_PRIVATE_TMP | VX_POLICY_SERVICE | VX_POLICY_TMP_SIZE)
#define VX_TMP_SIZE_SIZE 8u

struct vx_exec {
    uint32_t flags, timeout_ms;
    uint16_t argc, envc;
    struct vx_str cwd;
    const uint8_t *strings; /* argc then envc encoded strings */
    size_t strings_len;
    struct vx_policy policy; /* all zero without VX_EXEC_POLICY: root, no limits */
    uint16_t rows, cols;     /* the terminal's size with VX_EXEC_PTY, else 0 */
};

/* RESIZE: a command's terminal has a new size (both at least 1). */
struct vx_resize {
    uint16_t rows, cols;
};

struct vx_exit {
    uint8_t how;
    int32_t value;
    uint64_t run_ns, utime_us, stime_us, maxrss_kb;
};

/* MOUNT: the drive with this serial, read-only at target; UNMOUNT and STORE: target empty. */
struct vx_mount {
    struct vx_str serial, target;
};

/* FOLDER: the host folder shared under virtiofs tag `tag`, mounted at `target` in the root. */
enum vx_folder_mode { VX_FOLDER_RO = 0, VX_FOLDER_RW = 1, VX_FOLDER_OVERLAY = 2 };
struct vx_folder {
    struct vx_str tag, target;
    uint8_t mode;
};

/* LAYERS: the drives stacked above the base as the root's lower layers, bottom first. */
struct vx_layers {
    uint16_t count;
    const uint8_t *serials; /* count encoded strings */
    size_t serials_len;
};

/*
 * PUT, GET, STAT, LIST, MKDIR, DELETE, MOVE share one layout; fields a
 * request does not use are 0. `size` is PUT's byte count, GET's largest
 * accepted file and LIST's most entries.
 */
struct vx_file_req {
    uint32_t flags, mode, uid, gid;
    uint64_t size;
    struct vx_str path, to; /* `to` only for MOVE */
};

/* ENTRY: one file's facts (STAT, GET, LIST). */
struct vx_entry {
    uint32_t mode, uid, gid, nlink;
    uint64_t size;
    int64_t mtime_ns;
    struct vx_str name, link;
};

/* PROCESS: one process of the guest (PS). */
struct vx_process {
    uint32_t pid, ppid, pgid, uid, stream;
    uint8_t state;
    uint64_t start_ns, cpu_us, rss_kb;
    uint16_t argc;
    const uint8_t *argv; /* argc encoded strings */
    size_t argv_len;
};

struct vx_kill {
    uint32_t pid, signal, flags;
};

struct vx_error {
    uint32_t code;
    int32_t err;
    struct vx_str message;
};

/*
 * Parses one frame from the start of buf.
 * Returns the number of bytes the frame occupies (> 0) and fills *f;
 * 0 when more bytes are needed; -VX_E_TOO_BIG or -VX_E_MALFORMED when the
 * header is unusable (fatal: the stream cannot be resynchronised).
 */
long vx_frame_parse(const uint8_t *buf, size_t len, struct vx_frame *f);

/* Type-specific checks of a delimited frame: 0, or a VX_E_* code. */
int vx_frame_check(const struct vx_frame *f);

/* Payload decoders; each returns 0 or VX_E_MALFORMED. */
int vx_hello_decode(const struct vx_frame *f, struct vx_hello *h);
int vx_exec_decode(const struct vx_frame *f, struct vx_exec *e);
int vx_exit_decode(const struct vx_frame *f, struct vx_exit *x);
int vx_error_decode(const struct vx_frame *f, struct vx_error *e);
int vx_u32_decode(const struct vx_frame *f, uint32_t *v);
int vx_mount_decode(const struct vx_frame *f, struct vx_mount *m);
int vx_unmount_decode(const struct vx_frame *f, struct vx_mount *m);
int vx_layers_decode(const struct vx_frame *f, struct vx_layers *l);
int vx_folder_decode(const struct vx_frame *f, struct vx_folder *d);
int vx_file_decode(const struct vx_frame *f, struct vx_file_req *r);
int vx_entry_decode(const struct vx_frame *f, struct vx_entry *e);
int vx_process_decode(const struct vx_frame *f, struct vx_process *p);
int vx_kill_decode(const struct vx_frame *f, struct vx_kill *k);
int vx_resize_decode(const struct vx_frame *f, struct vx_resize *r);

/* Reads the next encoded string at *pos within [p, p+n); 0 or VX_E_MALFORMED. */
int vx_str_next(const uint8_t *p, size_t n, size_t *pos, struct vx_str *s);

/* Writes a 12-byte header to out. */
void vx_header_write(uint8_t *out, uint8_t type, uint8_t sub, uint32_t stream, uint32_t len);

void vx_put_u16(uint8_t *p, uint16_t v);
void vx_put_u32(uint8_t *p, uint32_t v);
void vx_put_u64(uint8_t *p, uint64_t v);
uint16_t vx_get_u16(const uint8_t *p);
uint32_t vx_get_u32(const uint8_t *p);
uint64_t vx_get_u64(const uint8_t *p);

const char *vx_type_name(uint8_t type);
const char *vx_err_name(int code);

#endif
