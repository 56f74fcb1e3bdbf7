/*
 * wire.h - the control port and the frames queued for the host.
 *
 * One output buffer, allocated once. Process output may fill only half of
 * it (WIRE_DATA_LIMIT), so a reply always finds room; the loop reads host
 * frames only while WIRE_REPLY_ROOM is free.
 */
#ifndef VX_WIRE_H
#define VX_WIRE_H

#include "vx_proto.h"

#include <stddef.h>
#include <stdint.h>

#define WIRE_OUT_CAP (1u << 20)
#define WIRE_DATA_LIMIT (WIRE_OUT_CAP / 2)
#define WIRE_REPLY_ROOM (VX_HEADER_SIZE + VX_MAX_PAYLOAD + 256)

/* Opens the port and the output buffer; 0, or -1 with errno. */
int wire_open(const char *port_path);
int wire_port(void);

/* A host is connected: frames are queued from now on. */
void wire_connect(void);
/* The host is gone: what was queued is dropped, and frames until the next connect. */
void wire_disconnect(void);
int wire_connected(void);

size_t wire_used(void);
size_t wire_room(void);
/* Room for n more bytes at the end of the queue (compacting it), or NULL;
 * wire_commit(n) queues what was written there. */
uint8_t *wire_reserve(size_t n);
void wire_commit(size_t n);

/* Writes what the port takes now; -1 when the host is gone (the caller ends the session). */
int wire_flush(void);

/* Queues a frame. */
void emit(uint8_t type, uint8_t sub, uint32_t stream, const void *payload, uint32_t len);
void emit_u32(uint8_t type, uint8_t sub, uint32_t stream, uint32_t v);
/* Queues an ERROR: a VX_E_* code, the errno behind it (or 0) and a sentence. */
void emit_error(uint32_t stream, int code, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
