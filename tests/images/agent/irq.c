/* The IDT: CPU exceptions (vectors 0-31) and the 16 PIC lines (0x20-0x2f),
 * all 32-bit interrupt gates, so handlers run with interrupts off. */
#include "libagent.h"

#define IDT_ENTRIES (PIC_VECTOR_BASE + 16)
#define CODE_SEL 0x08
#define GATE_INTERRUPT_32 0x8e

struct idt_entry {
    u16 offset_low;
    u16 selector;
    u8 zero;
    u8 type;
    u16 offset_high;
} __attribute__((packed));

struct idt_desc {
    u16 limit;
    u32 base;
} __attribute__((packed));

extern const u32 interrupt_stubs[IDT_ENTRIES];
static struct idt_entry idt[IDT_ENTRIES];
static irq_handler_t irq_handler;

void irq_dispatch(u32 line, u64 tsc);

void irq_dispatch(u32 line, u64 tsc)
{
    irq_handler(line, tsc);
}

void idt_init(irq_handler_t handler)
{
    struct idt_desc desc = { sizeof(idt) - 1, (u32)idt };
    int i;

    irq_handler = handler;
    for (i = 0; i < IDT_ENTRIES; i++) {
        idt[i].offset_low = interrupt_stubs[i] & 0xffff;
        idt[i].selector = CODE_SEL;
        idt[i].zero = 0;
        idt[i].type = GATE_INTERRUPT_32;
        idt[i].offset_high = interrupt_stubs[i] >> 16;
    }
    asm volatile("lidt %0" : : "m"(desc));
}
