/* mnist_classify_frame: the pixels-in model's preprocessing (export/pixels.py, _preprocess)
 * in C, step by step, then mnist_classify on the 28x28 digit it makes.
 *
 * The frame is streamed: one pass for its grey levels, one for the ink box, one over the
 * ink box for the resize; nothing frame-sized is stored. The arithmetic is the graph's in
 * ONNX Runtime, in the same precision and order: float where the graph computes in
 * float32, double where it computes in float64 (the stretch factor, the fit, the centre
 * of mass). Compile with floating-point contraction off (the default of -std=c99; GCC's
 * -std=gnu* modes need -ffp-contract=off), or a fused multiply-add can move a pixel by one
 * grey level.
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mnist.h"
#include "mnist_frame.h"

enum {
    DIGIT_SIDE = 28, /* Preprocessing.size */
    DIGIT_PIXELS = DIGIT_SIDE * DIGIT_SIDE,
    FIT_SIDE = 20, /* Preprocessing.fit: the ink box is scaled to fit FIT_SIDE x FIT_SIDE */
    GREY_LEVELS = 256,
    THIN_SIDE = 3 /* a frame thinner than this is judged by all its pixels, not its border */
};

static const float MAX_LEVEL = 255.0f;
static const float INK_LEVEL = 51.0f;   /* 0.2 * 255: stretched levels above it are ink */
static const float NOISE_LEVEL = 25.5f; /* 0.1 * 255: stretched levels below it are zeroed */
static const float CUBIC_A = -0.75f;    /* Resize cubic_coeff_a */
static const float CUBIC_SUPPORT = 4.0f; /* ORT's bicubic antialias filter: 4 taps at scale 1 */

typedef struct {
    const unsigned char *pixels;
    size_t height, width;
} frame;

/* What the first pass learns. */
typedef struct {
    int invert;    /* needs_inversion: gray becomes 255 - gray */
    float median;  /* np.median of the border (of every pixel in a thin frame), raw levels */
    unsigned char darkest, brightest;
} frame_levels;

/* diff = (x - median) * sign, stretched by factor = float32(255.0 / peak) */
typedef struct {
    float median, sign, factor;
} stretch;

/* The ink's bounding box in the frame. */
typedef struct {
    size_t top, left, height, width;
} box;

/* One output sample of a Resize axis (ORT's antialias filter setup): the inputs it reads,
   [first, first + count), and the normalisation of their weights. */
typedef struct {
    int first, count;
    float center; /* in input coordinates, plus 0.5 */
    float norm;   /* 1 / the sum of its raw weights */
} resize_tap;

typedef struct {
    int out_size;
    float inv_scale; /* the filter's argument scale: 1 when upsampling */
    resize_tap taps[FIT_SIDE];
} resize_axis;

static const unsigned char *frame_row(const frame *f, size_t r)
{
    return f->pixels + r * f->width;
}

/* ONNX Round and Python's round: halves to even. */
static double round_half_even(double x)
{
    double r = floor(x);
    double rest = x - r;
    if (rest > 0.5 || (rest == 0.5 && fmod(r, 2.0) != 0.0)) {
        r += 1.0;
    }
    return r;
}

/* The graph's _round_to_uint8: Clip(Floor(x + 0.5), 0, 255) in float32. */
static float round_level(float x)
{
    float r = floorf(x + 0.5f);
    if (r < 0.0f) {
        return 0.0f;
    }
    return r > MAX_LEVEL ? MAX_LEVEL : r;
}

/* The k-th smallest level (from 0) counted in hist; k is below the count. */
static int kth_level(const uint32_t hist[GREY_LEVELS], uint32_t k)
{
    int v = 0;
    uint32_t seen = hist[0];
    while (seen <= k) {
        v++;
        seen += hist[v];
    }
    return v;
}

static uint32_t count_bright(const uint32_t hist[GREY_LEVELS])
{
    uint32_t n = 0;
    int v;
    for (v = GREY_LEVELS / 2; v < GREY_LEVELS; v++) {
        n += hist[v];
    }
    return n;
}

/* needs_inversion and the border median. The median's values are the picture's edges,
   concat([gray[0], gray[-1], gray[:, 0], gray[:, -1]]) with the corners twice; the
   polarity counts each border pixel once. A thin frame uses every pixel for both. */
