/* Test-only stand-in for the generated mnist.h (tests/test_c_frame.py): mnist_classify's
 * prototype and the frame API fragment the generator pastes into the real header. */
#ifndef MNIST_H
#define MNIST_H

/* 28x28 MNIST-style grey pixels (white digit on black, row-major); returns the label 0-9 */
int mnist_classify(const unsigned char pixels[784], float probabilities[10]);

#include "frame_api.h"

#endif /* MNIST_H */
