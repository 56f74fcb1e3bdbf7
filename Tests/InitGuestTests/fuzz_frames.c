/*
 * fuzz_frames.c - libFuzzer target for the init's frame parser: any bytes,
 * parsed frame by frame as the init does, checked and described. Under
 * AddressSanitizer a read outside the input is a crash.
 */
#include "describe.h"
#include "vx_proto.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char text[1 << 17];
    size_t off = 0;
    while (off < size) {
        struct vx_frame f;
        long n = vx_frame_parse(data + off, size - off, &f);
        if (n <= 0)
            break;
        if ((size_t)n > size - off || f.len > VX_MAX_PAYLOAD)
            __builtin_trap();
        vx_describe(data + off, size - off, text, sizeof text);
        off += (size_t)n;
    }
    return 0;
}
