/*
 * host_tool.h - starting a host program with its output on a pipe, every
 * descriptor owned by the caller (Foundation's Process can close one twice
 * when programs start from several threads at once).
 */
#ifndef HOST_TOOL_H
#define HOST_TOOL_H

#include <sys/types.h>

/*
 * Starts argv[0] (a path) with `envp`, in `directory` when not NULL, stdin
 * from /dev/null, stdout and stderr into one pipe whose read end goes to
 * *output. The pipe is close-on-exec from its creation, so no other child
 * inherits it. Returns the child's pid, or -errno.
 */
pid_t host_tool_spawn(const char *const argv[], const char *const envp[], const char *directory, int *output);

#endif
