/*
 * lsi-dio: disk IO workloads from inside the guest, with a byte-exact
 * pattern the host can check against the disk image file.
 *
 * Two backends run the same workloads and print the same JSON:
 *
 *   lsi       drives the LSI 53C895A itself from user space, with polled
 *             SCRIPTS (no driver, no interrupt): registers through the
 *             device's sysfs BAR files (MMIO BAR mmap'd, or the I/O BAR
 *             through pread/pwrite), SCRIPTS and data in locked guest RAM
 *             whose physical addresses come from /proc/self/pagemap
 *             (/dev/mem cannot map RAM: STRICT_DEVMEM).  This is the path
 *             under TCG, where the proxy cannot deliver the LSI's INTx.
 *   blockdev  pread/pwrite on a block device or file (--dev), O_DIRECT or
 *             buffered: the path through Linux's sym53c8xx driver (KVM).
 *
 * The SCRIPTS sequence mirrors harness/devices/lsi/driver.py (Lsi53c895a.command),
 * which is checked against QEMU's hw/scsi/lsi53c895a.c: SELECT, IDENTIFY,
 * CDB, then follow the target through its disconnect/reselect, one block
 * move per physically contiguous run of the buffer, STATUS and COMMAND
 * COMPLETE, and stop with INT.
 *
 * Pattern (also in harness/guest/diskio.py): 512-byte unit at absolute
 * LBA L is 64 little-endian u64 words w[i] = base[i] ^ (i even ? L : ~seed),
 * base[i] = the i-th splitmix64 output seeded with seed.
 *
 * Exit status: 0 ok, 1 data mismatch, 2 device/SCSI error, 3 usage or
 * set-up error, 4 device gone (all-ones reads: remote dead), 5 timeout.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TOOL_VERSION 1
#define SECTOR 512u
#define PAGE 4096u
#define MAX_BS (512u * 1024u)          /* per SCSI command: the script fits a page */
#define MAX_SEGMENTS (MAX_BS / PAGE)

enum { EXIT_OK, EXIT_MISMATCH, EXIT_DEVICE, EXIT_USAGE, EXIT_GONE, EXIT_TIMEOUT };
static const char *exit_names[] = { "ok", "mismatch", "device", "usage", "gone", "timeout" };

/* ---------------------------------------------------------- registers */
/* Offsets as in hw/scsi/lsi53c895a.c and harness/devices/lsi/registers.py. */
#define DSTAT 0x0c
#define SSTAT1 0x0e
#define ISTAT0 0x14
#define ISTAT1 0x15
#define DSP 0x2c
#define DSPS 0x30
#define DMODE 0x38
#define DIEN 0x39
#define SIEN0 0x40
#define SIEN1 0x41
#define SIST0 0x42
#define SIST1 0x43
#define CCNTL1 0x57

#define ISTAT0_DIP 0x01
#define ISTAT0_SIP 0x02
#define ISTAT0_SRST 0x40
#define DSTAT_SIR 0x04
#define DSTAT_DFE 0x80
#define SIST1_STO 0x04
#define CCNTL1_EN64DBMV 0x01           /* direct block moves take a 3rd dword: addr[63:32] */

#define PHASE_DATA_OUT 0
#define PHASE_DATA_IN 1
#define PHASE_COMMAND 2
#define PHASE_STATUS 3
#define PHASE_MSG_OUT 6
#define PHASE_MSG_IN 7

#define INT_DONE 0x0000d0e0u
#define INT_BAD_PHASE 0x0000bad0u
#define INT_RESELECT_ABORTED 0x0000bad1u
#define INT_ALREADY_CONNECTED 0x0000bad2u

#define SCSI_TEST_UNIT_READY 0x00
#define SCSI_REQUEST_SENSE 0x03
#define SCSI_INQUIRY 0x12
#define SCSI_READ_CAPACITY_10 0x25
#define SCSI_READ_10 0x28
#define SCSI_WRITE_10 0x2a
#define MSG_IDENTIFY 0x80
#define STATUS_GOOD 0x00

/* Command block: one locked page (script, CDB, messages, status). */
#define CB_SCRIPT 0x000
#define CB_SCRIPT_MAX 0xc00
#define CB_CDB 0xc00
#define CB_MSGOUT 0xc10
#define CB_MSGIN 0xc18
#define CB_STATUS 0xc20
#define CB_SMALL 0xd00                 /* INQUIRY / READ CAPACITY / SENSE data */

/* ---------------------------------------------------------- options */
struct options {
    const char *op;
    const char *bdf;
    const char *dev;                   /* blockdev backend */
    int regs_io;
    int direct;
    long long lba;
    long long blocks;                  /* in 512-byte units */
    unsigned bs;
    int random_order;
    uint64_t seed;
    int node;                          /* -1: no binding */
    double cmd_timeout_s;
    double deadline_s;
    int passes;
    int force;
    int dma64;                         /* -1 auto, 0 off, 1 on */
};

static struct options opt = {
    .op = NULL, .lba = 0, .blocks = 2048, .bs = 65536, .seed = 1, .node = -1,
    .cmd_timeout_s = 10.0, .deadline_s = 0, .passes = 1, .dma64 = -1,
};

static double t0;
static int phases_open, nphases;      /* inside "phases": [ ... */
static char json_extra[16384];          /* accumulated "key": value, pairs */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void jadd(const char *fmt, ...)
{
    size_t used = strlen(json_extra);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(json_extra + used, sizeof(json_extra) - used, fmt, ap);
    va_end(ap);
}

