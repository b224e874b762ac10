/* Conv (stride 1, no padding) + Relu + MaxPool (pool x pool, stride pool, floor),
 * as ONNX's three operators in a row. Each pooled output is computed directly
 * (relu(max(conv)) = max(relu(conv))), so the full conv map is never stored.
 * Activations are channels-last (H, W, C); weights are (out_c, k, k, in_c), so the
 * k x in_c values under one kernel row are contiguous in both. */
static void conv_relu_pool(const float *in, int in_h, int in_w, int in_c,
                           const float *weights, const float *bias, int out_c, int k,
                           int pool, float *out)
{
    const int out_h = (in_h - k + 1) / pool;
    const int out_w = (in_w - k + 1) / pool;
    const int row = k * in_c;
    int py, px, oc, dy, dx, ky, i;

    for (py = 0; py < out_h; py++) {
        for (px = 0; px < out_w; px++) {
            for (oc = 0; oc < out_c; oc++) {
                float best = 0.0f; /* the Relu */
                for (dy = 0; dy < pool; dy++) {
                    for (dx = 0; dx < pool; dx++) {
                        const int y = py * pool + dy;
                        const int x = px * pool + dx;
                        float acc = bias[oc];
                        for (ky = 0; ky < k; ky++) {
                            const float *a = in + ((y + ky) * in_w + x) * in_c;
                            const float *w = weights + (oc * k + ky) * row;
                            for (i = 0; i < row; i++) {
                                acc += a[i] * w[i];
                            }
                        }
                        if (acc > best) {
                            best = acc;
                        }
                    }
                }
                out[(py * out_w + px) * out_c + oc] = best;
            }
        }
    }
}

/* Gemm (transB = 1, alpha = beta = 1): logits = W x + b, W is (outputs, inputs). */
static void dense(const float *in, int inputs, const float *weights, const float *bias,
                  int outputs, float *logits)
{
    int o, i;

    for (o = 0; o < outputs; o++) {
        const float *w = weights + o * inputs;
        float acc = bias[o];
        for (i = 0; i < inputs; i++) {
            acc += in[i] * w[i];
        }
        logits[o] = acc;
    }
}

/* The model's input scaling, as the ONNX file's preprocessing metadata states it. */
static void scale_input(const unsigned char *pixels, int n, float divisor, float *out)
{
    int i;

    for (i = 0; i < n; i++) {
        out[i] = (float)pixels[i] / divisor;
    }
}
