/*
 * net.c - see net.h. Plain ioctls: the guest has no ip(8) of its own to rely on.
 */
#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void set_addr(struct sockaddr *sa, const char *ip)
{
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    memset(in, 0, sizeof *in);
    in->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &in->sin_addr);
}

static int up(int s, const char *name)
{
    struct ifreq r;
    memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, sizeof r.ifr_name, "%s", name);
    if (ioctl(s, SIOCGIFFLAGS, &r) != 0)
        return -1;
    r.ifr_flags |= IFF_UP | IFF_RUNNING;
    return ioctl(s, SIOCSIFFLAGS, &r);
}

int net_setup(char *err, size_t n)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        snprintf(err, n, "no socket for the network setup: %s", strerror(errno));
        return -1;
    }
    /* The kernel gives lo 127.0.0.1/8 and ::1 as it comes up. */
    if (up(s, "lo") != 0) {
        snprintf(err, n, "cannot bring up lo: %s", strerror(errno));
        close(s);
        return -1;
    }
    struct stat st;
    if (stat("/sys/class/net/eth0", &st) != 0) {
        close(s);
        return 0;
    }
    struct ifreq r;
    memset(&r, 0, sizeof r);
    snprintf(r.ifr_name, sizeof r.ifr_name, "eth0");
    set_addr(&r.ifr_addr, "10.0.2.15");
    int rc = ioctl(s, SIOCSIFADDR, &r) == 0 ? 0 : -1;
    set_addr(&r.ifr_netmask, "255.255.255.0");
    if (rc == 0)
        rc = ioctl(s, SIOCSIFNETMASK, &r) == 0 && up(s, "eth0") == 0 ? 0 : -1;
    struct rtentry route;
    memset(&route, 0, sizeof route);
    set_addr(&route.rt_dst, "0.0.0.0");
    set_addr(&route.rt_genmask, "0.0.0.0");
    set_addr(&route.rt_gateway, "10.0.2.2");
    route.rt_flags = RTF_UP | RTF_GATEWAY;
    if (rc == 0 && ioctl(s, SIOCADDRT, &route) != 0)
        rc = -1;
    if (rc != 0)
        snprintf(err, n, "cannot set up eth0: %s", strerror(errno));
    close(s);
    return rc;
}
