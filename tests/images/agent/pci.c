/*
 * PCI set-up of bus 0 where the firmware left it undone.
 *
 * qboot routes the PIRQs and writes each function's interrupt line but
 * assigns no BARs; SeaBIOS assigns them all, and then this finds nothing
 * to do.  Like an OS that cannot count on its firmware, the agent sizes
 * each unassigned BAR (decoding off meanwhile) and places it: I/O upward
 * from 0xc000, memory downward from the IOAPIC at 0xfec00000, biggest
 * first so that each stays aligned to its size, memory BARs a page at
 * least, as SeaBIOS lays them out.
 * A function it placed a BAR of gets I/O, memory and bus-master enabled.
 *
 * The interrupt line register is checked against the chipset's routing
 * too: qboot writes the PIIX's slot-2 INTA# as IRQ 11 where the PIIX
 * routes it (PIRQB) to IRQ 10, so a guest trusting it would wait for ever.
 * The agent computes the line as QEMU wires it (and SeaBIOS writes it):
 * PIIX3, slot S pin P -> PIRQ (S - 1 + P - 1) & 3; ICH9, slots 0-24 ->
 * PIRQ (S + P - 1) & 3; the ISA IRQ is the route register of that PIRQ.
 * The chipsets' own functions (PIIX slot 1, whose ACPI function raises
 * the SCI on IRQ 9; ICH9 slots 25-31) keep the firmware's line.
 *
 * Whatever a function answers (a hostile remote may say anything), a BAR's
 * size is the lowest address bit it leaves writable, and one that does not
 * fit its window is left unassigned, with a line on the console.
 */
#include "libagent.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define PCI_COMMAND 0x04
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_HEADER_TYPE 0x0e
#define PCI_INTERRUPT_LINE 0x3c     /* and the pin at 0x3d */
#define PIIX3_ISA_BDF (1 << 3)      /* 00:01.0, 8086:7000 */
#define PIIX3_ISA_ID 0x70008086u
#define ICH9_LPC_BDF (0x1f << 3)    /* 00:1f.0, 8086:2918 */
#define ICH9_LPC_ID 0x29188086u
#define PIRQ_ROUTE 0x60             /* PIRQA..D route registers, both */
#define PIRQ_DISABLED 0x80
#define PCI_HEADER_MULTI 0x80
#define PCI_BAR0 0x10
#define PCI_BARS 6
#define BAR_IO 0x1
#define BAR_MEM_TYPE_64 0x4
#define IO_BASE 0xc000u
#define IO_LIMIT 0x10000u
#define MEM_TOP 0xfec00000u
#define MEM_BOTTOM 0xe0000000u     /* RAM below 4 GiB and q35's MMCONFIG end below */
#define MEM_MIN_SIZE 0x1000u       /* a page each, as SeaBIOS rounds them */
#define MAX_BARS 64

struct bar {
    u32 bdf, offset, size;
    int io, is64;
};

static u32 cfg_read(u32 bdf, u32 offset)
{
    outl(PCI_CONFIG_ADDRESS, 0x80000000u | bdf << 8 | offset);
    return inl(PCI_CONFIG_DATA);
}

static void cfg_write(u32 bdf, u32 offset, u32 value)
{
    outl(PCI_CONFIG_ADDRESS, 0x80000000u | bdf << 8 | offset);
    outl(PCI_CONFIG_DATA, value);
}

static void put_bdf(u32 bdf)
{
    static const char digits[] = "0123456789abcdef";
    char buf[] = "00:00.0";

    buf[3] = digits[(bdf >> 7) & 1];
    buf[4] = digits[(bdf >> 3) & 0xf];
    buf[6] = '0' + (bdf & 7);
    puts(buf);
}

/* The size of the BAR at ``offset`` if it is unassigned, else 0; a 64-bit
 * BAR counts only if its upper half can stay 0 (below 4 GiB). */
static u32 unassigned_size(u32 bdf, u32 offset, int *io, int *is64)
{
    u32 old = cfg_read(bdf, offset), probe, mask, upper = 0;

    *io = old & BAR_IO;
    *is64 = !*io && (old & 0x6) == BAR_MEM_TYPE_64;
    mask = *io ? ~0x3u : ~0xfu;
    if (old & mask)
        return 0;                   /* the firmware placed it */
    cfg_write(bdf, offset, 0xffffffffu);
    probe = cfg_read(bdf, offset) & mask;
    cfg_write(bdf, offset, old);
    if (*is64 && offset + 4 < PCI_BAR0 + 4 * PCI_BARS) {
        u32 old_upper = cfg_read(bdf, offset + 4);
        cfg_write(bdf, offset + 4, 0xffffffffu);
        upper = cfg_read(bdf, offset + 4);
        cfg_write(bdf, offset + 4, old_upper);
    }
    if (*io)
        probe &= 0xffff;            /* 16-bit I/O decoders read 0 above */
    if (*is64 && upper != 0xffffffffu)
        return 0;                   /* needs more than 4 GiB: not ours */
    probe &= -probe;
    return !*io && probe && probe < MEM_MIN_SIZE ? MEM_MIN_SIZE : probe;
}