static void json_string(char *out, size_t n, const char *s)
{
    size_t j = 0;
    for (; *s && j + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[j++] = '\\';
            out[j++] = c;
        } else if (c < 0x20 || c > 0x7e) {
            j += snprintf(out + j, n - j, "\\u%04x", c);
        } else {
            out[j++] = c;
        }
    }
    out[j] = 0;
}

/* Print the JSON report and exit: every path out of the tool ends here. */
static void finish(int code, const char *fmt, ...)
{
    char msg[1024] = "", esc[2200];
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        fprintf(stderr, "lsi-dio: %s\n", msg);
    }
    json_string(esc, sizeof(esc), msg);
    if (phases_open) {
        phases_open = 0;
        jadd("], ");
    }
    printf("{\"tool\": \"lsi-dio\", \"version\": %d, \"op\": \"%s\", %s"
           "\"elapsed_s\": %.6f, \"ok\": %s, \"status\": \"%s\", \"exit\": %d, "
           "\"error\": %s%s%s}\n",
           TOOL_VERSION, opt.op ? opt.op : "", json_extra, now() - t0,
           code == EXIT_OK ? "true" : "false", exit_names[code], code,
           fmt ? "\"" : "", fmt ? esc : "null", fmt ? "\"" : "");
    fflush(stdout);
    exit(code);
}

static void check_deadline(void)
{
    if (opt.deadline_s > 0 && now() - t0 > opt.deadline_s)
        finish(EXIT_TIMEOUT, "deadline of %.1f s passed", opt.deadline_s);
}

/* ---------------------------------------------------------- pattern */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t pattern_base[SECTOR / 8];

static void pattern_init(uint64_t seed)
{
    uint64_t state = seed;
    for (unsigned i = 0; i < SECTOR / 8; i++)
        pattern_base[i] = splitmix64(&state);
}

static void pattern_fill(uint8_t *buf, uint64_t lba, size_t sectors)
{
    for (size_t s = 0; s < sectors; s++) {
        uint64_t *w = (uint64_t *)(buf + s * SECTOR);
        for (unsigned i = 0; i < SECTOR / 8; i++)
            w[i] = pattern_base[i] ^ ((i & 1) ? ~opt.seed : lba + s);
    }
}

struct mismatch {
    long long count;                   /* differing bytes */
    long long first_offset;            /* absolute byte offset on the disk, -1 if none */
    int got, expected;
};

static void pattern_check(const uint8_t *buf, uint64_t lba, size_t sectors, struct mismatch *m)
{
    uint8_t expect[SECTOR];
    for (size_t s = 0; s < sectors; s++) {
        pattern_fill(expect, lba + s, 1);
        const uint8_t *got = buf + s * SECTOR;
        if (!memcmp(got, expect, SECTOR))
            continue;
        for (unsigned i = 0; i < SECTOR; i++) {
            if (got[i] == expect[i])
                continue;
            if (m->first_offset < 0) {
                m->first_offset = (long long)(lba + s) * SECTOR + i;
                m->got = got[i];
                m->expected = expect[i];
            }
            m->count++;
        }
    }
}

/* ---------------------------------------------------------- DMA memory */
struct dmabuf {
    uint8_t *va;
    size_t len;
    uint64_t *pa;                      /* per page */
};

static int pagemap_fd = -1;

static uint64_t phys_of(void *va)
{
    uint64_t entry;
    off_t off = (off_t)((uintptr_t)va / PAGE) * 8;
    if (pread(pagemap_fd, &entry, 8, off) != 8)
        finish(EXIT_USAGE, "reading /proc/self/pagemap: %s", strerror(errno));
    if (!(entry & (1ull << 63)))
        finish(EXIT_USAGE, "page at %p is not present after mlock", va);
    uint64_t pfn = entry & ((1ull << 55) - 1);
    if (!pfn)
        finish(EXIT_USAGE, "/proc/self/pagemap shows PFN 0: run as root "
               "(CAP_SYS_ADMIN) to see physical addresses");
    return pfn * PAGE + ((uintptr_t)va % PAGE);
}

static void dma_alloc(struct dmabuf *b, size_t len, int node)
{
    b->len = (len + PAGE - 1) / PAGE * PAGE;
    b->va = mmap(NULL, b->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->va == MAP_FAILED)
        finish(EXIT_USAGE, "mmap of %zu bytes: %s", b->len, strerror(errno));
    if (node >= 0) {
        /* Before the first touch, so the pages come from that node
         * (e.g. a DIMM hot-plugged into it). */
        unsigned long mask[4] = { 0 };
        if (node >= 256)
            finish(EXIT_USAGE, "--node %d: at most 255", node);
        mask[node / 64] = 1ul << (node % 64);
        if (syscall(SYS_mbind, b->va, b->len, 2 /* MPOL_BIND */, mask, 257, 0) != 0)
            finish(EXIT_USAGE, "mbind to node %d: %s (is the node online, with memory?)",
                   node, strerror(errno));
    }
    memset(b->va, 0, b->len);
    if (mlock(b->va, b->len) != 0)
        finish(EXIT_USAGE, "mlock of %zu bytes: %s", b->len, strerror(errno));
    b->pa = calloc(b->len / PAGE, sizeof(uint64_t));
    for (size_t i = 0; i < b->len / PAGE; i++)
        b->pa[i] = phys_of(b->va + i * PAGE);
}

