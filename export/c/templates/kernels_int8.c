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

/* The packed-SIMD primitives of the int8 dot products: ARMv7E-M's DSP instructions (Cortex-M4,
 * M7). Where the compiler says the core has them (__ARM_FEATURE_DSP), each is that one
 * instruction; elsewhere (the host build that export validates and the tests run) each is an
 * exact plain-C definition of the same operation, so every build runs the same algorithm.
 * A word holds four bytes b0..b3 (b0 the lowest) or two 16-bit halves. The asm is volatile so
 * that GCC keeps the order written: its scheduler would otherwise load all four weight words
 * of a step at once and run out of registers in max_dot4_q's loop. */
#if defined(__ARM_FEATURE_DSP)
/* b0 and b2 zero-extended to the two halves */
static inline uint32_t uxtb16(uint32_t x)
{
    uint32_t r;
    __asm__ __volatile__("uxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}

/* b1 and b3 zero-extended to the two halves */
static inline uint32_t uxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__ __volatile__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* b0 and b2 sign-extended to the two halves */
static inline uint32_t sxtb16(uint32_t x)
{
    uint32_t r;
    __asm__ __volatile__("sxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}

/* b1 and b3 sign-extended to the two halves */
static inline uint32_t sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__ __volatile__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* acc + x.lo * y.lo + x.hi * y.hi, the halves signed */
static inline int32_t smlad(uint32_t x, uint32_t y, int32_t acc)
{
    int32_t r;
    __asm__ __volatile__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(acc));
    return r;
}
#else
static inline uint32_t uxtb16(uint32_t x)
{
    return x & 0x00FF00FFu;
}

static inline uint32_t uxtb16_ror8(uint32_t x)
{
    return (x >> 8) & 0x00FF00FFu;
}

/* (b ^ 0x80) - 0x80 sign-extends the low byte without implementation-defined conversions */
static inline uint32_t sxtb16(uint32_t x)
{
    const uint32_t lo = ((x & 0xFFu) ^ 0x80u) - 0x80u;
    const uint32_t hi = (((x >> 16) & 0xFFu) ^ 0x80u) - 0x80u;
    return (lo & 0xFFFFu) | (hi << 16);
}

static inline uint32_t sxtb16_ror8(uint32_t x)
{
    return sxtb16(x >> 8);
}

static inline int32_t half(uint32_t x)
{
    return (int32_t)((x & 0xFFFFu) ^ 0x8000u) - 0x8000;
}

static inline int32_t smlad(uint32_t x, uint32_t y, int32_t acc)
{
    return acc + half(x) * half(y) + half(x >> 16) * half(y >> 16);
}
#endif

/* Four bytes from any address as one word: memcpy is defined for any alignment, and GCC makes
 * it one LDR on the Cortex-M4/M7, which load unaligned words. */
static inline uint32_t load4(const void *p)
{
    uint32_t word;
    memcpy(&word, p, sizeof word);
    return word;
}

/* acc + the four products of four activations (their even bytes b0, b2 in x02 and odd bytes
 * b1, b3 in x13, as 16-bit halves) with the four int8 weights at w, split the same way: the
 * pairing is the same for both words, so two smlad add the plain dot product. */
static inline int32_t mac4(uint32_t x02, uint32_t x13, const int8_t *w, int32_t acc)
{
    const uint32_t v = load4(w);
    return smlad(x13, sxtb16_ror8(v), smlad(x02, sxtb16(v), acc));
}

/* best[j] = the largest, over `count` vectors of n uint8 activations one after another from a,
 * of bias[j] + the dot product of the vector with the n int8 weights at w[j], for four weight
 * vectors j = 0..3 (a caller with fewer repeats one and drops its results). Four bytes a step:
 * each activation word is split once and used by all four weight vectors; the last n % 4
 * bytes one at a time. */
static void max_dot4_q(const uint8_t *a, int count, int n, const int8_t *const w[4],
                       const int32_t bias[4], int32_t best[4])
{
    int c, j;

    for (j = 0; j < 4; j++) {
        best[j] = INT32_MIN;
    }
    for (c = 0; c < count; c++) {
        const uint8_t *const end = a + n, *const end4 = a + (n - n % 4);
        const int8_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
        int32_t s0 = bias[0], s1 = bias[1], s2 = bias[2], s3 = bias[3];
        for (; a != end4; a += 4, w0 += 4, w1 += 4, w2 += 4, w3 += 4) {
            const uint32_t x = load4(a);
            const uint32_t x02 = uxtb16(x), x13 = uxtb16_ror8(x);
            s0 = mac4(x02, x13, w0, s0);
            s1 = mac4(x02, x13, w1, s1);
            s2 = mac4(x02, x13, w2, s2);
            s3 = mac4(x02, x13, w3, s3);
        }
        for (; a != end; a++, w0++, w1++, w2++, w3++) {
            const int32_t x = *a;
            s0 += x * *w0;
            s1 += x * *w1;
            s2 += x * *w2;
            s3 += x * *w3;
        }
        best[0] = s0 > best[0] ? s0 : best[0];
        best[1] = s1 > best[1] ? s1 : best[1];
        best[2] = s2 > best[2] ? s2 : best[2];
        best[3] = s3 > best[3] ? s3 : best[3];
    }
}

/* The weights and bias of four output channels from `first` on: past the last channel, the last
 * one again, so that every group is four wide (max_dot4_q's repeated vectors). */
static void group_of_4(const int8_t *weights, const int32_t *bias, int size, int first,
                       int channels, const int8_t *w[4], int32_t b[4])
{
    int j;

    for (j = 0; j < 4; j++) {
        const int channel = first + j < channels ? first + j : channels - 1;
        w[j] = weights + channel * size;
        b[j] = bias[channel];
    }
}

/* QDQ Conv (stride 1, no padding) + Relu + MaxPool on uint8 activations with int8
 * weights, as ONNX Runtime runs the fused QLinearConv and its uint8 MaxPool:
 * int32 sums of x * w (the input zero point is folded into the bias at export),
 * then requantize(). Requantization is monotonic, so the max over the pool window
 * is taken on the accumulators and only the pooled value is requantized; the Relu
 * is the clamp at the output zero point. Layout as the float kernel: (H, W, C)
 * activations, (out_c, k, k, in_c) weights. For each pooled output, the k rows of
 * k * in_c bytes under each of its pool * pool conv outputs are copied one after another
 * into `patches` (pool * pool * k * k * in_c bytes), so that each is contiguous like the
 * weights of one channel; max_dot4_q then takes the output channels four at a time. The
 * sums are exact integers, the same in any order. */
static void conv_relu_pool_q(const uint8_t *in, int in_h, int in_w, int in_c,
                             const int8_t *weights, const int32_t *bias, const float *scales,
                             int out_c, int k, int pool, int out_zero_point, uint8_t *patches,
                             uint8_t *out)
{
    const int out_h = (in_h - k + 1) / pool;
    const int out_w = (in_w - k + 1) / pool;
    const int row = k * in_c;
    const int filter = k * row;
    int py, px, oc, dy, dx, ky, i, j;

    for (py = 0; py < out_h; py++) {
        for (px = 0; px < out_w; px++) {
            /* Copy the window's pool * pool patches, k rows of k * in_c bytes each. */
            uint8_t *patch = patches;
            for (dy = 0; dy < pool; dy++) {
                for (dx = 0; dx < pool; dx++) {
                    const uint8_t *corner = in + ((py * pool + dy) * in_w + px * pool + dx) * in_c;
                    for (ky = 0; ky < k; ky++) {
                        const uint8_t *a = corner + ky * in_w * in_c;
                        for (i = 0; i < row; i++) {
                            *patch++ = a[i];
                        }
                    }
                }
            }
            /* Four channels a pass: the max of their sums over the patches, requantized. */
            for (oc = 0; oc < out_c; oc += 4) {
                const int8_t *w[4];
                int32_t b[4], best[4];
                group_of_4(weights, bias, filter, oc, out_c, w, b);
                max_dot4_q(patches, pool * pool, filter, w, b, best);
                for (j = 0; j < 4 && oc + j < out_c; j++) {
                    out[(py * out_w + px) * out_c + oc + j] =
                        requantize(best[j], scales[oc + j], out_zero_point);
                }
            }
        }
    }
}

/* QDQ Gemm with a float output, as ONNX Runtime's QGemm: int32 sums of x * w plus
 * the int32 bias (input zero point folded in), times input scale x row weight scale.
 * The outputs go four at a time through max_dot4_q (the max of one sum is the sum). */
static void dense_q(const uint8_t *in, int inputs, const int8_t *weights, const int32_t *bias,
                    const float *scales, int outputs, float *logits)
{
    int o, j;

    for (o = 0; o < outputs; o += 4) {
        const int8_t *w[4];
        int32_t b[4], acc[4];
        group_of_4(weights, bias, inputs, o, outputs, w, b);
        max_dot4_q(in, 1, inputs, w, b, acc);
        for (j = 0; j < 4 && o + j < outputs; j++) {
            logits[o + j] = (float)acc[j] * scales[o + j];
        }
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
