/* Output on QEMU's isa-debugcon (port 0x402): one outb per character. */
#include "libagent.h"

void puts(const char *s)
{
    while (*s)
        outb(DEBUGCON_PORT, *s++);
}

void put_hex(u32 v)
{
    static const char digits[] = "0123456789abcdef";
    char buf[11] = "0x";
    int i;

    for (i = 0; i < 8; i++)
        buf[2 + i] = digits[(v >> (28 - 4 * i)) & 0xf];
    buf[10] = 0;
    puts(buf);
}

void put_dec(u32 v)
{
    char buf[11];
    int i = 10;

    buf[i] = 0;
    do {
        buf[--i] = '0' + v % 10;
        v /= 10;
    } while (v);
    puts(buf + i);
}

void debug_exit(u32 code)
{
    outb(DEBUG_EXIT_PORT, code);
    for (;;)
        asm volatile("cli; hlt");
}
