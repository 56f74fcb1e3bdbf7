/*
 * boot.c - bring the guest up and take it down, as PID 1.
 *
 * Disks are found by their serial (drives.c), never by the order the kernel
 * lettered them. Modules are loaded in the order listed
 * in /lib/modules/order, which the image build computes from the modules'
 * own `depends=` fields.
 */
#define _GNU_SOURCE
#include "boot.h"
#include "net.h"
#include "drives.h"
#include "jobs.h"
#include "userland.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void vx_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    char out[540];
    int m = snprintf(out, sizeof out, "vmexec-init: %.*s", n, line);
    if (m > 0 && write(STDERR_FILENO, out, (size_t)m) < 0) {
        /* nowhere left to report to */
    }
}

void vx_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int must_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                      const char *data, char *err, size_t errlen)
{
    mkdir(dst, 0755);
    if (mount(src, dst, type, flags, data) == 0)
        return 0;
    snprintf(err, errlen, "mount %s on %s (%s): %s", src, dst, type ? type : "bind", strerror(errno));
    return -1;
}

long vx_read_small(const char *path, char *buf, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, n - 1);
    close(fd);
    if (r >= 0)
        buf[r] = 0;
    return (long)r;
}

/* Reads a small sysfs file into buf, without its trailing newline. */
static int read_line(const char *path, char *buf, size_t n)
{
    long r = vx_read_small(path, buf, n);
    if (r < 0)
        return -1;
    while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == ' '))
        buf[--r] = 0;
    return 0;
}

static int load_modules(char *err, size_t errlen)
{
    FILE *f = fopen("/lib/modules/order", "re");
    if (!f)
        return 0; /* a kernel with everything built in needs none */
    char name[256];
    int rc = 0;
    while (fgets(name, sizeof name, f)) {
        name[strcspn(name, "\r\n")] = 0;
        if (!name[0] || name[0] == '#')
            continue;
        char path[300];
        snprintf(path, sizeof path, "/lib/modules/%s", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)) {
            snprintf(err, errlen, "load module %s: %s", name, strerror(errno));
            rc = -1;
        }
        if (fd >= 0)
            close(fd);
        if (rc)
            break;
    }
    fclose(f);
    return rc;
}

int boot_find_port(char *path, size_t n, int wait_ms)
{
    for (int waited = 0;; waited += 10) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p[300], val[128];
            snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
            if (read_line(p, val, sizeof val) == 0 && strcmp(val, VX_PORT_NAME) == 0 &&
                snprintf(path, n, "/dev/%s", e->d_name) < (int)n) {
                closedir(d);
                if (access(path, R_OK | W_OK) == 0)
                    return 0;
                d = NULL;
                break;
            }
        }
        if (d)
            closedir(d);
        if (waited >= wait_ms)
            return -1;
        vx_sleep_ms(10);
    }
}

int boot_setup(char *err, size_t errlen)
{
    const unsigned long safe = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (must_mount("proc", "/proc", "proc", safe, NULL, err, errlen) ||
        must_mount("sysfs", "/sys", "sysfs", safe, NULL, err, errlen) ||
        must_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755", err, errlen) ||
        must_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620", err, errlen) ||
        must_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", err, errlen) ||
        must_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", err, errlen))
        return -1;

    /* Our stdio goes to the console, so that boot problems are visible in its log. */
    int con = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (con >= 0) {
        dup2(con, STDIN_FILENO);
        dup2(con, STDOUT_FILENO);
        dup2(con, STDERR_FILENO);
        close(con);
    }
    sethostname("vmexec", 6);
    char why[160];
    if (userland_setup(why, sizeof why) != 0)
        vx_log("%s; programs may miss part of the usual /dev", why);

    if (load_modules(err, errlen))
        return -1;
    if (jobs_setup(why, sizeof why) != 0)
        vx_log("%s; commands run without memory and process limits", why);
    if (net_setup(err, errlen) != 0)
        return -1;

    return drives_setup_root(err, errlen);
}

/* Signals every process but PID 1, then reaps until none is left or the grace ends. */
static void end_all(int sig, int grace_ms)
{
    kill(-1, sig);
    for (int waited = 0; waited < grace_ms; waited += 10) {
        pid_t p;
        while ((p = waitpid(-1, NULL, WNOHANG)) > 0) {
        }
        if (p < 0 && errno == ECHILD)
            return;
        vx_sleep_ms(10);
    }
}

void boot_poweroff(void)
{
    end_all(SIGTERM, 1000);
    end_all(SIGKILL, 1000);
    sync();
    static const char *const mounts[] = {VX_NEWROOT "/run", VX_NEWROOT "/tmp", VX_NEWROOT "/dev",
                                         VX_NEWROOT "/sys", VX_NEWROOT "/proc", VX_NEWROOT,
                                         "/mnt/store", "/mnt/rw", "/mnt/lower"};
    for (size_t i = 0; i < sizeof mounts / sizeof mounts[0]; i++)
        if (umount2(mounts[i], 0) != 0 && errno != EINVAL && errno != ENOENT)
            umount2(mounts[i], MNT_DETACH);
    /* If the store is still busy somehow, at least leave its journal clean. */
    mount(NULL, "/mnt/store", NULL, MS_REMOUNT | MS_RDONLY, NULL);
    sync();
    reboot(RB_POWER_OFF);
    /* QEMU runs with -no-reboot, so a reboot request ends it as well. */
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}
