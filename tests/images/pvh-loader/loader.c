/*
 * pvh-loader main: unpack the kernel's segments to their physical
 * addresses, describe the machine in a PVH hvm_start_info from what the
 * boot loader and the kernel's setup code left in boot_params, and enter
 * the kernel at its PVH entry.
 */
#include "loader.h"
#include "pvh.h"

/* boot_params (Documentation/arch/x86/zero-page.rst, boot.rst) */
#define BP_E820_ENTRIES 0x1e8
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128

#define E820_RAM 1

struct e820_entry {
    u64 addr;
    u64 size;
    u32 type;
} __attribute__((packed));

#define COM1 0x3f8
#define PAGE_BYTES 4096

extern char start[], _end[];
void pvh_enter(u32 entry, struct hvm_start_info *info) __attribute__((noreturn));
void loader_main(const u8 *boot_params) __attribute__((noreturn));

static struct hvm_start_info start_info;
static struct hvm_modlist_entry modules[1];
static struct hvm_memmap_table_entry memmap[BP_E820_MAX];

/* What gcc may call for __builtin_memcpy, assignments and loops. */
void *memcpy(void *dest, const void *src, u32 n);
void *memmove(void *dest, const void *src, u32 n);
void *memset(void *dest, int c, u32 n);

void *memcpy(void *dest, const void *src, u32 n)
{
    u8 *d = dest;
    const u8 *s = src;

    while (n >= 4) {
        u32 w;
        __builtin_memcpy(&w, s, 4);
        __builtin_memcpy(d, &w, 4);
        d += 4;
        s += 4;
        n -= 4;
    }
    while (n--) {
        *d++ = *s++;
    }
    return dest;
}

void *memmove(void *dest, const void *src, u32 n)
{
    u8 *d = dest;
    const u8 *s = src;

    if (d <= s || d >= s + n) {
        return memcpy(dest, src, n);
    }
    while (n--) {
        d[n] = s[n];
    }
    return dest;
}

void *memset(void *dest, int c, u32 n)
{
    u32 ecx = n;
    void *edi = dest;

    asm volatile("rep stosb" : "+c"(ecx), "+D"(edi) : "a"(c) : "memory");
    return dest;
}

