/* Feeds frames from stdin to mnist_frame_to_digit and mnist_classify_frame, each frame in a
 * buffer of exactly height * width bytes from malloc, so that AddressSanitizer catches any
 * read outside it (tests/test_c_frame.py builds this with -fsanitize=address,undefined).
 *
 * stdin, per frame: int32 height, int32 width, int32 flags (1: pass NULL pixels, 2: pass
 * NULL digit and probabilities, 4: no pixels follow, pass a 1-byte buffer), then
 * height * width bytes when both are positive and neither flag 1 nor 4 is set.
 * stdout, per frame: int32 status of mnist_frame_to_digit, int32 of mnist_classify_frame,
 * the 784 digit bytes, the 10 float probabilities. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mnist.h"
#include "mnist_frame.h"

static int read_exact(void *dst, size_t n)
{
    return fread(dst, 1, n, stdin) == n;
}

int main(void)
{
    int32_t header[3];
    while (read_exact(header, sizeof header)) {
        const int32_t height = header[0], width = header[1], flags = header[2];
        const size_t n = height > 0 && width > 0 && !(flags & 5) ? (size_t)height * (size_t)width : 0;
        unsigned char *pixels = (flags & 1) ? NULL : malloc(n ? n : 1);
        unsigned char *digit = malloc(784);
        float *probabilities = malloc(10 * sizeof(float));
        int32_t status[2];

        if ((!(flags & 1) && pixels == NULL) || digit == NULL || probabilities == NULL) {
            fputs("harness: out of memory\n", stderr);
            return 2;
        }
        if (n && !read_exact(pixels, n)) {
            fputs("harness: truncated frame on stdin\n", stderr);
            return 2;
        }
        memset(digit, 0xAB, 784);
        memset(probabilities, 0, 10 * sizeof(float));
        status[0] = mnist_frame_to_digit(pixels, height, width, (flags & 2) ? NULL : digit);
        status[1] = mnist_classify_frame(pixels, height, width, (flags & 2) ? NULL : probabilities);
        fwrite(status, sizeof status, 1, stdout);
        fwrite(digit, 1, 784, stdout);
        fwrite(probabilities, sizeof(float), 10, stdout);
        free(pixels);
        free(digit);
        free(probabilities);
    }
    return 0;
}
