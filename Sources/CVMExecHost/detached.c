/*
 * detached.c - start a daemon that outlives its starter and holds none of
 * its descriptors.
 *
 * The daemon runs in a session of its own (no terminal signals reach it),
 * its stdin /dev/null and its output appended to a log. Every descriptor
 * above 2 is closed before exec: whoever ran the starter waits for EOF on
 * pipes and sockets it handed down (a shell's $(...), Foundation's Process),
 * and a daemon holding them would make that wait last as long as the daemon.
 */
#define _GNU_SOURCE
#include "vmexec_host.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

int vmexec_spawn_detached(const char *path, char *const argv[], int log_fd)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid < 0 ? -errno : pid;
    if (setsid() < 0)
        _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0)
        _exit(127);
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    execv(path, argv);
    _exit(127);
}
