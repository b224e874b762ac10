/* mnist_classify on top of the function emx-onnx-cgen writes for an exported ONNX file
 * (`emx-onnx-cgen compile --model-name mnist_emx --input-dim batch=1 ...`): the pixels are
 * scaled to [0, 1] as the file's input expects, and the label is the first most probable class,
 * as numpy's argmax picks it. */

#include "mnist.h"

/* Written by emx-onnx-cgen into mnist_emx_model.c: the ONNX graph's input and output. */
void mnist_emx(const float image[restrict 1][1][28][28], float probabilities[restrict 1][10]);

int mnist_classify(const unsigned char pixels[784], float probabilities[10])
{
    float image[1][1][28][28];
    float out[1][10];

    for (int r = 0; r < 28; r++)
        for (int c = 0; c < 28; c++)
            image[0][0][r][c] = (float)pixels[r * 28 + c] / 255.0f;
    mnist_emx(image, out);
    int label = 0;
    for (int k = 0; k < 10; k++) {
        probabilities[k] = out[0][k];
        if (out[0][k] > out[0][label])
            label = k;
    }
    return label;
}
