/* ---- mnist_classify_frame: any grey frame (mnist_frame.c) ----
 *
 * Error codes, returned as negative values instead of a label:
 *   MNIST_ERROR_NULL  a pointer argument is NULL (checked first);
 *   MNIST_ERROR_SIZE  height or width is 0 or negative, or height * width exceeds INT_MAX.
 * Every other frame is taken, from 1x1 up: a blank one (no ink) gives the all-black digit,
 * which the network then classifies like any other.
 *
 * Memory: no static or global buffers, no malloc; the frame is read in place, in a few
 * passes, and never beyond height * width bytes. The stack of one call is bounded by a
 * constant independent of the frame size (the 28x28 digit, a 20x20 float field, a 256-level
 * table and the resize taps): at most 3700 bytes, mnist_classify's own stack not included
 * (tests/test_c_frame.py checks it with -fstack-usage). Reentrant and thread-safe.
 */
enum mnist_error {
    MNIST_ERROR_NULL = -1,
    MNIST_ERROR_SIZE = -2
};

/* any grey frame, height x width, row-major, either polarity, digit anywhere: the pixels-in preprocessing;
   returns the label, or a negative code for a frame it cannot take (documented in the header) */
int mnist_classify_frame(const unsigned char *pixels, int height, int width, float probabilities[10]);
