/* Start-up code for an ARMv7-M core (Cortex-M4F, Cortex-M7) with newlib and semihosting:
 * the vector table and the reset handler. Nothing here is board-specific; the memory map lives
 * in the linker script (mps2.ld), whose symbols are declared below. */

#include <stdint.h>
#include <stdlib.h>

int main(void);
void initialise_monitor_handles(void); /* newlib's librdimon: stdin/stdout/stderr over semihosting */

/* Defined by the linker script. */
extern uint32_t __stack_top[];
extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];

void reset_handler(void);
void fault_handler(void);

/* The core reads the initial stack pointer and the reset address from the first two words;
 * the rest are the exception handlers (ARMv7-M: NMI, HardFault, MemManage, BusFault,
 * UsageFault, four reserved, SVCall, DebugMonitor, reserved, PendSV, SysTick). The firmware
 * enables no interrupt, so every exception is a fault here. */
__attribute__((section(".vectors"), used)) static void (*const vector_table[16])(void) = {
    (void (*)(void))__stack_top,
    reset_handler,
    fault_handler, /* NMI */
    fault_handler, /* HardFault */
    fault_handler, /* MemManage */
    fault_handler, /* BusFault */
    fault_handler, /* UsageFault */
    0,
    0,
    0,
    0,
    fault_handler, /* SVCall */
    fault_handler, /* DebugMonitor */
    0,
    fault_handler, /* PendSV */
    fault_handler, /* SysTick */
};

/* Coprocessor Access Control Register: bits 20-23 give full access to CP10 and CP11, the FPU. */
static volatile uint32_t *const CPACR = (volatile uint32_t *)0xE000ED88;

void reset_handler(void)
{
    /* The library is compiled for the hardware FPU: enable it before any float instruction. */
    *CPACR |= 0xFu << 20;
    __asm volatile("dsb\n\tisb" ::: "memory");

    /* Initialised data: from its load address (flash) to RAM; then zero the .bss. */
    const uint32_t *from = __data_load;
    for (uint32_t *to = __data_start; to < __data_end;)
        *to++ = *from++;
    for (uint32_t *to = __bss_start; to < __bss_end;)
        *to++ = 0;

    initialise_monitor_handles();
    exit(main());
}

/* An exception nothing expects (a fault): say so and stop, so that QEMU exits instead of hanging.
 * On a board without a debugger attached, replace the exit with a breakpoint or a reset. */
void fault_handler(void)
{
    exit(128);
}
