/*
 * vectors_test.c - checks the init's parser against the golden vectors.
 * Usage: vectors_test Tests/Vectors/frames.vec
 */
#include "describe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *trim(char *s)
{
    while (*s == ' ')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = 0;
    return s;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTORS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    static char line[1 << 20];
    static uint8_t bytes[1 << 19];
    static char got[1 << 16];
    int total = 0, failed = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char *bar1 = strchr(line, '|'), *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        if (!bar2) {
            fprintf(stderr, "bad vector line: %s", line);
            return 2;
        }
        *bar1 = *bar2 = 0;
        char *name = trim(line), *hex = trim(bar1 + 1), *want = trim(bar2 + 1);
        size_t n = 0;
        for (char *h = hex; *h; h++) {
            if (*h == ' ')
                continue;
            int hi = hexval(h[0]), lo = h[1] ? hexval(h[1]) : -1;
            if (hi < 0 || lo < 0) {
                fprintf(stderr, "%s: bad hex\n", name);
                return 2;
            }
            bytes[n++] = (uint8_t)(hi << 4 | lo);
            h++;
        }
        size_t used = vx_describe(bytes, n, got, sizeof got);
        total++;
        if (strcmp(got, want) != 0 || (used && used != n)) {
            failed++;
            printf("FAIL %s\n  want: %s\n  got:  %s (consumed %zu of %zu)\n", name, want, got, used, n);
        }
    }
    fclose(f);
    printf("%d vectors, %d failed\n", total, failed);
    return failed || total == 0 ? 1 : 0;
}