/* The NUMA node of each page (move_pages with no target only queries). */
static void report_nodes(const char *name, struct dmabuf *b)
{
    size_t n = b->len / PAGE;
    void **pages = calloc(n, sizeof(void *));
    int *status = calloc(n, sizeof(int));
    int counts[64] = { 0 }, other = 0;
    for (size_t i = 0; i < n; i++)
        pages[i] = b->va + i * PAGE;
    if (syscall(SYS_move_pages, 0, n, pages, NULL, status, 0) != 0) {
        jadd("\"%s_nodes\": null, ", name);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (status[i] >= 0 && status[i] < 64)
                counts[status[i]]++;
            else
                other++;
        }
        jadd("\"%s_nodes\": {", name);
        const char *sep = "";
        for (int i = 0; i < 64; i++) {
            if (counts[i]) {
                jadd("%s\"%d\": %d", sep, i, counts[i]);
                sep = ", ";
            }
        }
        if (other)
            jadd("%s\"unknown\": %d", sep, other);
        jadd("}, ");
    }
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < n; i++) {
        if (b->pa[i] < lo)
            lo = b->pa[i];
        if (b->pa[i] + PAGE > hi)
            hi = b->pa[i] + PAGE;
    }
    jadd("\"%s_pa_min\": %" PRIu64 ", \"%s_pa_end\": %" PRIu64 ", \"%s_pages\": [",
         name, lo, name, hi, name);
    for (size_t i = 0; i < n; i++)
        jadd("%s%" PRIu64, i ? ", " : "", b->pa[i]);
    jadd("], ");
    free(pages);
    free(status);
}

/* ---------------------------------------------------------- PCI device */
#define SYSFS_PCI "/sys/bus/pci/devices"

static char bdf[256];
static volatile uint8_t *mmio;
static int io_fd = -1;

static int read_hex_file(const char *path, unsigned *value)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int ok = fscanf(f, "%x", value) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

static void find_device(void)
{
    if (opt.bdf) {
        snprintf(bdf, sizeof(bdf), "%s", opt.bdf);
        return;
    }
    DIR *d = opendir(SYSFS_PCI);
    struct dirent *e;
    if (!d)
        finish(EXIT_USAGE, "no %s: is sysfs mounted?", SYSFS_PCI);
    while ((e = readdir(d))) {
        char path[512];
        unsigned ven, dev;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), SYSFS_PCI "/%s/vendor", e->d_name);
        if (read_hex_file(path, &ven))
            continue;
        snprintf(path, sizeof(path), SYSFS_PCI "/%s/device", e->d_name);
        if (read_hex_file(path, &dev))
            continue;
        if (ven == 0x1000 && dev == 0x0012) {
            snprintf(bdf, sizeof(bdf), "%s", e->d_name);
            closedir(d);
            return;
        }
    }
    closedir(d);
    finish(EXIT_USAGE, "no LSI 53C895A (1000:0012) in %s", SYSFS_PCI);
}

static void config_rw(int write, unsigned off, void *buf, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), SYSFS_PCI "/%s/config", bdf);
    int fd = open(path, write ? O_WRONLY : O_RDONLY);
    if (fd < 0)
        finish(EXIT_USAGE, "open %s: %s", path, strerror(errno));
    ssize_t r = write ? pwrite(fd, buf, n, off) : pread(fd, buf, n, off);
    close(fd);
    if (r != (ssize_t)n)
        finish(EXIT_DEVICE, "config %s at %#x: %s", write ? "write" : "read", off,
               strerror(errno));
}

static void open_device(void)
{
    char path[512], target[512];
    find_device();
    snprintf(path, sizeof(path), SYSFS_PCI "/%s/driver", bdf);
    ssize_t n = readlink(path, target, sizeof(target) - 1);
    if (n > 0 && !opt.force) {
        target[n] = 0;
        finish(EXIT_USAGE, "%s is bound to %s: the polled SCRIPTS would race the driver "
               "(use the blockdev backend, --dev /dev/sdX, or --force)", bdf,
               strrchr(target, '/') ? strrchr(target, '/') + 1 : target);
    }
    /* I/O and memory decoding, bus mastering (the DMA of SCRIPTS and data). */
    uint16_t cmd;
    config_rw(0, 4, &cmd, 2);
    if (cmd == 0xffff)
        finish(EXIT_GONE, "%s config space reads all-ones: the device is gone", bdf);
    cmd |= 0x0007;
    config_rw(1, 4, &cmd, 2);

    if (opt.regs_io) {
        snprintf(path, sizeof(path), SYSFS_PCI "/%s/resource0", bdf);
        io_fd = open(path, O_RDWR);
        if (io_fd < 0)
            finish(EXIT_USAGE, "open %s: %s", path, strerror(errno));
    } else {
        /* The register BAR is 1 KiB: map its page; the registers start
         * where the BAR does within it. */
        unsigned long long start = 0, end, flags;
        snprintf(path, sizeof(path), SYSFS_PCI "/%s/resource", bdf);
        FILE *f = fopen(path, "r");
        char line[256];
        if (!f || !fgets(line, sizeof(line), f) || !fgets(line, sizeof(line), f) ||
            sscanf(line, "%llx %llx %llx", &start, &end, &flags) != 3 || !start)
            finish(EXIT_USAGE, "cannot read BAR 1 from %s", path);
        fclose(f);
        snprintf(path, sizeof(path), SYSFS_PCI "/%s/resource1", bdf);
        int fd = open(path, O_RDWR | O_SYNC);
        if (fd < 0)
            finish(EXIT_USAGE, "open %s: %s", path, strerror(errno));
        void *m = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED)
            finish(EXIT_USAGE, "mmap %s: %s (try --regs io)", path, strerror(errno));
        close(fd);
        mmio = (volatile uint8_t *)m + (start % PAGE);
    }
}