static inline void outb(u16 port, u8 value)
{
    asm volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline u8 inb(u16 port)
{
    u8 value;
    asm volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void putc(char c)
{
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) {
    }
    outb(COM1, c);
}

static void puts(const char *s)
{
    while (*s) {
        if (*s == '\n') {
            putc('\r');
        }
        putc(*s++);
    }
}

static void puthex(u32 v)
{
    puts("0x");
    for (int shift = 28; shift >= 0; shift -= 4) {
        putc("0123456789abcdef"[(v >> shift) & 15]);
    }
}

static void __attribute__((noreturn)) fail(const char *what, u32 value)
{
    puts("pvh-loader: ");
    puts(what);
    puts(" (");
    puthex(value);
    puts("); halted\n");
    for (;;) {
        asm volatile("cli; hlt");
    }
}

static int overlaps(u32 a, u32 a_bytes, u32 b, u32 b_bytes)
{
    return a < b + b_bytes && b < a + a_bytes;
}

/* Is [addr, addr + bytes) inside one RAM entry of the e820 map? */
static int in_ram(u32 addr, u32 bytes)
{
    for (u32 i = 0; i < start_info.memmap_entries; i++) {
        const struct hvm_memmap_table_entry *e = &memmap[i];
        if (e->type == E820_RAM && e->addr <= addr && addr + (u64)bytes <= e->addr + e->size) {
            return 1;
        }
    }
    return 0;
}

/* A pointer to physical address addr that the compiler cannot see
 * through (it would otherwise object to reading from a constant address). */
static inline const u8 *phys(u32 addr)
{
    asm("" : "+r"(addr));
    return (const u8 *)addr;
}

static u8 checksum(const u8 *p, u32 bytes)
{
    u8 sum = 0;

    while (bytes--) {
        sum += *p++;
    }
    return sum;
}

/* ACPI 6.5 5.2.5.1: the RSDP lies on a 16-byte boundary in the first KiB
 * of the EBDA or in 0xe0000-0xfffff; its first 20 bytes sum to zero. */
static u32 find_rsdp(void)
{
    u32 ebda = *(const u16 *)phys(0x40e) << 4;
    u32 ranges[2][2] = {{ebda, ebda + 1024}, {0xe0000, 0x100000}};

    for (int r = 0; r < 2; r++) {
        if (r == 0 && (ebda < 0x80000 || ebda >= 0xa0000)) {
            continue;
        }
        for (u32 p = ranges[r][0]; p < ranges[r][1]; p += 16) {
            if (!__builtin_memcmp(phys(p), "RSD PTR ", 8) && checksum(phys(p), 20) == 0) {
                return p;
            }
        }
    }
    return 0;
}

static void describe_machine(const u8 *bp)
{
    u32 entries = bp[BP_E820_ENTRIES];
    const struct e820_entry *e820 = (const void *)(bp + BP_E820_TABLE);
    u32 initrd = *(const u32 *)(bp + BP_RAMDISK_IMAGE);
    u32 initrd_bytes = *(const u32 *)(bp + BP_RAMDISK_SIZE);

    if (entries == 0 || entries > BP_E820_MAX) {
        fail("no e820 memory map in boot_params", entries);
    }
    for (u32 i = 0; i < entries; i++) {
        memmap[i].addr = e820[i].addr;
        memmap[i].size = e820[i].size;
        memmap[i].type = e820[i].type;
    }
    start_info.magic = HVM_START_MAGIC;
    start_info.version = HVM_START_VERSION;
    start_info.memmap_paddr = (u32)memmap;
    start_info.memmap_entries = entries;
    start_info.cmdline_paddr = *(const u32 *)(bp + BP_CMD_LINE_PTR);
    start_info.rsdp_paddr = find_rsdp();
    if (initrd_bytes) {
        modules[0].paddr = initrd;
        modules[0].size = initrd_bytes;
        start_info.modlist_paddr = (u32)modules;
        start_info.nr_modules = 1;
    }
}

/* Where the frames can be moved so that no segment overwrites them
 * before it is unpacked: above the highest segment, clear of the initrd. */
static const u8 *move_frames(const u8 *frames, u32 bytes, u32 kernel_end)
{
    u32 dest = (kernel_end + PAGE_BYTES - 1) & ~(PAGE_BYTES - 1);

    if (modules[0].size && overlaps(dest, bytes, modules[0].paddr, modules[0].size)) {
        dest = (modules[0].paddr + modules[0].size + PAGE_BYTES - 1) & ~(PAGE_BYTES - 1);
    }
    if (!in_ram(dest, bytes)) {
        fail("no RAM above the kernel for its compressed segments", dest);
    }
    return memmove((void *)dest, frames, bytes);
}

void loader_main(const u8 *boot_params)
{
    const struct payload_header *hdr = (const void *)_end;
    const struct payload_segment *seg = (const void *)(hdr + 1);
    const u8 *frames;
    u32 nr, frames_bytes = 0, kernel_end = 0;
    u32 loader = (u32)start;

    describe_machine(boot_params);
    if (__builtin_memcmp(hdr->magic, PAYLOAD_MAGIC, 8)) {
        fail("no payload after the loader", (u32)hdr);
    }
    nr = hdr->nr_segments;
    if (nr == 0 || nr > PAYLOAD_MAX_SEGMENTS) {
        fail("bad segment count", nr);
    }
    frames = (const u8 *)(seg + nr);
    for (u32 i = 0; i < nr; i++) {
        if (seg[i].filesz > seg[i].memsz || !in_ram(seg[i].paddr, seg[i].memsz)) {
            fail("segment outside RAM", seg[i].paddr);
        }
        if (overlaps(seg[i].paddr, seg[i].memsz, loader, (u32)frames - loader)) {
            fail("segment overlaps the loader", seg[i].paddr);
        }
        if (modules[0].size &&
            overlaps(seg[i].paddr, seg[i].memsz, modules[0].paddr, modules[0].size)) {
            fail("segment overlaps the initrd", seg[i].paddr);
        }
        frames_bytes += seg[i].frame_bytes;
        if (seg[i].paddr + seg[i].memsz > kernel_end) {
            kernel_end = seg[i].paddr + seg[i].memsz;
        }
    }
    for (u32 i = 0; i < nr; i++) {
        if (overlaps(seg[i].paddr, seg[i].memsz, (u32)frames, frames_bytes)) {
            frames = move_frames(frames, frames_bytes, kernel_end);
            break;
        }
    }
    for (u32 i = 0; i < nr; i++) {
        const char *err = lz4_legacy_decode(frames, seg[i].frame_bytes,
                                            (u8 *)seg[i].paddr, seg[i].filesz);
        if (err) {
            puts("pvh-loader: segment ");
            puthex(seg[i].paddr);
            puts(": ");
            fail(err, i);
        }
        memset((u8 *)seg[i].paddr + seg[i].filesz, 0, seg[i].memsz - seg[i].filesz);
        frames += seg[i].frame_bytes;
    }
    pvh_enter(hdr->entry, &start_info);
}
