/*
 * zygote-client: a command whose process comes from a warm interpreter.
 *
 *   zygote-client SOCKET PROGRAM [ARG...]
 *
 * The init starts this like any command: in the command's cgroup, mount and
 * IPC namespaces, root, user and limits. It hands its stdin, stdout and
 * stderr, its arguments and its environment to the zygote listening on
 * SOCKET (images/runner/vmexec_runner/zygote.py), whose forked child takes
 * this process's isolation (everything above, read by the zygote from the
 * kernel, never from this message) and runs the job. This process stays the
 * command: it forwards the signals it gets to the child's process group and
 * ends as the child ended (the same exit status, or the same signal), so the
 * init's timeouts, limits and clean-up apply unchanged; when it ends, the
 * init kills its cgroup and the child with it.
 *
 * When nothing listens on SOCKET (no zygote yet, or it is still importing),
 * it executes PROGRAM ARG... itself: a cold start, never a failure.
 *
 *   zygote-client --watch PID
 *
 * waits until process PID has ended (the host's watch on a zygote it did not
 * start itself: one restored running with a saved state). 1 if there is none.
 *
 * Messages (native byte order; one socket, SOCK_STREAM):
 *   client -> zygote  "VXZ1" u32 length, then `length` bytes: the arguments
 *                     from PROGRAM on, each NUL-terminated, an empty string,
 *                     then the environment the same way; fds 0, 1, 2 attached
 *   zygote -> client  'S' i32 pid: the child exists
 *                     'E' i32 wait status: the child ended
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAX_REQUEST (1u << 20)

/* The child's pid once known (0 before), and whether it has been reaped. */
static volatile sig_atomic_t child_pid;
static volatile sig_atomic_t child_ended;
/* A signal that came before the child existed, delivered once it does. */
static volatile sig_atomic_t pending_signal;

static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGALRM};

/* The child leads its own process group from its first step on (before
 * that, the process alone gets it). Its pid stays its own until the zygote
 * reaps it, which this process hears of next ('E'); pids are handed out in
 * order up to pid_max, so none is reused in that moment. */
static void signal_child(int sig)
{
    int saved = errno;
    if (kill(-child_pid, sig) != 0 && errno == ESRCH)
        kill(child_pid, sig);
    errno = saved;
}

static void forward(int sig)
{
    if (child_pid > 0 && !child_ended)
        signal_child(sig);
    else
        pending_signal = sig;
}

static void die(const char *what)
{
    fprintf(stderr, "vmexec zygote client: %s: %s\n", what, strerror(errno));
    exit(125);
}

/* Appends NUL-terminated strings to buf; -1 when they do not fit. */
static int append(char *buf, size_t *len, char *const *strings)
{
    for (; *strings; strings++) {
        size_t n = strlen(*strings) + 1;
        if (n > MAX_REQUEST - *len)
            return -1;
        memcpy(buf + *len, *strings, n);
        *len += n;
    }
    if (*len >= MAX_REQUEST)
        return -1;
    buf[(*len)++] = '\0';
    return 0;
}

static void send_request(int sock, char **args)
{
    static char payload[MAX_REQUEST + 1];
    size_t len = 0;
    char *none[] = {NULL};
    if (append(payload, &len, args) != 0 || append(payload, &len, environ ? environ : none) != 0) {
        errno = E2BIG;
        die("arguments and environment");
    }
    struct {
        char magic[4];
        uint32_t length;
    } head = {{'V', 'X', 'Z', '1'}, (uint32_t)len};
    int fds[3] = {0, 1, 2};
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {&head, sizeof head};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (sendmsg(sock, &msg, MSG_NOSIGNAL) != (ssize_t)sizeof head)
        die("send the job to the zygote");
    for (size_t sent = 0; sent < len;) {
        ssize_t n = send(sock, payload + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("send the job to the zygote");
        sent += (size_t)n;
    }
}

/* Reads one 5-byte message; 0 at the end of the stream. */
static int receive(int sock, char *type, int32_t *value)
{
    unsigned char buf[5];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = recv(sock, buf + got, sizeof buf - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("hear from the zygote");
        if (n == 0) {
            if (got)
                errno = EPROTO, die("hear from the zygote");
            return 0;
        }
        got += (size_t)n;
    }
    *type = (char)buf[0];
    memcpy(value, buf + 1, sizeof *value);
    return 1;
}

/* Ends this process as the child ended. */
static void end_as(int status)
{
    if (WIFEXITED(status))
        exit(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        sigset_t only;
        sigemptyset(&only);
        sigaddset(&only, sig);
        signal(sig, SIG_DFL);
        sigprocmask(SIG_UNBLOCK, &only, NULL);
        raise(sig);
        exit(128 + sig);
    }
    exit(125);
}

/* Waits for `pid` to end, through a pidfd (Linux 5.3). */
static int watch(const char *pid_text)
{
    char *end;
    long pid = strtol(pid_text, &end, 10);
    if (*end || pid <= 0)
        return 125;
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd < 0)
        return 1;
    struct pollfd p = {fd, POLLIN, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--watch") == 0)
        return watch(argv[2]);
    if (argc < 3) {
        fprintf(stderr, "usage: zygote-client SOCKET PROGRAM [ARG...]\n");
        return 125;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        die(argv[1]);
    }
    strcpy(addr.sun_path, argv[1]);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        die("socket");
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        /* No warm interpreter (yet): start cold, as PROGRAM would have. */
        close(sock);
        execvp(argv[2], argv + 2);
        die(argv[2]);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    send_request(sock, argv + 2);

    char type;
    int32_t value;
    while (receive(sock, &type, &value)) {
        if (type == 'S' && value > 0 && child_pid == 0) {
            child_pid = value;
            if (pending_signal)
                signal_child(pending_signal);
        } else if (type == 'E') {
            child_ended = 1;
            end_as(value);
        } else {
            errno = EPROTO;
            die("hear from the zygote");
        }
    }
    /* The zygote went away before the job ended: take the job down with it. */
    if (child_pid > 0)
        signal_child(SIGKILL);
    fprintf(stderr, "vmexec zygote client: the warm interpreter ended before the job\n");
    return 125;
}
