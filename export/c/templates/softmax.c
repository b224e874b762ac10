/* Softmax over one row, as ONNX's Softmax (axis 1): exp(x - max) / sum. Returns the argmax. */
static int softmax(const float *logits, int n, float *probabilities)
{
    int i;
    int best = 0;
    float sum = 0.0f;

    for (i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    for (i = 0; i < n; i++) {
        probabilities[i] = expf(logits[i] - logits[best]);
        sum += probabilities[i];
    }
    for (i = 0; i < n; i++) {
        probabilities[i] /= sum;
    }
    return best;
}
