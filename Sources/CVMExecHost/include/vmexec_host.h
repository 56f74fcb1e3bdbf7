/*
 * vmexec_host.h - host facts Swift cannot read directly: whether KVM really
 * runs a guest here, and the TSC frequency a microvm guest must be told.
 */
#ifndef VMEXEC_HOST_H
#define VMEXEC_HOST_H

/* KVM probe outcomes. */
enum vmexec_kvm_probe {
    VMEXEC_KVM_USABLE = 0,     /* a vCPU ran a HLT and came back */
    VMEXEC_KVM_ABSENT = 1,     /* no /dev/kvm, or it cannot be opened */
    VMEXEC_KVM_BROKEN = 2,     /* ioctls failed, or the vCPU exited for another reason */
    VMEXEC_KVM_HUNG = 3,       /* KVM_RUN did not return within the deadline */
    VMEXEC_KVM_UNSUPPORTED = 4 /* no probe for this host architecture */
};

/*
 * Runs a one-instruction guest (HLT) under KVM in a forked child and waits
 * at most timeout_ms for it; the child is killed when the deadline passes.
 */
int vmexec_kvm_probe(int timeout_ms);

/* Measures the host TSC frequency in kHz over ~20 ms; 0 where there is no TSC. */
long vmexec_tsc_khz(void);

/*
 * Starts `path` with `argv` (NULL-terminated), stdin from /dev/null and
 * stdout/stderr to `log_fd`, in its own process group, with every other
 * descriptor closed. The child is killed with SIGKILL when this process
 * dies, however it dies: the fork happens on a dedicated thread that lives
 * as long as the process (the parent-death signal follows the forking
 * thread). Returns the pid, or -errno.
 */
int vmexec_spawn(const char *path, char *const argv[], int log_fd);

/*
 * As vmexec_spawn, in a user namespace of its own where `inside_uid` and
 * `inside_gid` are the caller's uid and gid (and no other ids exist), with
 * a mount namespace of its own in which `read_only_path` (or nothing, when
 * NULL) is bound read-only. It keeps the namespace's capabilities across
 * exec (ambient), which reach only what the namespace owns. For virtiofsd:
 * files the guest's user `inside_uid` makes belong to the caller. A step
 * that fails is written to `log_fd` and the child exits 126.
 */
int vmexec_spawn_confined(const char *path, char *const argv[], int log_fd, unsigned inside_uid, unsigned inside_gid,
                          const char *read_only_path);

/*
 * Starts `path` with `argv` as a daemon: a session of its own, stdin from
 * /dev/null, stdout/stderr appended to `log_fd`, every other descriptor
 * closed, not killed when this process ends. Returns the pid, or -errno.
 */
int vmexec_spawn_detached(const char *path, char *const argv[], int log_fd);

/* Waits for `pid` to end; returns its wait status, or -errno. Blocks. */
int vmexec_wait(int pid);

#endif
