/* Test-only mnist_classify: a fixed function of every pixel, so a test can tell that
 * mnist_classify_frame handed it the digit mnist_frame_to_digit makes. */
#include "mnist.h"

int mnist_classify(const unsigned char pixels[784], float probabilities[10])
{
    unsigned long sum = 0;
    int i;
    for (i = 0; i < 784; i++) {
        sum += (unsigned long)pixels[i] * (unsigned long)(i + 1);
    }
    for (i = 0; i < 10; i++) {
        probabilities[i] = (float)pixels[i * 78 + 39];
    }
    return (int)(sum % 10);
}
