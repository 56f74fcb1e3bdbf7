/* wire.c - see wire.h. */
#define _GNU_SOURCE
#include "wire.h"

#include "boot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
    int port, connected;
    uint8_t *out;
    size_t start, end;
} W = {-1, 0, NULL, 0, 0};

int wire_open(const char *port_path)
{
    W.out = malloc(WIRE_OUT_CAP);
    W.port = open(port_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    return W.out && W.port >= 0 ? 0 : -1;
}

int wire_port(void)
{
    return W.port;
}

void wire_connect(void)
{
    W.connected = 1;
    W.start = W.end = 0;
}

void wire_disconnect(void)
{
    W.connected = 0;
    W.start = W.end = 0;
}

int wire_connected(void)
{
    return W.connected;
}

size_t wire_used(void)
{
    return W.end - W.start;
}

size_t wire_room(void)
{
    return WIRE_OUT_CAP - wire_used();
}

uint8_t *wire_reserve(size_t n)
{
    if (WIRE_OUT_CAP - W.end < n && W.start > 0) {
        memmove(W.out, W.out + W.start, wire_used());
        W.end -= W.start;
        W.start = 0;
    }
    return WIRE_OUT_CAP - W.end < n ? NULL : W.out + W.end;
}

void wire_commit(size_t n)
{
    W.end += n;
}

int wire_flush(void)
{
    while (wire_used() > 0) {
        ssize_t w = write(W.port, W.out + W.start, wire_used());
        if (w > 0) {
            W.start += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return 0;
        return -1;
    }
    W.start = W.end = 0;
    return 0;
}

void emit(uint8_t type, uint8_t sub, uint32_t stream, const void *payload, uint32_t len)
{
    if (!W.connected)
        return;
    uint8_t *d = wire_reserve(VX_HEADER_SIZE + len);
    if (!d) {
        /* Cannot happen while the reply room rule holds; never overflow. */
        vx_log("output buffer full, %s frame for stream %u dropped", vx_type_name(type), stream);
        return;
    }
    vx_header_write(d, type, sub, stream, len);
    if (len)
        memcpy(d + VX_HEADER_SIZE, payload, len);
    wire_commit(VX_HEADER_SIZE + len);
}

void emit_u32(uint8_t type, uint8_t sub, uint32_t stream, uint32_t v)
{
    uint8_t p[4];
    vx_put_u32(p, v);
    emit(type, sub, stream, p, 4);
}

void emit_error(uint32_t stream, int code, int err, const char *fmt, ...)
{
    uint8_t p[8 + 512];
    vx_put_u32(p, (uint32_t)code);
    vx_put_u32(p + 4, (uint32_t)err);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)p + 8, sizeof p - 8, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof p - 9)
        n = (int)(sizeof p - 9);
    emit(VX_ERROR, 0, stream, p, 8u + (uint32_t)n);
}