static uint32_t rd(unsigned off, unsigned size)
{
    if (mmio) {
        if (size == 4)
            return *(volatile uint32_t *)(mmio + off);
        return mmio[off];
    }
    uint32_t v = 0;
    if (pread(io_fd, &v, size, off) != (ssize_t)size)
        finish(EXIT_DEVICE, "I/O BAR read at %#x: %s", off, strerror(errno));
    return v;
}

static void wr(unsigned off, uint32_t v, unsigned size)
{
    if (mmio) {
        if (size == 4)
            *(volatile uint32_t *)(mmio + off) = v;
        else
            mmio[off] = (uint8_t)v;
        return;
    }
    if (pwrite(io_fd, &v, size, off) != (ssize_t)size)
        finish(EXIT_DEVICE, "I/O BAR write at %#x: %s", off, strerror(errno));
}

/* ---------------------------------------------------------- SCRIPTS */
struct script {
    uint32_t *w;
    unsigned n, max;
    uint64_t base;                     /* physical address of w[0] */
    int dma64;
};

static void emit(struct script *s, uint32_t a)
{
    if (s->n >= s->max)
        finish(EXIT_USAGE, "SCRIPTS do not fit %u bytes: use a smaller --bs", CB_SCRIPT_MAX);
    s->w[s->n++] = a;
}

static uint32_t here(struct script *s) { return (uint32_t)s->base + 4 * s->n; }

static void s_move(struct script *s, int phase, uint32_t count, uint64_t addr)
{
    emit(s, (1u << 27) | (uint32_t)(phase & 7) << 24 | count);
    emit(s, (uint32_t)addr);
    if (s->dma64)
        emit(s, (uint32_t)(addr >> 32));
}

static void s_select(struct script *s, unsigned target, unsigned *alt_slot)
{
    emit(s, 1u << 30 | (target & 0xf) << 16);
    *alt_slot = s->n;
    emit(s, 0);
}

static void s_wait_reselect(struct script *s, unsigned *alt_slot)
{
    emit(s, 1u << 30 | 2u << 27);
    *alt_slot = s->n;
    emit(s, 0);
}

/* JUMP target [if (not)] WHEN phase; returns the slot of the address. */
static unsigned s_jump(struct script *s, int when, int if_not, uint32_t target)
{
    uint32_t insn = 2u << 30 | 0u << 27;
    if (!if_not)
        insn |= 1u << 19;
    if (when >= 0)
        insn |= (uint32_t)(when & 7) << 24 | 1u << 17;
    emit(s, insn);
    emit(s, target);
    return s->n - 1;
}

static void s_int(struct script *s, uint32_t vector)
{
    /* "Jump if true" with no test is unconditional (bit 19 alone keeps
     * QEMU from treating it as a NOP). */
    emit(s, 2u << 30 | 3u << 27 | 1u << 19);
    emit(s, vector);
}

/* ---------------------------------------------------------- LSI commands */
static struct dmabuf cb;               /* command block page */
static int target_id = 0;

struct stop {
    uint8_t istat0, dstat, sist0, sist1;
    uint32_t dsps, dsp;
};

static void soft_reset(void)
{
    wr(ISTAT0, ISTAT0_SRST, 1);
    wr(ISTAT0, 0, 1);
}

/* Once after a reset rather than per command: every register access is a
 * round trip to the remote.  Polled: DIP/SIP still get set with DIEN/SIEN
 * clear, and no INTx is raised for a driver that is not there. */
static void arm_polled(void)
{
    wr(DIEN, 0, 1);
    wr(SIEN0, 0, 1);
    wr(SIEN1, 0, 1);
    wr(CCNTL1, opt.dma64 == 1 ? CCNTL1_EN64DBMV : 0, 1);
}

static int all_ones_gone(void)
{
    uint16_t vendor;
    config_rw(0, 0, &vendor, 2);
    return vendor == 0xffff;
}

/* Run the script in the command block; 0 when it stopped at INT_DONE. */
static int run_script(struct stop *st, const char *what)
{
    __sync_synchronize();
    double started = now();
    wr(DSP, (uint32_t)cb.pa[0] + CB_SCRIPT, 4);
    uint8_t istat0;
    for (;;) {
        istat0 = (uint8_t)rd(ISTAT0, 1);
        if (istat0 == 0xff && all_ones_gone())
            finish(EXIT_GONE, "%s: the LSI reads all-ones (its remote process died?)", what);
        if (istat0 & (ISTAT0_DIP | ISTAT0_SIP))
            break;
        if (now() - started > opt.cmd_timeout_s) {
            uint32_t dsp = rd(DSP, 4);
            soft_reset();
            finish(EXIT_TIMEOUT, "%s: SCRIPTS still running after %.1f s (ISTAT0=%#x "
                   "DSP=%#x); the chip was reset", what, opt.cmd_timeout_s, istat0, dsp);
        }
        check_deadline();
    }
    /* Reading DSTAT and SIST0/1 clears them (and ISTAT0's DIP/SIP). */
    st->istat0 = istat0;
    st->dstat = istat0 & ISTAT0_DIP ? (uint8_t)rd(DSTAT, 1) & ~DSTAT_DFE : 0;
    st->sist0 = istat0 & ISTAT0_SIP ? (uint8_t)rd(SIST0, 1) : 0;
    st->sist1 = istat0 & ISTAT0_SIP ? (uint8_t)rd(SIST1, 1) : 0;
    st->dsps = rd(DSPS, 4);
    st->dsp = 0;
    __sync_synchronize();
    /* The remote may die between any two accesses: all-ones in any of
     * them, confirmed by the vendor ID, means it is gone. */
    if ((st->istat0 == 0xff || st->dstat == 0x7f || st->dsps == 0xffffffffu) &&
        all_ones_gone())
        finish(EXIT_GONE, "%s: the LSI reads all-ones (its remote process died?)", what);
    if (st->sist1 & SIST1_STO)
        finish(EXIT_DEVICE, "%s: no SCSI target %d (selection timeout)", what, target_id);
    if (!(st->dstat & DSTAT_SIR) || st->dsps != INT_DONE || st->sist0 || st->sist1) {
        st->dsp = rd(DSP, 4);
        soft_reset();
        finish(EXIT_DEVICE, "%s: SCRIPTS stopped unexpectedly (ISTAT0=%#x DSTAT=%#x "
               "SIST0=%#x SIST1=%#x DSPS=%#x DSP=%#x); the chip was reset", what,
               st->istat0, st->dstat, st->sist0, st->sist1, st->dsps, st->dsp);
    }
    return 0;
}

