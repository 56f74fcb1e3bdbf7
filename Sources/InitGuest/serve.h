/*
 * serve.h - PID 1's event loop: speaks the protocol on the control port,
 * spawns, feeds, drains, times out and reaps processes.
 */
#ifndef VX_SERVE_H
#define VX_SERVE_H

/*
 * Serves the port at `port_path` forever. `boot_error`, when not empty,
 * is reported in HELLO and refuses every EXEC with that sentence.
 * `init_ms` and `ready_ms` (milliseconds since the kernel started, when the
 * init started and when the guest was set up) are reported in HELLO.
 */
void serve_forever(const char *port_path, const char *boot_error, long init_ms, long ready_ms)
    __attribute__((noreturn));

#endif
