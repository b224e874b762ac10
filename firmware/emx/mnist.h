/* mnist.h for a network compiled by emx-onnx-cgen: the same API as the library `mnist-export --c`
 * writes, so that the example firmware and the host checks take either. mnist_emx.c adapts
 * emx-onnx-cgen's entry point; mnist_frame.c and frame_api.h (copied from the C library) add the
 * pixels-in preprocessing, which emx-onnx-cgen cannot compile (its shapes depend on the frame).
 *
 * Memory: emx-onnx-cgen keeps every activation in its own array on the stack of one call;
 * bench/bench_mcu.py measures what that takes. */
#ifndef MNIST_H
#define MNIST_H

#ifdef __cplusplus
extern "C" {
#endif

/* 28x28 MNIST-style grey pixels (white digit on black, row-major); returns the label 0-9 */
int mnist_classify(const unsigned char pixels[784], float probabilities[10]);

#include "frame_api.h"

#ifdef __cplusplus
}
#endif

#endif
