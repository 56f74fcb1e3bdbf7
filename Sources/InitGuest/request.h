/*
 * request.h - why a host request (file or process) failed: what its ERROR
 * frame carries.
 */
#ifndef VX_REQUEST_H
#define VX_REQUEST_H

struct request_fail {
    int code;      /* a VX_E_* code */
    int err;       /* the errno of the step that failed, or 0 */
    char msg[512]; /* a sentence naming the path or process */
};

#endif
