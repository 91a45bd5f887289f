/*
 * What the agent's files share: fixed-size types, port and memory access,
 * the TSC, and the few services of the other files.  In the manner of
 * kvm-unit-tests' lib/x86: tiny, no libc.
 */
#ifndef AGENT_LIBAGENT_H
#define AGENT_LIBAGENT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define DEBUGCON_PORT   0x402   /* QEMU isa-debugcon (SeaBIOS prints there too) */
#define DEBUG_EXIT_PORT 0xf4    /* QEMU isa-debug-exit: status (code << 1) | 1 */

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (u64)hi << 32 | lo;
}

static inline void sti_hlt(void) { asm volatile("sti; hlt" ::: "memory"); }
static inline void cli(void) { asm volatile("cli" ::: "memory"); }
static inline void sti(void) { asm volatile("sti" ::: "memory"); }
static inline void barrier(void) { asm volatile("" ::: "memory"); }

/* console.c */
void puts(const char *s);
void put_hex(u32 v);
void put_dec(u32 v);

/* pic.c: the two 8259s, remapped to vectors PIC_VECTOR_BASE.. */
#define PIC_VECTOR_BASE 0x20
void pic_init(void);
void pic_mask(unsigned line);
void pic_unmask(unsigned line);
void pic_eoi(unsigned line);
int pic_spurious(unsigned line);
u32 pic_elcr(void);

/* pit.c: channel 0 at 1 kHz */
void pit_init(void);

/* pci.c: BARs the firmware left unassigned on bus 0 */
void pci_setup(void);

/* irq.c */
typedef void (*irq_handler_t)(unsigned line, u64 tsc);
void idt_init(irq_handler_t handler);

/* agent.c, called by boot.S's exception stubs */
void exception(u32 vector, u32 error, u32 eip);

void debug_exit(u32 code) __attribute__((noreturn));

#endif
