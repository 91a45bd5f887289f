/* The 8254's channel 0 as a 1 kHz tick on line 0: timeouts and the TSC's
 * calibration count ticks. */
#include "libagent.h"

#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define PIT_HZ 1193182
#define TICK_HZ 1000
#define PIT_CH0_RATE_LOHI 0x34      /* channel 0, lobyte/hibyte, mode 2 */

void pit_init(void)
{
    u16 divisor = (PIT_HZ + TICK_HZ / 2) / TICK_HZ;

    outb(PIT_CMD, PIT_CH0_RATE_LOHI);
    outb(PIT_CH0, divisor & 0xff);
    outb(PIT_CH0, divisor >> 8);
}