static frame_levels measure_levels(const frame *f)
{
    uint32_t hist[GREY_LEVELS] = {0};
    unsigned long long sum = 0;
    const int thin = f->height < THIN_SIDE || f->width < THIN_SIDE;
    const size_t last_row = f->height - 1, last_col = f->width - 1;
    frame_levels out;
    uint32_t n;
    size_t r, c;

    out.darkest = UCHAR_MAX;
    out.brightest = 0;
    for (r = 0; r < f->height; r++) {
        const unsigned char *row = frame_row(f, r);
        const int edge_row = r == 0 || r == last_row;
        for (c = 0; c < f->width; c++) {
            const unsigned char v = row[c];
            out.darkest = v < out.darkest ? v : out.darkest;
            out.brightest = v > out.brightest ? v : out.brightest;
            if (thin) {
                hist[v]++;
                sum += v;
            } else if (edge_row) {
                hist[v]++;
            }
        }
        if (!thin) {
            hist[row[0]]++;
            hist[row[last_col]]++;
        }
    }
    if (thin) {
        n = (uint32_t)(f->height * f->width);
        out.invert = 2 * sum > 255ULL * n; /* float(gray.mean()) > 127.5 */
    } else {
        const unsigned char *top = frame_row(f, 0), *bottom = frame_row(f, last_row);
        const uint32_t corners = (top[0] > 127) + (top[last_col] > 127) + (bottom[0] > 127) +
                                 (bottom[last_col] > 127);
        n = (uint32_t)(2 * (f->height + f->width));
        /* 2 * count_nonzero(border > 127) > border.size, border without the corner copies */
        out.invert = 2 * (count_bright(hist) - corners) > n - 4;
    }
    /* np.median: the mean of the two middle values (one value twice when n is odd) */
    out.median = ((float)kth_level(hist, (n - 1) / 2) + (float)kth_level(hist, n / 2)) * 0.5f;
    return out;
}

/* A 28x28 frame: `return gray` after the inversion. */
static void copy_digit(const frame *f, int invert, unsigned char digit[DIGIT_PIXELS])
{
    size_t i;
    for (i = 0; i < DIGIT_PIXELS; i++) {
        digit[i] = invert ? (unsigned char)(UCHAR_MAX - f->pixels[i]) : f->pixels[i];
    }
}

/* work = clip(gray - median, 0) * (255 / peak), as the graph computes it before its
   thresholds: the float32 product of (x - median) * sign and factor. */
static float stretched(const stretch *s, int level)
{
    return (((float)level - s->median) * s->sign) * s->factor;
}

/* The crop's levels: stretched, zeroed below NOISE_LEVEL, rounded to uint8. */
static void crop_levels(const stretch *s, unsigned char level[GREY_LEVELS])
{
    int v;
    for (v = 0; v < GREY_LEVELS; v++) {
        const float x = stretched(s, v);
        level[v] = (unsigned char)round_level(x < NOISE_LEVEL ? 0.0f : x);
    }
}

/* rows = flatnonzero(ink.any(axis=1)), cols likewise: the box of the pixels whose
   stretched level is above INK_LEVEL. Stretching is monotone in the raw level, so the ink
   is one range of raw levels, [lo, hi]; an empty box has height 0. */
static box find_ink(const frame *f, const stretch *s)
{
    box b = {0, 0, 0, 0};
    size_t r, c, bottom = 0, right = 0;
    int lo = GREY_LEVELS, hi = -1, v, found = 0;

    for (v = 0; v < GREY_LEVELS; v++) {
        if (stretched(s, v) > INK_LEVEL) {
            lo = v < lo ? v : lo;
            hi = v;
        }
    }
    b.left = f->width;
    for (r = 0; r < f->height; r++) {
        const unsigned char *row = frame_row(f, r);
        for (c = 0; c < f->width; c++) {
            if (row[c] >= lo && row[c] <= hi) {
                if (!found) {
                    b.top = r;
                    found = 1;
                }
                bottom = r;
                b.left = c < b.left ? c : b.left;
                right = c > right ? c : right;
            }
        }
    }
    if (found) {
        b.height = bottom - b.top + 1;
        b.width = right - b.left + 1;
    }
    return b;
}

/* nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale)), in float64. */
static int fitted_side(size_t side, double scale)
{
    const double r = round_half_even((double)side * scale);
    return r < 1.0 ? 1 : (int)r;
}

