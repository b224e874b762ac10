/* The pixels-in preprocessing alone: a grey frame of any size -> the 28x28 digit the
 * network takes (white on black, row-major). Internal to the library; tests compare it
 * with the preprocessing graph (export/pixels.py) in ONNX Runtime. */
#ifndef MNIST_FRAME_H
#define MNIST_FRAME_H

/* Writes the digit and returns 0, or returns MNIST_ERROR_NULL / MNIST_ERROR_SIZE (mnist.h)
   and leaves digit untouched. */
int mnist_frame_to_digit(const unsigned char *pixels, int height, int width, unsigned char digit[784]);

#endif /* MNIST_FRAME_H */
