/*
 * exec.h - commands: EXEC starts one on a new stream (its cgroup, pipes,
 * policy), the loop reaps them, kills those past their deadline or stuck at
 * their memory limit, and reports EXIT once their output is drained.
 */
#ifndef VX_EXEC_H
#define VX_EXEC_H

#include "vx_proto.h"

#include <stdint.h>

/* Once, before serving: the spawner and /dev/null for commands without stdin. */
void exec_setup(void);

/* EXEC: answers STARTED, or ERROR (a failed exec is an immediate error). */
void exec_start(const struct vx_frame *f);

/* Collects every ended child (after SIGCHLD on `sigfd`); what a command left behind goes too. */
void exec_reap(int sigfd);

/* Sends EXIT for commands that ended and whose output is drained, while the output has room. */
void exec_report_exits(void);

/* Kills commands past their deadline or stuck at their memory limit; returns
 * the poll timeout (ms) to the next deadline or check, or -1 for none. */
int exec_check_deadlines(void);

/* The stream of the command whose process group is `pgid`, or 0. */
uint32_t exec_stream_of_group(uint32_t pgid);

/* KILL: a signal to a guest process or its group; DONE or ERROR. */
void exec_kill_request(const struct vx_frame *f);

#endif
