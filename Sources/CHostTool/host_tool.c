/* host_tool.c - see host_tool.h. */
#define _GNU_SOURCE
#include "host_tool.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

pid_t host_tool_spawn(const char *const argv[], const char *const envp[], const char *directory, int *output)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -errno;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    if (directory)
        posix_spawn_file_actions_addchdir_np(&actions, directory);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &actions, NULL, (char *const *)argv, (char *const *)envp);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return -rc;
    }
    *output = fds[0];
    return pid;
}
