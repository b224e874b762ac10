/* Example firmware: classify the pictures of test_data.c with the mnist library, print each label
 * and its probabilities, count the work of each call with SysTick and measure the peak stack of
 * one call by painting. It needs an ARMv7-M core (SysTick is part of the architecture), the
 * linker script's __stack_limit and a printf (semihosting here; a UART on a board). */

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mnist.h"
#include "test_data.h"

/* SysTick: a 24-bit down-counter clocked by the core clock, reloaded from RVR when it reaches 0. */
static volatile uint32_t *const SYST_CSR = (volatile uint32_t *)0xE000E010;
static volatile uint32_t *const SYST_RVR = (volatile uint32_t *)0xE000E014;
static volatile uint32_t *const SYST_CVR = (volatile uint32_t *)0xE000E018;
static const uint32_t SYSTICK_PERIOD_MASK = 0xFFFFFFu;

extern uint32_t __stack_limit[]; /* the lowest address of the stack (linker script) */
static const uint32_t STACK_PAINT = 0xA5C3E1F0u;

static void systick_start(void)
{
    *SYST_RVR = SYSTICK_PERIOD_MASK;
    *SYST_CVR = 0;
    *SYST_CSR = 5; /* enabled, core clock, no interrupt */
    while (*SYST_CVR == 0) {
        /* the current value reads 0 until the first reload */
    }
}

/* Core clock ticks from one read of the counter to a later one; exact below 2^24 ticks. */
static uint32_t ticks_between(uint32_t start, uint32_t end)
{
    return (start - end) & SYSTICK_PERIOD_MASK;
}

/* Fill the free stack below the caller's frame with STACK_PAINT; returns the caller's stack
 * pointer. Inlined, so that the painting starts right below the frame the call will use. */
static inline __attribute__((always_inline)) uint32_t *paint_stack(void)
{
    uint32_t *sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *word = __stack_limit; word < sp; word++)
        *word = STACK_PAINT;
    return sp;
}

/* Bytes of stack below `sp` that a call overwrote since paint_stack: the deepest changed word. */
static unsigned long stack_used(const uint32_t *sp)
{
    const uint32_t *word = __stack_limit;
    while (word < sp && *word == STACK_PAINT)
        word++;
    return (unsigned long)(sp - word) * sizeof *word;
}

/* The probabilities as the bits of each float (exact, and needs no float printf). */
static void print_probabilities(const float probabilities[10])
{
    for (int k = 0; k < 10; k++) {
        uint32_t bits;
        memcpy(&bits, &probabilities[k], sizeof bits);
        printf(" %08lx", (unsigned long)bits);
    }
    printf("\n");
}

int main(void)
{
    float probabilities[10];
    int digits_agreed = 0, frames_agreed = 0;
    unsigned long digit_ticks = 0;

    systick_start();
    for (int i = 0; i < test_digit_count; i++) {
        uint32_t start = *SYST_CVR;
        int label = mnist_classify(test_digits[i], probabilities);
        uint32_t ticks = ticks_between(start, *SYST_CVR);
        digit_ticks += ticks;
        digits_agreed += label == test_digit_labels[i];
        printf("digit %d label %d host %d ticks %lu p", i, label, test_digit_labels[i],
               (unsigned long)ticks);
        print_probabilities(probabilities);
    }
    for (int i = 0; i < test_frame_count; i++) {
        const struct test_frame *frame = &test_frames[i];
        uint32_t start = *SYST_CVR;
        int label = mnist_classify_frame(frame->pixels, frame->height, frame->width, probabilities);
        uint32_t ticks = ticks_between(start, *SYST_CVR);
        frames_agreed += label == frame->label;
        printf("frame %d %dx%d label %d host %d ticks %lu p", i, frame->height, frame->width, label,
               frame->label, (unsigned long)ticks);
        print_probabilities(probabilities);
    }

    /* The peak stack of one call of each function, with nothing else running (no interrupts). */
    uint32_t *sp = paint_stack();
    mnist_classify(test_digits[0], probabilities);
    unsigned long stack_classify = stack_used(sp);
    unsigned long stack_frame = 0;
    if (test_frame_count > 0) {
        sp = paint_stack();
        mnist_classify_frame(test_frames[0].pixels, test_frames[0].height, test_frames[0].width,
                             probabilities);
        stack_frame = stack_used(sp);
    }

    printf("summary digits %d agreed %d frames %d frames_agreed %d digit_ticks %lu "
           "stack_classify %lu stack_frame %lu\n",
           test_digit_count, digits_agreed, test_frame_count, frames_agreed, digit_ticks,
           stack_classify, stack_frame);
    return digits_agreed == test_digit_count && frames_agreed == test_frame_count ? 0 : 1;
}
