/*
 * userland.c - see userland.h. What udev, systemd-tmpfiles and
 * systemd-sysctl would leave behind on a Debian system, done with plain
 * system calls: the guest has no udev and no systemd.
 */
#define _GNU_SOURCE
#include "userland.h"

#include "boot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int failed(char *err, size_t n, const char *what, const char *where)
{
    snprintf(err, n, "%s %s: %s", what, where, strerror(errno));
    return -1;
}

static int write_sysctl(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = (ssize_t)strlen(value);
    int rc = write(fd, value, (size_t)len) == len ? 0 : -1;
    close(fd);
    return rc;
}

int userland_setup(char *err, size_t n)
{
    /* udev's links: bash's <(...), `cat /dev/stdin`, programs that open /dev/fd/N. */
    static const char *const links[][2] = {
        {"/proc/self/fd", "/dev/fd"},
        {"/proc/self/fd/0", "/dev/stdin"},
        {"/proc/self/fd/1", "/dev/stdout"},
        {"/proc/self/fd/2", "/dev/stderr"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) != 0 && errno != EEXIST)
            return failed(err, n, "link", links[i][1]);
    /* POSIX shared memory and semaphores live in /dev/shm, message queues in
     * /dev/mqueue. These are the guest's shared ones; a command with a
     * private /tmp gets its own of both (userland_private). */
    mkdir("/dev/shm", 01777);
    if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
        return failed(err, n, "mount a tmpfs on", "/dev/shm");
    mkdir("/dev/mqueue", 01777);
    if (mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return failed(err, n, "mount the message queues on", "/dev/mqueue");

    /*
     * Hardening switches, as Debian's kernel and systemd set them (written
     * here too, so that a kernel built otherwise gets them): the kernel log
     * and kernel addresses only for privileged processes; no following a
     * symlink or hard-linking a file one does not own in a sticky
     * directory, no opening someone else's FIFO or file there with O_CREAT
     * (the /tmp races). A kernel without one of them is no reason to fail.
     */
    static const char *const sysctls[][2] = {
        {"/proc/sys/kernel/dmesg_restrict", "1"},  {"/proc/sys/kernel/kptr_restrict", "1"},
        {"/proc/sys/fs/protected_symlinks", "1"},  {"/proc/sys/fs/protected_hardlinks", "1"},
        {"/proc/sys/fs/protected_fifos", "1"},     {"/proc/sys/fs/protected_regular", "1"},
    };
    for (size_t i = 0; i < sizeof sysctls / sizeof sysctls[0]; i++)
        write_sysctl(sysctls[i][0], sysctls[i][1]);
    return 0;
}

/* The host name now, and whether /etc/hosts in the root is the init's file. */
static char current_name[64] = "vmexec";
static int hosts_bound;

static int bind_hosts(char *err, size_t n)
{
    const char *file = VX_NEWROOT "/run/vmexec-hosts";
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return failed(err, n, "write", "/run/vmexec-hosts");
    char text[512];
    int len = snprintf(text, sizeof text,
                       "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback %s\n"
                       "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
                       current_name, current_name);
    int ok = len > 0 && write(fd, text, (size_t)len) == len;
    close(fd);
    if (!ok)
        return failed(err, n, "write", "/run/vmexec-hosts");
    if (!hosts_bound) {
        if (mount(file, VX_NEWROOT "/etc/hosts", NULL, MS_BIND, NULL) != 0)
            return failed(err, n, "bind", "/etc/hosts");
        hosts_bound = 1;
    }
    return 0;
}

int userland_hostname(const char *name, char *err, size_t n)
{
    if (sethostname(name, strlen(name)) != 0)
        return failed(err, n, "set", "the host name");
    snprintf(current_name, sizeof current_name, "%s", name);
    if (!hosts_bound && strcmp(name, "vmexec") == 0)
        return 0; /* the image's own file names it */
    return bind_hosts(err, n);
}

int userland_setup_root(char *err, size_t n)
{
    /* /run is a fresh tmpfs with each root; /var/lock points at /run/lock. */
    const char *lock = VX_NEWROOT "/run/lock";
    if ((mkdir(lock, 01777) != 0 && errno != EEXIST) || chmod(lock, 01777) != 0)
        return failed(err, n, "make", "/run/lock");
    /* A new root has the image's /etc/hosts: name the host in it again. */
    hosts_bound = 0;
    if (strcmp(current_name, "vmexec") != 0 && bind_hosts(err, n) != 0)
        return -1;
    /* The cgroup hierarchy, read-only: a command finds its own limits
     * (/proc/self/cgroup names its group), as JVMs, Go and Node.js look for. */
    struct stat st;
    const char *cgroup = VX_NEWROOT "/sys/fs/cgroup";
    if (stat("/sys/fs/cgroup/cgroup.controllers", &st) == 0 &&
        (mount("/sys/fs/cgroup", cgroup, NULL, MS_BIND, NULL) != 0 ||
         mount(NULL, cgroup, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0))
        return failed(err, n, "mount the cgroup hierarchy read-only on", "/sys/fs/cgroup");
    return 0;
}

int userland_private(const char *tmpfs_options)
{
    const unsigned long flags = MS_NOSUID | MS_NODEV;
    if (mount("tmpfs", VX_NEWROOT "/tmp", "tmpfs", flags, tmpfs_options) != 0 ||
        mount("tmpfs", VX_NEWROOT "/dev/shm", "tmpfs", flags, tmpfs_options) != 0)
        return -1;
    /* A mqueue mount shows the queues of the mounting process's IPC namespace. */
    return mount("mqueue", VX_NEWROOT "/dev/mqueue", "mqueue", flags | MS_NOEXEC, NULL);
}
