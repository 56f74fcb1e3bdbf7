/* describe.h - canonical text of a parse result, as written in Tests/Vectors/frames.vec. */
#ifndef VX_DESCRIBE_H
#define VX_DESCRIBE_H
#include <stddef.h>
#include <stdint.h>

/* Parses buf as one frame and writes its canonical description to out.
 * Returns the number of bytes the parse consumed (0 when none). */
size_t vx_describe(const uint8_t *buf, size_t len, char *out, size_t cap);

#endif
