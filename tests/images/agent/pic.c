/*
 * The two 8259 PICs, remapped to vectors 0x20-0x2f (the BIOS leaves them
 * on top of the CPU exceptions).  The edge/level register (ELCR, 0x4d0) is
 * left as the firmware set it: PCI lines are level-triggered.
 *
 * The PICs' INTR reaches the CPU through the local APIC's LINT0 only in
 * virtual wire mode (LINT0 ExtINT, LINT1 NMI, the APIC enabled), which
 * SeaBIOS sets up and qboot does not, so the agent does it itself.
 */
#include "libagent.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define ELCR1 0x4d0
#define ELCR2 0x4d1
#define ICW1_INIT_ICW4 0x11
#define ICW4_8086 0x01
#define OCW2_EOI 0x20
#define OCW3_READ_ISR 0x0b
#define CASCADE_LINE 2
#define LAPIC_BASE 0xfee00000u
#define LAPIC_SVR 0xf0
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xff
#define LVT_EXTINT 0x700
#define LVT_NMI 0x400

static void lapic_write(u32 reg, u32 value)
{
    *(volatile u32 *)(LAPIC_BASE + reg) = value;
}

void pic_init(void)
{
    lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
    lapic_write(LAPIC_LVT_LINT0, LVT_EXTINT);
    lapic_write(LAPIC_LVT_LINT1, LVT_NMI);

    outb(PIC1_CMD, ICW1_INIT_ICW4);
    outb(PIC2_CMD, ICW1_INIT_ICW4);
    outb(PIC1_DATA, PIC_VECTOR_BASE);
    outb(PIC2_DATA, PIC_VECTOR_BASE + 8);
    outb(PIC1_DATA, 1 << CASCADE_LINE);       /* slave on line 2 */
    outb(PIC2_DATA, CASCADE_LINE);
    outb(PIC1_DATA, ICW4_8086);
    outb(PIC2_DATA, ICW4_8086);
    /* Everything masked but the timer (line 0) and the cascade. */
    outb(PIC1_DATA, (u8)~(1 << 0 | 1 << CASCADE_LINE));
    outb(PIC2_DATA, 0xff);
}

void pic_mask(unsigned line)
{
    u16 port = line < 8 ? PIC1_DATA : PIC2_DATA;

    outb(port, inb(port) | 1 << (line & 7));
}

void pic_unmask(unsigned line)
{
    u16 port = line < 8 ? PIC1_DATA : PIC2_DATA;

    outb(port, inb(port) & ~(1 << (line & 7)));
}

void pic_eoi(unsigned line)
{
    if (line >= 8)
        outb(PIC2_CMD, OCW2_EOI);
    outb(PIC1_CMD, OCW2_EOI);
}

/* Line 7 or 15 raised with nothing in service: spurious, and no EOI is
 * due (but the master's for a spurious 15 on the cascade). */
int pic_spurious(unsigned line)
{
    u16 cmd = line < 8 ? PIC1_CMD : PIC2_CMD;

    outb(cmd, OCW3_READ_ISR);
    if (inb(cmd) & 0x80)
        return 0;
    if (line >= 8)
        outb(PIC1_CMD, OCW2_EOI);
    return 1;
}

u32 pic_elcr(void)
{
    return inb(ELCR1) | (u32)inb(ELCR2) << 8;
}