struct segment { uint64_t pa; uint32_t len; };

/* One SCSI command; data moves by DMA to/from the segments.  Returns the
 * status byte. */
static int scsi_command(const uint8_t *cdb, unsigned cdb_len, int data_in,
                        const struct segment *seg, unsigned nseg, const char *what)
{
    uint8_t *m = cb.va;
    struct script s = { .w = (uint32_t *)(m + CB_SCRIPT), .n = 0, .max = CB_SCRIPT_MAX / 4,
                        .base = cb.pa[0] + CB_SCRIPT, .dma64 = opt.dma64 == 1 };
    uint32_t pcb = (uint32_t)cb.pa[0];
    unsigned alt_sel, alt_resel, j_status, j_msg, j_data, j_dispatch_back, j_after_data;

    memset(m + CB_CDB, 0, 16);
    memcpy(m + CB_CDB, cdb, cdb_len);
    m[CB_MSGOUT] = MSG_IDENTIFY;
    m[CB_STATUS] = 0xff;

    s_select(&s, target_id, &alt_sel);
    s_move(&s, PHASE_MSG_OUT, 1, pcb + CB_MSGOUT);
    s_move(&s, PHASE_COMMAND, cdb_len, pcb + CB_CDB);
    uint32_t dispatch = here(&s);
    j_status = s_jump(&s, PHASE_STATUS, 0, 0);
    j_msg = s_jump(&s, PHASE_MSG_IN, 0, 0);
    j_data = nseg ? s_jump(&s, data_in ? PHASE_DATA_IN : PHASE_DATA_OUT, 0, 0) : 0;
    s_int(&s, INT_BAD_PHASE);
    /* The target disconnected (SAVE DATA POINTER, DISCONNECT) while the
     * block layer works; it reselects with IDENTIFY when data is ready. */
    s.w[j_msg] = here(&s);
    s_move(&s, PHASE_MSG_IN, 2, pcb + CB_MSGIN);
    s_wait_reselect(&s, &alt_resel);
    s_move(&s, PHASE_MSG_IN, 1, pcb + CB_MSGIN + 2);
    j_dispatch_back = s_jump(&s, PHASE_MSG_IN, 1, dispatch);
    (void)j_dispatch_back;
    s_int(&s, INT_BAD_PHASE);
    if (nseg) {
        s.w[j_data] = here(&s);
        for (unsigned i = 0; i < nseg; i++)
            s_move(&s, data_in ? PHASE_DATA_IN : PHASE_DATA_OUT, seg[i].len, seg[i].pa);
        j_after_data = s_jump(&s, -1, 0, dispatch);
        (void)j_after_data;
    }
    s.w[j_status] = here(&s);
    s_move(&s, PHASE_STATUS, 1, pcb + CB_STATUS);
    s_move(&s, PHASE_MSG_IN, 1, pcb + CB_MSGIN + 4);   /* COMMAND COMPLETE */
    s_int(&s, INT_DONE);
    s.w[alt_resel] = here(&s);
    s_int(&s, INT_RESELECT_ABORTED);
    s.w[alt_sel] = here(&s);
    s_int(&s, INT_ALREADY_CONNECTED);

    struct stop st;
    run_script(&st, what);
    return m[CB_STATUS];
}

static int simple_in(uint8_t op, unsigned alloc_len, const char *what)
{
    uint8_t cdb[10] = { op };
    unsigned cdb_len = 6;
    if (op == SCSI_READ_CAPACITY_10)
        cdb_len = 10;
    else
        cdb[4] = (uint8_t)alloc_len;
    struct segment seg = { cb.pa[0] + CB_SMALL, alloc_len };
    memset(cb.va + CB_SMALL, 0, 64);
    return scsi_command(cdb, cdb_len, 1, &seg, alloc_len ? 1 : 0, what);
}

static void wait_unit_ready(void)
{
    /* A reset leaves a UNIT ATTENTION to be consumed (as SeaBIOS does). */
    for (int i = 0; i < 4; i++) {
        uint8_t tur[6] = { SCSI_TEST_UNIT_READY };
        int status = scsi_command(tur, 6, 0, NULL, 0, "TEST UNIT READY");
        if (status == STATUS_GOOD)
            return;
        simple_in(SCSI_REQUEST_SENSE, 18, "REQUEST SENSE");
    }
    uint8_t *sense = cb.va + CB_SMALL;
    finish(EXIT_DEVICE, "TEST UNIT READY never GOOD (sense key %#x ASC/ASCQ %02x/%02x)",
           sense[2] & 0xf, sense[12], sense[13]);
}

static uint64_t disk_blocks;
static uint32_t disk_block_size = SECTOR;

