/* The integer kernels of export/c/templates/kernels_int8.c, pasted in as mnist_model.c has
 * them, each behind an exported wrapper so that tests/test_c_kernels.py can call it. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_int8.c"

void call_requantize(const int32_t *acc, const float *scales, int n, int zero_point,
                     uint8_t *out)
{
    int i;

    for (i = 0; i < n; i++) {
        out[i] = requantize(acc[i], scales[i], zero_point);
    }
}

void call_conv_relu_pool_q(const uint8_t *in, int in_h, int in_w, int in_c,
                           const int8_t *weights, const int32_t *bias, const float *scales,
                           int out_c, int k, int pool, int out_zero_point, uint8_t *patches,
                           uint8_t *out)
{
    conv_relu_pool_q(in, in_h, in_w, in_c, weights, bias, scales, out_c, k, pool, out_zero_point,
                     patches, out);
}

void call_dense_q(const uint8_t *in, int inputs, const int8_t *weights, const int32_t *bias,
                  const float *scales, int outputs, float *logits)
{
    dense_q(in, inputs, weights, bias, scales, outputs, logits);
}

void call_quantize_input(const unsigned char *pixels, int n, const uint8_t table[256],
                         uint8_t *out)
{
    quantize_input(pixels, n, table, out);
}
