/*
 * The guest agent: a bare-metal PVH guest that executes the device
 * accesses the harness posts in its mailbox (mailbox.h) and takes the
 * device's interrupts, timing each step with the TSC.
 *
 * It never enables paging, so the same binary runs under TCG, under KVM on
 * VMX/SVM hosts, and under the PVM flavour of KVM, whose instruction
 * emulator runs only guests without paging.  For that emulator's sake the
 * code keeps to plain integer instructions (-march=i586, no SSE) and the
 * interrupt stubs return without iret (boot.S).
 */
#include "libagent.h"
#include "mailbox.h"
#include "pvh.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define CALIBRATION_TICKS 20
#define FAULT_EXIT_CODE 0x7e        /* QEMU exits with status 253 */
#define NO_FAULT 0xffffffffu
#define IDLE_SPIN_TICKS 2           /* keep polling this long after a batch */
#define PROBE_ARG "agent.probe"     /* -append: exit once ready (harness/qemu/accel.py) */
#define PROBE_EXIT_CODE 0x31

static struct mailbox *const mb = (struct mailbox *)MAILBOX_ADDR;

static struct agent_cmd *cmds(void)
{
    return (struct agent_cmd *)(MAILBOX_ADDR + MAILBOX_CMDS_OFFSET);
}

static void on_irq(unsigned line, u64 tsc)
{
    if ((line == 7 || line == 15) && pic_spurious(line)) {
        mb->spurious++;
        return;
    }
    if (line == 0) {
        mb->ticks++;
        pic_eoi(0);
        return;
    }
    if (line == mb->irq_line) {
        /* Masked, and no EOI until OP_IRQ_ACK: a level still high after
         * the ACK's EOI is what the resample path must deliver again. */
        mb->irq_last_tsc = tsc;
        mb->irq_count++;
        pic_mask(line);
        return;
    }
    mb->other_irqs++;
    pic_mask(line);
    pic_eoi(line);
}

void exception(u32 vector, u32 error, u32 eip)
{
    mb->fault_vector = vector;
    mb->fault_error = error;
    mb->fault_eip = eip;
    puts("agent: exception ");
    put_dec(vector);
    puts(" error ");
    put_hex(error);
    puts(" at eip ");
    put_hex(eip);
    puts(" running command ");
    put_dec(mb->current);
    puts("\n");
    debug_exit(FAULT_EXIT_CODE);
}

/* Wait until ``ticks`` reaches ``until`` or ``done()`` holds, halting in
 * between; interrupts are checked with IF clear so that none can slip in
 * between the test and the hlt (sti's shadow covers the hlt). */
static int wait_ticks(u32 until, int (*done)(void))
{
    for (;;) {
        cli();
        if (done && done()) {
            sti();
            return 1;
        }
        if ((int)(mb->ticks - until) >= 0) {
            sti();
            return 0;
        }
        sti_hlt();
    }
}

static int irq_pending(void)
{
    return mb->irq_count != mb->irq_consumed;
}

static int size_ok(u32 size)
{
    return size == 1 || size == 2 || size == 4;
}

static u32 io_read(u32 port, u32 size)
{
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}

static void io_write(u32 port, u32 size, u32 value)
{
    if (size == 1)
        outb(port, value);
    else if (size == 2)
        outw(port, value);
    else
        outl(port, value);
}

/* Configuration mechanism #1: select the dword, then access its bytes. */
static u32 cfg_select(u32 bdf, u32 offset)
{
    outl(PCI_CONFIG_ADDRESS, 0x80000000u | bdf << 8 | (offset & 0xfc));
    return PCI_CONFIG_DATA + (offset & 3);
}

static u32 mem_read(u32 addr, u32 size)
{
    if (size == 1)
        return *(volatile u8 *)addr;
    if (size == 2)
        return *(volatile u16 *)addr;
    return *(volatile u32 *)addr;
}

static void mem_write(u32 addr, u32 size, u32 value)
{
    if (size == 1)
        *(volatile u8 *)addr = value;
    else if (size == 2)
        *(volatile u16 *)addr = value;
    else
        *(volatile u32 *)addr = value;
}

static int sized(struct agent_cmd *c)
{
    switch (c->op) {
    case OP_CFG_READ:
    case OP_CFG_WRITE:
        /* A config access stays within its dword. */
        return size_ok(c->size) && (c->addr & (c->size - 1)) == 0 && c->addr < 0x100;
    case OP_IO_READ:
    case OP_IO_WRITE:
    case OP_MEM_READ:
    case OP_MEM_WRITE:
        return size_ok(c->size);
    }
    return 1;
}