static void lsi_setup(void)
{
    open_device();
    /* SCRIPTS, CDB, messages and status use 32-bit addresses: the command
     * block must be below 4 GiB, where boot RAM (node 0) is; memory local
     * to this CPU may be a hot-plugged DIMM higher up. */
    dma_alloc(&cb, PAGE, -1);
    if (cb.pa[0] >> 32) {
        munlock(cb.va, cb.len);
        munmap(cb.va, cb.len);
        dma_alloc(&cb, PAGE, 0);
    }
    if (cb.pa[0] >> 32)
        finish(EXIT_USAGE, "the command block landed above 4 GiB (%#" PRIx64 "): SCRIPTS "
               "fetch with 32-bit addresses", cb.pa[0]);
    soft_reset();
    arm_polled();
    wait_unit_ready();
    if (simple_in(SCSI_READ_CAPACITY_10, 8, "READ CAPACITY(10)") != STATUS_GOOD)
        finish(EXIT_DEVICE, "READ CAPACITY(10) failed");
    uint8_t *r = cb.va + CB_SMALL;
    disk_blocks = ((uint64_t)r[0] << 24 | r[1] << 16 | r[2] << 8 | r[3]) + 1;
    disk_block_size = (uint32_t)r[4] << 24 | r[5] << 16 | r[6] << 8 | r[7];
    if (disk_block_size != SECTOR)
        finish(EXIT_USAGE, "block size %u: only 512-byte blocks are supported",
               disk_block_size);
    jadd("\"backend\": \"lsi\", \"bdf\": \"%s\", \"regs\": \"%s\", \"disk_blocks\": %" PRIu64
         ", \"block_size\": %u, ", bdf, opt.regs_io ? "io" : "mmio", disk_blocks,
         disk_block_size);
}

static void lsi_inquiry(void)
{
    if (simple_in(SCSI_INQUIRY, 36, "INQUIRY") != STATUS_GOOD)
        finish(EXIT_DEVICE, "INQUIRY failed");
    char vendor[9], product[17], esc_v[64], esc_p[128];
    memcpy(vendor, cb.va + CB_SMALL + 8, 8);
    vendor[8] = 0;
    memcpy(product, cb.va + CB_SMALL + 16, 16);
    product[16] = 0;
    json_string(esc_v, sizeof(esc_v), vendor);
    json_string(esc_p, sizeof(esc_p), product);
    jadd("\"vendor\": \"%s\", \"product\": \"%s\", ", esc_v, esc_p);
}

/* Physically contiguous runs of [off, off+len) of the data buffer. */
static unsigned segments_of(struct dmabuf *b, size_t off, size_t len, struct segment *seg)
{
    unsigned n = 0;
    while (len) {
        size_t page = off / PAGE, in_page = off % PAGE;
        uint32_t chunk = (uint32_t)(PAGE - in_page < len ? PAGE - in_page : len);
        uint64_t pa = b->pa[page] + in_page;
        if (n && seg[n - 1].pa + seg[n - 1].len == pa &&
            (seg[n - 1].pa >> 32) == (pa >> 32) && seg[n - 1].len + chunk < (1u << 24))
            seg[n - 1].len += chunk;
        else
            seg[n++] = (struct segment){ pa, chunk };
        off += chunk;
        len -= chunk;
    }
    return n;
}

/* ---------------------------------------------------------- blockdev */
static int bfd = -1;
static int bdev_is_block;

static void bdev_setup(void)
{
    struct stat st;
    int flags = O_RDWR | (opt.direct ? O_DIRECT : 0);
    bfd = open(opt.dev, flags | O_CREAT, 0644);
    if (bfd < 0)
        finish(EXIT_USAGE, "open %s%s: %s", opt.dev, opt.direct ? " (O_DIRECT)" : "",
               strerror(errno));
    fstat(bfd, &st);
    bdev_is_block = S_ISBLK(st.st_mode);
    uint64_t bytes = st.st_size;
    if (bdev_is_block && ioctl(bfd, BLKGETSIZE64, &bytes) != 0)
        finish(EXIT_USAGE, "BLKGETSIZE64 on %s: %s", opt.dev, strerror(errno));
    disk_blocks = bytes / SECTOR;
    jadd("\"backend\": \"blockdev\", \"dev\": \"%s\", \"direct\": %s, \"dev_is_block\": %s, "
         "\"disk_blocks\": %" PRIu64 ", \"block_size\": %u, ", opt.dev,
         opt.direct ? "true" : "false", bdev_is_block ? "true" : "false", disk_blocks, SECTOR);
}

/* Drop what the page cache holds, so that reads come from the device. */
static void bdev_flush(void)
{
    if (fsync(bfd) != 0)
        finish(EXIT_DEVICE, "fsync %s: %s", opt.dev, strerror(errno));
    if (bdev_is_block)
        ioctl(bfd, BLKFLSBUF, 0);
    posix_fadvise(bfd, 0, 0, POSIX_FADV_DONTNEED);
}

/* ---------------------------------------------------------- workloads */
static struct dmabuf data;
static double *lat;                    /* seconds per command, of the current phase */
static size_t nlat;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    size_t i = (size_t)(p * (nlat - 1) + 0.5);
    return lat[i] * 1e6;
}

