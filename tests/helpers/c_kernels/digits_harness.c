/* Feeds 28x28 digits from stdin to the real mnist_classify, each in a buffer of exactly 784
 * bytes from malloc, so that AddressSanitizer catches any read outside it
 * (tests/test_c_model.py builds this with a whole library and -fsanitize=address,undefined).
 *
 * stdin: 784 bytes per digit. stdout, per digit: int32 label, the 10 float probabilities. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "mnist.h"

int main(void)
{
    unsigned char *pixels = malloc(784);
    float *probabilities = malloc(10 * sizeof(float));

    if (pixels == NULL || probabilities == NULL) {
        fputs("harness: out of memory\n", stderr);
        return 2;
    }
    while (fread(pixels, 1, 784, stdin) == 784) {
        const int32_t label = mnist_classify(pixels, probabilities);
        fwrite(&label, sizeof label, 1, stdout);
        fwrite(probabilities, sizeof(float), 10, stdout);
    }
    free(pixels);
    free(probabilities);
    return 0;
}
