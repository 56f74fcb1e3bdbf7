/*
 * vmexec-init: PID 1 of a vmexec guest.
 *
 * Boots the guest (boot.c), then serves the control port forever
 * (serve.c). Like tini, it is deliberately small: no configuration files,
 * no shell, no dynamic linking.
 */
#define _GNU_SOURCE
#include "boot.h"
#include "serve.h"

#include <signal.h>
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* CLOCK_BOOTTIME in milliseconds: time since the kernel started. */
static long boot_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int main(void)
{
    if (getpid() != 1) {
        fprintf(stderr, "vmexec-init runs only as PID 1 of a vmexec guest\n");
        return 2;
    }
    long started_ms = boot_ms();
    umask(022);
    signal(SIGPIPE, SIG_IGN);
    reboot(RB_DISABLE_CAD);

    static char boot_error[256];
    if (boot_setup(boot_error, sizeof boot_error) != 0)
        vx_log("boot failed: %s", boot_error);

    char port[64];
    while (boot_find_port(port, sizeof port, 5000) != 0)
        vx_log("still looking for the virtio-serial port named %s", VX_PORT_NAME);
    serve_forever(port, boot_error, started_ms, boot_ms());
}