/* ORT's bicubic antialias filter (Keys' cubic convolution, a = cubic_coeff_a). */
static float cubic(float x)
{
    if (x < 0.0f) {
        x = -x;
    }
    if (x < 1.0f) {
        return ((CUBIC_A + 2.0f) * x - (CUBIC_A + 3.0f)) * x * x + 1.0f;
    }
    if (x < 2.0f) {
        return (((x - 5.0f) * x + 8.0f) * x - 4.0f) * CUBIC_A;
    }
    return 0.0f;
}

/* The k-th input's weight, before normalisation. */
static float raw_weight(const resize_axis *a, const resize_tap *t, int k)
{
    return cubic(((float)(t->first + k) - t->center + 0.5f) * a->inv_scale);
}

static long long clamp_ll(long long x, long long lo, long long hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* ORT's antialias Resize setup for one axis (SetupUpsampleFilterAntiAlias), sizes given:
   scale = out / in in float; half_pixel coordinates; the filter widened by 1 / scale when
   downsampling; exclude_outside = 1, so the weights of inputs outside [0, in) are dropped and
   the rest renormalised. Each tap's weights are recomputed where used, not stored. */
static void plan_axis(resize_axis *a, int in_size, int out_size)
{
    const float rscale = (float)out_size / (float)in_size;
    const float scale = 1.0f / rscale;
    const float support = scale >= 1.0f ? (CUBIC_SUPPORT * 0.5f) * scale : CUBIC_SUPPORT * 0.5f;
    const long long window = (long long)ceilf(support) * 2 + 1;
    int i, k;

    a->out_size = out_size;
    a->inv_scale = scale >= 1.0f ? 1.0f / scale : 1.0f;
    for (i = 0; i < out_size; i++) {
        resize_tap *t = &a->taps[i];
        /* half_pixel: (x_resized + 0.5) / scale - 0.5 */
        const float center =
            0.5f + (scale == 1.0f ? (float)i : ((float)i + 0.5f) / rscale - 0.5f);
        long long lo = (long long)floorf(center - support + 0.5f);
        long long hi = (long long)floorf(center + support + 0.5f);
        float total = 0.0f;

        hi = lo + clamp_ll(hi - lo, 0, window);
        lo = clamp_ll(lo, 0, in_size);
        hi = clamp_ll(hi, 0, in_size);
        t->first = (int)lo;
        t->count = (int)(hi - lo);
        t->center = center;
        for (k = 0; k < t->count; k++) {
            total += raw_weight(a, t, k);
        }
        t->norm = total == 0.0f ? 1.0f : 1.0f / total;
    }
}

/* The width pass on one row of the box (ComputeInterpolationAtLevel1: a copy when the width
   does not change), rounded to uint8 as the graph does between its two Resize nodes. */
static void resize_row(const unsigned char *src, int in_width, const unsigned char level[GREY_LEVELS],
                       const resize_axis *across, unsigned char out[FIT_SIDE])
{
    int x, k;
    for (x = 0; x < across->out_size; x++) {
        const resize_tap *t = &across->taps[x];
        float sum = 0.0f;
        if (across->out_size == in_width) {
            out[x] = level[src[x]];
            continue;
        }
        for (k = 0; k < t->count; k++) {
            sum += (float)level[src[t->first + k]] * (raw_weight(across, t, k) * t->norm);
        }
        out[x] = (unsigned char)round_level(sum);
    }
}

/* The height pass (ComputeInterpolationAtLevel2), fed one width-resized row at a time:
   each row is added to every output row whose taps read it, so each output sums its inputs
   in ORT's order (top to bottom) without the rows being kept. */
static void add_row(const unsigned char row[FIT_SIDE], int r, const resize_axis *across,
                    const resize_axis *down, float field[FIT_SIDE][FIT_SIDE])
{
    int x, y;
    for (y = 0; y < down->out_size; y++) {
        const resize_tap *t = &down->taps[y];
        const int k = r - t->first;
        float w;
        if (k < 0 || k >= t->count) {
            continue;
        }
        w = raw_weight(down, t, k) * t->norm;
        for (x = 0; x < across->out_size; x++) {
            field[y][x] += (float)row[x] * w;
        }
    }
}

/* Crop to the box, stretch, zero the noise, round to uint8, then Resize (cubic, antialias)
   to nh x nw: the width first, rounded, then the height, rounded. field gets the fitted
   digit's levels (whole numbers 0-255) in its top-left nh x nw. */
static void fit_ink(const frame *f, const box *b, const stretch *s, int nh, int nw,
                    float field[FIT_SIDE][FIT_SIDE])
{
    unsigned char level[GREY_LEVELS], row[FIT_SIDE];
    resize_axis across, down;
    const int same_height = nh == (int)b->height;
    size_t r;
    int x, y;

    crop_levels(s, level);
    plan_axis(&across, (int)b->width, nw);
    plan_axis(&down, (int)b->height, nh);
    memset(field, 0, sizeof(float) * FIT_SIDE * FIT_SIDE);
    for (r = 0; r < b->height; r++) {
        resize_row(frame_row(f, b->top + r) + b->left, (int)b->width, level, &across, row);
        if (same_height) {
            for (x = 0; x < nw; x++) {
                field[r][x] = (float)row[x];
            }
        } else {
            add_row(row, (int)r, &across, &down, field);
        }
    }
    for (y = 0; y < nh; y++) {
        for (x = 0; x < nw; x++) {
            field[y][x] = round_level(field[y][x]);
        }
    }
}

/* _center_of_mass in float64, top = round(14 - cy), left = round(14 - cx), then the paste
   with clipping at the digit's edges. A fitted digit with no ink leaves the zeros. */
static void place_digit(const float field[FIT_SIDE][FIT_SIDE], int nh, int nw,
                        unsigned char digit[DIGIT_PIXELS])
{
    long total = 0, moment_y = 0, moment_x = 0;
    int x, y, top, left;

    for (y = 0; y < nh; y++) {
        for (x = 0; x < nw; x++) {
            const long v = (long)field[y][x];
            total += v;
            moment_y += v * y;
            moment_x += v * x;
        }
    }
    if (total <= 0) {
        return;
    }
    top = (int)round_half_even(DIGIT_SIDE / 2.0 - (double)moment_y / (double)total);
    left = (int)round_half_even(DIGIT_SIDE / 2.0 - (double)moment_x / (double)total);
    for (y = 0; y < DIGIT_SIDE; y++) {
        const int fy = y - top;
        if (fy < 0 || fy >= nh) {
            continue;
        }
        for (x = 0; x < DIGIT_SIDE; x++) {
            const int fx = x - left;
            if (fx >= 0 && fx < nw) {
                digit[y * DIGIT_SIDE + x] = (unsigned char)field[fy][fx];
            }
        }
    }
}

int mnist_frame_to_digit(const unsigned char *pixels, int height, int width,
                         unsigned char digit[DIGIT_PIXELS])
{
    float field[FIT_SIDE][FIT_SIDE];
    frame f;
    frame_levels levels;
    stretch s;
    box b;
    float peak;
    double scale;
    int nh, nw;

    if (pixels == NULL || digit == NULL) {
        return MNIST_ERROR_NULL;
    }
    if (height <= 0 || width <= 0 || height > INT_MAX / width) {
        return MNIST_ERROR_SIZE;
    }
    f.pixels = pixels;
    f.height = (size_t)height;
    f.width = (size_t)width;
    levels = measure_levels(&f);
    if (height == DIGIT_SIDE && width == DIGIT_SIDE) {
        copy_digit(&f, levels.invert, digit);
        return 0;
    }
    memset(digit, 0, DIGIT_PIXELS);
    /* peak = work.max() of clip(gray - median, 0), gray inverted or not */
    peak = levels.invert ? levels.median - (float)levels.darkest
                         : (float)levels.brightest - levels.median;
    if (!(peak > 0.0f)) {
        return 0; /* blank: nothing brighter than the background */
    }
    s.median = levels.median;
    s.sign = levels.invert ? -1.0f : 1.0f;
    s.factor = (float)(255.0 / (double)peak);
    b = find_ink(&f, &s);
    if (b.height == 0) {
        return 0;
    }
    /* scale = fit / max(ch, cw) in float64 */
    scale = (double)FIT_SIDE / (double)(b.height > b.width ? b.height : b.width);
    nh = fitted_side(b.height, scale);
    nw = fitted_side(b.width, scale);
    fit_ink(&f, &b, &s, nh, nw, field);
    place_digit((const float(*)[FIT_SIDE])field, nh, nw, digit);
    return 0;
}

int mnist_classify_frame(const unsigned char *pixels, int height, int width, float probabilities[10])
{
    unsigned char digit[DIGIT_PIXELS];
    int status;

    if (probabilities == NULL) {
        return MNIST_ERROR_NULL;
    }
    status = mnist_frame_to_digit(pixels, height, width, digit);
    if (status < 0) {
        return status;
    }
    return mnist_classify(digit, probabilities);
}