/* The ISA IRQ the chipset routes ``bdf``'s INTx ``pin`` (1-4) to, or 0
 * if this is not a chipset whose wiring the agent knows. */
static u32 routed_irq(u32 bdf, u32 pin)
{
    u32 slot = bdf >> 3, pirq, route_bdf, route;

    if (cfg_read(PIIX3_ISA_BDF, 0) == PIIX3_ISA_ID && slot >= 2) {
        pirq = (slot - 1 + pin - 1) & 3;
        route_bdf = PIIX3_ISA_BDF;
    } else if (cfg_read(ICH9_LPC_BDF, 0) == ICH9_LPC_ID && slot <= 24) {
        pirq = (slot + pin - 1) & 3;
        route_bdf = ICH9_LPC_BDF;
    } else {
        return 0;
    }
    route = cfg_read(route_bdf, PIRQ_ROUTE) >> (8 * pirq) & 0xff;
    return route & PIRQ_DISABLED ? 0 : route & 0xf;
}

static void route_intx(u32 bdf)
{
    u32 reg = cfg_read(bdf, PCI_INTERRUPT_LINE);
    u32 line = reg & 0xff, pin = reg >> 8 & 0xff, irq;

    if (pin < 1 || pin > 4)
        return;
    irq = routed_irq(bdf, pin);
    if (!irq || irq == line)
        return;
    cfg_write(bdf, PCI_INTERRUPT_LINE, (reg & ~0xffu) | irq);
    puts("agent: pci ");
    put_bdf(bdf);
    puts(" INTx routed to IRQ ");
    put_dec(irq);
    puts(", not the firmware's ");
    put_dec(line);
    puts("\n");
}

static unsigned collect(struct bar *bars)
{
    unsigned n = 0;
    u32 dev, fn;

    for (dev = 0; dev < 32; dev++) {
        for (fn = 0; fn < 8; fn++) {
            u32 bdf = dev << 3 | fn, cmd, offset;
            u32 id = cfg_read(bdf, 0);
            u8 header;

            if ((id & 0xffff) == 0xffff) {
                if (fn == 0)
                    break;
                continue;
            }
            header = cfg_read(bdf, PCI_HEADER_TYPE & ~3u) >> 16;
            if ((header & 0x7f) == 0) {
                cmd = cfg_read(bdf, PCI_COMMAND);
                cfg_write(bdf, PCI_COMMAND,
                          cmd & ~(u32)(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
                for (offset = PCI_BAR0; offset < PCI_BAR0 + 4 * PCI_BARS; offset += 4) {
                    struct bar b = { bdf, offset, 0, 0, 0 };

                    b.size = unassigned_size(bdf, offset, &b.io, &b.is64);
                    if (b.size && n < MAX_BARS)
                        bars[n++] = b;
                    if (b.is64)
                        offset += 4;
                }
                cfg_write(bdf, PCI_COMMAND, cmd & 0xffff);
                route_intx(bdf);
            }
            if (fn == 0 && !(header & PCI_HEADER_MULTI))
                break;
        }
    }
    return n;
}

static void place(const struct bar *b, u32 *io_next, u32 *mem_top)
{
    u32 addr, cmd;

    if (b->io) {
        addr = (*io_next + b->size - 1) & ~(b->size - 1);
        if (addr < *io_next || addr + b->size > IO_LIMIT || addr + b->size < addr)
            goto no_room;
        *io_next = addr + b->size;
    } else {
        addr = (*mem_top - b->size) & ~(b->size - 1);
        if (b->size > *mem_top - MEM_BOTTOM || addr < MEM_BOTTOM)
            goto no_room;
        *mem_top = addr;
    }
    cfg_write(b->bdf, b->offset, addr);
    if (b->is64)
        cfg_write(b->bdf, b->offset + 4, 0);
    cmd = cfg_read(b->bdf, PCI_COMMAND) & 0xffff;
    cfg_write(b->bdf, PCI_COMMAND, cmd | PCI_COMMAND_MASTER |
              (b->io ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY));
    puts("agent: pci ");
    put_bdf(b->bdf);
    puts(" bar ");
    put_dec((b->offset - PCI_BAR0) / 4);
    puts(b->io ? " io " : " mem ");
    put_hex(addr);
    puts(" size ");
    put_hex(b->size);
    puts("\n");
    return;
no_room:
    puts("agent: pci ");
    put_bdf(b->bdf);
    puts(" bar ");
    put_dec((b->offset - PCI_BAR0) / 4);
    puts(" size ");
    put_hex(b->size);
    puts(" does not fit: left unassigned\n");
}

void pci_setup(void)
{
    static struct bar bars[MAX_BARS];
    u32 io_next = IO_BASE, mem_top = MEM_TOP;
    unsigned n = collect(bars), i, j;

    for (i = 0; i < n; i++) {           /* biggest first */
        for (j = i + 1; j < n; j++) {
            if (bars[j].size > bars[i].size) {
                struct bar t = bars[i];
                bars[i] = bars[j];
                bars[j] = t;
            }
        }
        place(&bars[i], &io_next, &mem_top);
    }
}
