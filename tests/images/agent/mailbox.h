/*
 * The mailbox: how the harness talks to the agent, through guest RAM that
 * both see (the proxy's memory-backend-memfd, mapped by the harness from
 * /proc/PID/fd; see harness/agent/mailbox.py, which mirrors this layout).
 *
 * The harness writes a batch of commands, then request_seq; the agent runs
 * them in order, fills in each command's value, status and TSC stamps, then
 * sets done_seq = request_seq.  Little endian, fixed offsets.
 */
#ifndef AGENT_MAILBOX_H
#define AGENT_MAILBOX_H

#include "libagent.h"

#define MAILBOX_ADDR        0x00200000u
#define MAILBOX_MAGIC       0x4150514du     /* "MQPA" */
#define MAILBOX_VERSION     1
#define MAILBOX_CMDS_OFFSET 0x100
#define MAILBOX_MAX_CMDS    1020            /* 64 KiB in all */

enum agent_op {
    OP_NOP = 0,
    OP_CFG_READ,        /* arg = bus << 8 | devfn, addr = offset, size */
    OP_CFG_WRITE,
    OP_IO_READ,         /* addr = port, size */
    OP_IO_WRITE,
    OP_MEM_READ,        /* addr = physical address (MMIO or RAM), size */
    OP_MEM_WRITE,
    OP_IRQ_ENABLE,      /* arg = line: unmask it; the handler masks it again */
    OP_IRQ_WAIT,        /* arg = timeout in ms: the next interrupt of the line */
    OP_IRQ_ACK,         /* arg = line: end of interrupt, then unmask */
    OP_TSC,             /* value = low 32 bits; tsc_start/tsc_end */
    OP_DELAY,           /* arg = ms, on the PIT */
    OP_TRAP,            /* executes ud2: the fault path, for the harness's tests */
    OP_EXIT,            /* arg = code for isa-debug-exit */
    OP_COUNT
};

enum agent_status {
    ST_OK = 0,
    ST_PENDING,         /* not run yet (the harness resets it to this) */
    ST_BAD_OP,
    ST_BAD_SIZE,
    ST_TIMEOUT,
    ST_BAD_LINE,
};

struct agent_cmd {              /* 64 bytes */
    u32 op;
    u32 addr;
    u32 size;
    u32 value;                  /* to write, or what was read */
    u32 status;
    u32 arg;
    u32 irq_count;              /* interrupts of the line taken so far, after the command */
    u32 reserved0;
    u64 tsc_start;              /* around the access itself */
    u64 tsc_end;
    u64 irq_tsc;                /* OP_IRQ_WAIT: TSC when the handler was entered */
    u32 reserved[2];
};

struct mailbox {
    u32 magic;                  /* 0x00: MAILBOX_MAGIC once the agent is ready */
    u32 version;
    volatile u32 request_seq;   /* 0x08: written by the harness after a batch */
    volatile u32 done_seq;      /* 0x0c: written by the agent when it is done */
    u32 count;                  /* 0x10: commands in the batch */
    u32 current;                /* 0x14: index of the command being run */
    volatile u32 ticks;         /* 0x18: PIT ticks (1 kHz) since start */
    u32 irq_line;               /* 0x1c: the line OP_IRQ_ENABLE unmasked */
    volatile u32 irq_count;     /* 0x20: interrupts of that line so far */
    u32 irq_consumed;           /* 0x24: of which OP_IRQ_WAIT returned */
    u32 spurious;               /* 0x28: spurious IRQ 7/15 */
    u32 other_irqs;             /* 0x2c: interrupts of lines nobody enabled */
    u64 calib_tsc;              /* 0x30: TSC over calib_ticks PIT ticks */
    u32 calib_ticks;            /* 0x38 */
    u32 fault_vector;           /* 0x3c: CPU exception taken, 0xffffffff for none */
    u32 fault_eip;              /* 0x40 */
    u32 fault_error;            /* 0x44 */
    u32 elcr;                   /* 0x48: the 8259s' edge/level register, as found */
    u32 boots;                  /* 0x4c: incremented by every start of the agent */
    volatile u64 irq_last_tsc;  /* 0x50: TSC at the last handler entry */
};

#endif
