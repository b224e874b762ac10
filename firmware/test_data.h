/* The test pictures the firmware classifies: written into the build folder as test_data.c by
 * the Python side (mnist_edge.tools.firmware_build), with the labels the same library gave on the host. */
#ifndef TEST_DATA_H
#define TEST_DATA_H

struct test_frame {
    int height;
    int width;
    const unsigned char *pixels; /* height x width grey pixels, row-major */
    int label;                   /* mnist_classify_frame's label on the host */
};

extern const int test_digit_count;
extern const unsigned char test_digits[][784]; /* 28x28 MNIST test digits */
extern const signed char test_digit_labels[];  /* mnist_classify's labels on the host */

extern const int test_frame_count;
extern const struct test_frame test_frames[];

#endif
