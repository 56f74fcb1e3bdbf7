/*
 * request.h - why a host request failed: what its ERROR frame carries. Every
 * request handler (files, processes, drives) reports failure in this shape.
 */
#ifndef VX_REQUEST_H
#define VX_REQUEST_H

struct request_fail {
    int code;      /* a VX_E_* code */
    int err;       /* the errno of the step that failed, or 0 */
    char msg[512]; /* a sentence naming the path, drive or process */
};

/* Fills `f` (the sentence from fmt) and returns -1, for `return request_failed(...)`. */
int request_failed(struct request_fail *f, int code, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
