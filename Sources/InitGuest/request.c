/* request.c - see request.h. */
#include "request.h"

#include <stdarg.h>
#include <stdio.h>

int request_failed(struct request_fail *f, int code, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->code = code;
    f->err = err;
    return -1;
}
