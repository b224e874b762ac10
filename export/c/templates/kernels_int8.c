/* ONNX Runtime's requantization of an int32 accumulator (QLinearConv's output,
 * MlasRequantizeOutput): acc * scale in float, clamped to the output range less
 * the zero point, rounded to nearest with ties to even (lrintf in the default
 * rounding mode, as MLAS's rounding bias does), plus the zero point. */
static uint8_t requantize(int32_t acc, float scale, int zero_point)
{
    float v = (float)acc * scale;
    const float lo = (float)(0 - zero_point);
    const float hi = (float)(255 - zero_point);

    if (v < lo) {
        v = lo;
    } else if (v > hi) {
        v = hi;
    }
    return (uint8_t)(lrintf(v) + zero_point);
}

/* QDQ Conv (stride 1, no padding) + Relu + MaxPool on uint8 activations with int8
 * weights, as ONNX Runtime runs the fused QLinearConv and its uint8 MaxPool:
 * int32 sums of x * w (the input zero point is folded into the bias at export),
 * then requantize(). Requantization is monotonic, so the max over the pool window
 * is taken on the accumulators and only the pooled value is requantized; the Relu
 * is the clamp at the output zero point. Layout as the float kernel: (H, W, C)
 * activations, (out_c, k, k, in_c) weights. */
static void conv_relu_pool_q(const uint8_t *in, int in_h, int in_w, int in_c,
                             const int8_t *weights, const int32_t *bias, const float *scales,
                             int out_c, int k, int pool, int out_zero_point, uint8_t *out)
{
    const int out_h = (in_h - k + 1) / pool;
    const int out_w = (in_w - k + 1) / pool;
    const int row = k * in_c;
    int py, px, oc, dy, dx, ky, i;

    for (py = 0; py < out_h; py++) {
        for (px = 0; px < out_w; px++) {
            for (oc = 0; oc < out_c; oc++) {
                int32_t best = INT32_MIN;
                for (dy = 0; dy < pool; dy++) {
                    for (dx = 0; dx < pool; dx++) {
                        const int y = py * pool + dy;
                        const int x = px * pool + dx;
                        int32_t acc = bias[oc];
                        for (ky = 0; ky < k; ky++) {
                            const uint8_t *a = in + ((y + ky) * in_w + x) * in_c;
                            const int8_t *w = weights + (oc * k + ky) * row;
                            for (i = 0; i < row; i++) {
                                acc += (int32_t)a[i] * w[i];
                            }
                        }
                        if (acc > best) {
                            best = acc;
                        }
                    }
                }
                out[(py * out_w + px) * out_c + oc] =
                    requantize(best, scales[oc], out_zero_point);
            }
        }
    }
}

/* QDQ Gemm with a float output, as ONNX Runtime's QGemm: int32 sums of x * w plus
 * the int32 bias (input zero point folded in), times input scale x row weight scale. */
static void dense_q(const uint8_t *in, int inputs, const int8_t *weights, const int32_t *bias,
                    const float *scales, int outputs, float *logits)
{
    int o, i;

    for (o = 0; o < outputs; o++) {
        const int8_t *w = weights + o * inputs;
        int32_t acc = bias[o];
        for (i = 0; i < inputs; i++) {
            acc += (int32_t)in[i] * w[i];
        }
        logits[o] = (float)acc * scales[o];
    }
}

/* QuantizeLinear of the scaled pixels, as a table made at export by ONNX Runtime
 * itself from pixel / divisor: one lookup per pixel. */
static void quantize_input(const unsigned char *pixels, int n, const uint8_t table[256],
                           uint8_t *out)
{
    int i;

    for (i = 0; i < n; i++) {
        out[i] = table[pixels[i]];
    }
}
