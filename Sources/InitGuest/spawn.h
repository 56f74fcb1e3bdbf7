/*
 * spawn.h - starting a command's process: into its cgroup, its /tmp, its
 * root and its user, then execve.
 */
#ifndef VX_SPAWN_H
#define VX_SPAWN_H

#include <sys/types.h>

struct vx_policy;

/* Where a failed spawn stopped. */
enum spawn_stage { STAGE_SETUP = 1, STAGE_TMP, STAGE_CHROOT, STAGE_USER, STAGE_CHDIR, STAGE_EXEC };

struct spawn_request {
    int in_fd, out_fd, err_fd; /* become 0, 1, 2 */
    const char *cwd;           /* "" for / */
    char **argv, **envp;
    const struct vx_policy *policy;
    int cgroup_fd;             /* the command's cgroup directory, or -1 */
    const char *tmp_options;   /* tmpfs options of a private /tmp */
    int controlling_tty;       /* in_fd is a terminal: it becomes the session's controlling terminal */
};

struct spawn_failure {
    int stage; /* 0: the program was executed */
    int err;
};

/* Pins the init to one CPU (commands start there, then take every CPU). */
void spawn_setup(void);

/*
 * Starts the process; returns when it has executed its program or failed
 * (then it has exited with 127, still to be reaped, and *failed says where
 * and why). -1 with errno when no process could be made.
 */
pid_t spawn_command(const struct spawn_request *r, struct spawn_failure *failed);

/* "cannot <this> ..." for a failed stage. */
const char *spawn_stage_name(int stage);

#endif