static void run(struct agent_cmd *c)
{
    c->status = ST_OK;
    if (c->op >= OP_COUNT) {
        c->status = ST_BAD_OP;
        return;
    }
    if (!sized(c)) {
        c->status = ST_BAD_SIZE;
        return;
    }
    c->tsc_start = rdtsc();
    switch (c->op) {
    case OP_NOP:
        break;
    case OP_CFG_READ:
        c->value = io_read(cfg_select(c->arg, c->addr), c->size);
        break;
    case OP_CFG_WRITE:
        io_write(cfg_select(c->arg, c->addr), c->size, c->value);
        break;
    case OP_IO_READ:
        c->value = io_read(c->addr, c->size);
        break;
    case OP_IO_WRITE:
        io_write(c->addr, c->size, c->value);
        break;
    case OP_MEM_READ:
        c->value = mem_read(c->addr, c->size);
        break;
    case OP_MEM_WRITE:
        mem_write(c->addr, c->size, c->value);
        break;
    case OP_IRQ_ENABLE:
        if (c->arg >= 16 || c->arg == 0 || c->arg == 2) {
            c->status = ST_BAD_LINE;
            break;
        }
        cli();
        mb->irq_line = c->arg;
        mb->irq_count = mb->irq_consumed = 0;
        pic_unmask(c->arg);
        sti();
        break;
    case OP_IRQ_WAIT:
        if (!wait_ticks(mb->ticks + c->arg, irq_pending)) {
            c->status = ST_TIMEOUT;
            break;
        }
        mb->irq_consumed++;
        c->irq_tsc = mb->irq_last_tsc;
        c->value = mb->irq_consumed;
        break;
    case OP_IRQ_ACK:
        if (c->arg != mb->irq_line) {
            c->status = ST_BAD_LINE;
            break;
        }
        pic_eoi(c->arg);
        pic_unmask(c->arg);
        break;
    case OP_TSC:
        c->value = (u32)c->tsc_start;
        break;
    case OP_DELAY:
        wait_ticks(mb->ticks + c->arg, 0);
        break;
    case OP_TRAP:
        asm volatile("ud2");
        break;
    case OP_EXIT:
        puts("agent: exit\n");
        debug_exit(c->arg);
    }
    c->tsc_end = rdtsc();
    c->irq_count = mb->irq_count;
}

static void calibrate(void)
{
    u32 start;
    u64 tsc;

    start = mb->ticks;
    wait_ticks(start + 1, 0);
    tsc = rdtsc();
    wait_ticks(start + 1 + CALIBRATION_TICKS, 0);
    mb->calib_tsc = rdtsc() - tsc;
    mb->calib_ticks = CALIBRATION_TICKS;
}

static void serve(void)
{
    u32 idle_until = 0;

    for (;;) {
        u32 seq = mb->request_seq;
        u32 i, n;

        if (seq == mb->done_seq) {
            /* Just after a batch another usually follows: poll a little
             * before halting until the next tick. */
            if ((int)(mb->ticks - idle_until) < 0)
                asm volatile("pause");
            else
                wait_ticks(mb->ticks + 1, 0);
            continue;
        }
        n = mb->count < MAILBOX_MAX_CMDS ? mb->count : MAILBOX_MAX_CMDS;
        for (i = 0; i < n; i++) {
            mb->current = i;
            run(&cmds()[i]);
        }
        barrier();
        mb->done_seq = seq;
        idle_until = mb->ticks + IDLE_SPIN_TICKS;
    }
}

/* Whether the command line (QEMU's -append) holds ``word``. */
static int cmdline_has(const struct hvm_start_info *si, const char *word)
{
    const char *line, *w;

    if (!si || si->magic != HVM_START_MAGIC || !si->cmdline_paddr)
        return 0;
    for (line = (const char *)(u32)si->cmdline_paddr; *line; line++) {
        for (w = word; *w && line[w - word] == *w; w++)
            ;
        if (!*w)
            return 1;
    }
    return 0;
}

void main(const struct hvm_start_info *si);

void main(const struct hvm_start_info *si)
{
    mb->magic = 0;
    mb->version = MAILBOX_VERSION;
    mb->request_seq = mb->done_seq = 0;
    mb->count = mb->current = 0;
    mb->ticks = 0;
    mb->irq_line = 0xffffffffu;
    mb->irq_count = mb->irq_consumed = 0;
    mb->spurious = mb->other_irqs = 0;
    mb->fault_vector = NO_FAULT;
    mb->boots++;
    puts("agent: starting\n");
    idt_init(on_irq);
    pic_init();
    pit_init();
    pci_setup();
    sti();
    calibrate();
    mb->elcr = pic_elcr();
    barrier();
    mb->magic = MAILBOX_MAGIC;
    puts("agent: ready\n");
    if (cmdline_has(si, PROBE_ARG))
        debug_exit(PROBE_EXIT_CODE);
    serve();
}