/* One transfer of `sectors` at `lba` from/to data.va; its latency. */
static double transfer(int is_read, uint64_t lba, unsigned sectors)
{
    double started = now();
    if (opt.dev) {
        size_t len = (size_t)sectors * SECTOR;
        ssize_t r = is_read ? pread(bfd, data.va, len, (off_t)lba * SECTOR)
                            : pwrite(bfd, data.va, len, (off_t)lba * SECTOR);
        if (r != (ssize_t)len)
            finish(EXIT_DEVICE, "%s of %zu bytes at LBA %" PRIu64 ": %s",
                   is_read ? "pread" : "pwrite", len, lba,
                   r < 0 ? strerror(errno) : "short transfer");
    } else {
        static struct segment seg[MAX_SEGMENTS + 1];
        unsigned n = segments_of(&data, 0, (size_t)sectors * SECTOR, seg);
        uint8_t cdb[10] = { is_read ? SCSI_READ_10 : SCSI_WRITE_10, 0,
                            (uint8_t)(lba >> 24), (uint8_t)(lba >> 16), (uint8_t)(lba >> 8),
                            (uint8_t)lba, 0, (uint8_t)(sectors >> 8), (uint8_t)sectors, 0 };
        char what[96];
        snprintf(what, sizeof(what), "%s(10) LBA %" PRIu64 " x%u",
                 is_read ? "READ" : "WRITE", lba, sectors);
        int status = scsi_command(cdb, 10, is_read, seg, n, what);
        if (status != STATUS_GOOD)
            finish(EXIT_DEVICE, "%s: SCSI status %#x", what, status);
    }
    return now() - started;
}

