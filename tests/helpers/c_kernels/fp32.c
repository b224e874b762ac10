/* The float kernels of export/c/templates/, pasted in as mnist_model.c has them, each behind an
 * exported wrapper so that tests/test_c_kernels.py can call it through ctypes. */
#include <math.h>
#include <stdint.h>

#include "kernels_fp32.c"
#include "softmax.c"

void call_conv_relu_pool(const float *in, int in_h, int in_w, int in_c, const float *weights,
                         const float *bias, int out_c, int k, int pool, float *out)
{
    conv_relu_pool(in, in_h, in_w, in_c, weights, bias, out_c, k, pool, out);
}

void call_dense(const float *in, int inputs, const float *weights, const float *bias,
                int outputs, float *logits)
{
    dense(in, inputs, weights, bias, outputs, logits);
}

void call_scale_input(const unsigned char *pixels, int n, float divisor, float *out)
{
    scale_input(pixels, n, divisor, out);
}

int call_softmax(const float *logits, int n, float *probabilities)
{
    return softmax(logits, n, probabilities);
}