static void run_phase(int is_read, int pass)
{
    unsigned per = opt.bs / SECTOR;
    size_t chunks = (size_t)((opt.blocks + per - 1) / per);
    size_t *order = malloc(chunks * sizeof(size_t));
    struct mismatch mm = { 0, -1, 0, 0 };
    double device_s = 0, started = now();

    for (size_t i = 0; i < chunks; i++)
        order[i] = i;
    if (opt.random_order) {
        uint64_t state = opt.seed ^ 0x5eed0000ull ^ (uint64_t)pass << 40 ^ (uint64_t)is_read;
        for (size_t i = chunks - 1; i > 0; i--) {
            size_t j = splitmix64(&state) % (i + 1);
            size_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
    nlat = 0;
    for (size_t c = 0; c < chunks; c++) {
        check_deadline();
        uint64_t lba = (uint64_t)opt.lba + order[c] * per;
        unsigned sectors = per;
        if ((long long)(order[c] * per + per) > opt.blocks)
            sectors = (unsigned)(opt.blocks - order[c] * per);
        if (!is_read)
            pattern_fill(data.va, lba, sectors);
        else
            memset(data.va, 0, (size_t)sectors * SECTOR);
        double t = transfer(is_read, lba, sectors);
        lat[nlat++] = t;
        device_s += t;
        if (is_read)
            pattern_check(data.va, lba, sectors, &mm);
    }
    if (!is_read && opt.dev) {
        double t = now();
        bdev_flush();
        device_s += now() - t;
    }
    double wall = now() - started;
    double bytes = (double)opt.blocks * SECTOR;
    qsort(lat, nlat, sizeof(double), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++)
        sum += lat[i];
    jadd(nphases++ ? ", " : "");
    jadd("{\"name\": \"%s\", \"pass\": %d, \"bytes\": %.0f, \"commands\": %zu, "
         "\"device_s\": %.6f, \"wall_s\": %.6f, \"mb_s\": %.3f, \"wall_mb_s\": %.3f, "
         "\"lat_us\": {\"min\": %.1f, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
         "\"max\": %.1f, \"mean\": %.1f}",
         is_read ? "read" : "write", pass, bytes, nlat, device_s, wall,
         bytes / device_s / 1e6, bytes / wall / 1e6, pct(0), pct(0.5), pct(0.9), pct(0.99),
         pct(1), sum / nlat * 1e6);
    if (is_read)
        jadd(", \"mismatched_bytes\": %lld, \"first_mismatch\": %s", mm.count,
             mm.first_offset < 0 ? "null" : "");
    if (is_read && mm.first_offset >= 0)
        jadd("{\"offset\": %lld, \"lba\": %lld, \"got\": %d, \"expected\": %d}",
             mm.first_offset, mm.first_offset / SECTOR, mm.got, mm.expected);
    jadd("}");
    free(order);
    if (is_read && mm.count) {
        finish(EXIT_MISMATCH, "%lld byte(s) differ from the pattern (seed %" PRIu64 "), "
               "first at disk offset %lld (got 0x%02x, expected 0x%02x)", mm.count, opt.seed,
               mm.first_offset, mm.got, mm.expected);
    }
}

/* ---------------------------------------------------------- main */
static void usage(void)
{
    fprintf(stderr,
"usage: lsi-dio OP [options]\n"
"  OP: info | write | read | verify (write, then read back) | pattern (to stdout)\n"
"  --lba N         first 512-byte block (default 0)\n"
"  --blocks N      number of 512-byte blocks (default 2048)\n"
"  --bs BYTES      bytes per command, a multiple of 512, at most %u (default 65536)\n"
"  --order seq|rand\n"
"  --seed N        pattern seed (default 1)\n"
"  --passes N      repeat the workload (default 1)\n"
"  --bdf D:B:S.F   the LSI (default: the first 1000:0012)\n"
"  --regs mmio|io  register access: mmap of BAR 1 (default) or pread/pwrite of BAR 0\n"
"  --node N        bind the data buffer to NUMA node N (mbind) before touching it\n"
"  --dma64 auto|on|off  64-bit direct block moves (auto: when the buffer is above 4 GiB)\n"
"  --cmd-timeout S per-command limit (default 10)\n"
"  --deadline S    limit for the whole run (default none)\n"
"  --dev PATH      blockdev backend: pread/pwrite on PATH instead of the LSI\n"
"  --direct        O_DIRECT (blockdev backend)\n"
"  --force         drive the LSI even if a driver is bound\n", MAX_BS);
    exit(EXIT_USAGE);
}

static long long num(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (*s == 0 || *end || errno)
        finish(EXIT_USAGE, "not a number: %s", s);
    return v;
}

static uint64_t unum(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (*s == 0 || *s == '-' || *end || errno)
        finish(EXIT_USAGE, "not an unsigned 64-bit number: %s", s);
    return v;
}

int main(int argc, char **argv)
{
    t0 = now();
    if (argc < 2)
        usage();
    opt.op = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
        if (ARG("--lba")) opt.lba = num(v);
        else if (ARG("--blocks")) opt.blocks = num(v);
        else if (ARG("--bs")) opt.bs = (unsigned)num(v);
        else if (ARG("--order")) opt.random_order = !strcmp(v, "rand");
        else if (ARG("--seed")) opt.seed = unum(v);
        else if (ARG("--passes")) opt.passes = (int)num(v);
        else if (ARG("--bdf")) opt.bdf = v;
        else if (ARG("--regs")) opt.regs_io = !strcmp(v, "io");
        else if (ARG("--node")) opt.node = (int)num(v);
        else if (ARG("--dma64")) opt.dma64 = !strcmp(v, "on") ? 1 : !strcmp(v, "off") ? 0 : -1;
        else if (ARG("--cmd-timeout")) opt.cmd_timeout_s = atof(v);
        else if (ARG("--deadline")) opt.deadline_s = atof(v);
        else if (ARG("--dev")) opt.dev = v;
        else if (!strcmp(a, "--direct")) opt.direct = 1;
        else if (!strcmp(a, "--force")) opt.force = 1;
        else {
            fprintf(stderr, "lsi-dio: unknown or incomplete option %s\n", a);
            usage();
        }
#undef ARG
    }
    int is_info = !strcmp(opt.op, "info"), is_pattern = !strcmp(opt.op, "pattern");
    int do_write = !strcmp(opt.op, "write") || !strcmp(opt.op, "verify");
    int do_read = !strcmp(opt.op, "read") || !strcmp(opt.op, "verify");
    if (!is_info && !is_pattern && !do_write && !do_read)
        usage();
    if (opt.bs < SECTOR || opt.bs % SECTOR || opt.bs > MAX_BS)
        finish(EXIT_USAGE, "--bs %u: a multiple of 512 up to %u", opt.bs, MAX_BS);
    if (opt.blocks < 1 || opt.lba < 0 || opt.passes < 1)
        finish(EXIT_USAGE, "--blocks and --passes must be positive, --lba not negative");
    pattern_init(opt.seed);

    if (is_pattern) {
        uint8_t sector[SECTOR];
        for (long long i = 0; i < opt.blocks; i++) {
            pattern_fill(sector, (uint64_t)(opt.lba + i), 1);
            if (fwrite(sector, SECTOR, 1, stdout) != 1)
                return EXIT_USAGE;
        }
        return EXIT_OK;
    }

    pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
    if (!opt.dev && pagemap_fd < 0)
        finish(EXIT_USAGE, "open /proc/self/pagemap: %s", strerror(errno));
    if (!opt.dev) {
        /* Locked pages may still be migrated by compaction; forbid it
         * while we hand their physical addresses to the device. */
        int fd = open("/proc/sys/vm/compact_unevictable_allowed", O_WRONLY);
        if (fd >= 0) {
            if (write(fd, "0", 1) != 1) { /* best effort */ }
            close(fd);
        }
    }

    if (opt.dev)
        bdev_setup();
    else
        lsi_setup();
    if (is_info) {
        if (!opt.dev)
            lsi_inquiry();
        finish(EXIT_OK, NULL);
    }
    if ((uint64_t)(opt.lba + opt.blocks) > disk_blocks && (!opt.dev || bdev_is_block))
        finish(EXIT_USAGE, "LBA %lld + %lld blocks is past the end of the disk (%" PRIu64
               " blocks)", opt.lba, opt.blocks, disk_blocks);

    dma_alloc(&data, opt.bs, opt.node);
    if (!opt.dev) {
        int high = 0;
        for (size_t i = 0; i < data.len / PAGE; i++)
            high |= (data.pa[i] >> 32) != 0;
        if (opt.dma64 == -1)
            opt.dma64 = high;
        if (high && !opt.dma64)
            finish(EXIT_USAGE, "the data buffer is above 4 GiB and --dma64 off");
        /* Data moves take a third dword (addr[63:32]) from now on. */
        wr(CCNTL1, opt.dma64 == 1 ? CCNTL1_EN64DBMV : 0, 1);
        struct segment seg[MAX_SEGMENTS + 1];
        jadd("\"dma64\": %s, \"data_segments\": %u, ", opt.dma64 ? "true" : "false",
             segments_of(&data, 0, data.len, seg));
        report_nodes("data", &data);
    } else if (opt.node >= 0) {
        report_nodes("data", &data);
    }
    lat = calloc((size_t)(opt.blocks / (opt.bs / SECTOR) + 2), sizeof(double));
    jadd("\"lba\": %lld, \"blocks\": %lld, \"bs\": %u, \"order\": \"%s\", \"seed\": %" PRIu64
         ", \"phases\": [", opt.lba, opt.blocks, opt.bs, opt.random_order ? "rand" : "seq",
         opt.seed);
    phases_open = 1;
    for (int pass = 0; pass < opt.passes; pass++) {
        if (do_write)
            run_phase(0, pass);
        if (do_read)
            run_phase(1, pass);
    }
    finish(EXIT_OK, NULL);
}
