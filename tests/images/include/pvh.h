/*
 * Xen's PVH boot ABI as QEMU's -kernel speaks it (xen/include/public/
 * elfnote.h and arch-x86/hvm/start_info.h): the ELF note that names the
 * 32-bit entry point, and the hvm_start_info whose address is in %ebx
 * there.  Shared by the suite's PVH programs: the agent, which is entered
 * this way, and the pvh-loader, which enters Linux this way.
 */
#ifndef MPQEMU_PVH_H
#define MPQEMU_PVH_H

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578
#define HVM_START_VERSION 1

#ifndef __ASSEMBLER__
struct hvm_start_info {
    unsigned int magic;
    unsigned int version;
    unsigned int flags;
    unsigned int nr_modules;
    unsigned long long modlist_paddr;
    unsigned long long cmdline_paddr;
    unsigned long long rsdp_paddr;
    unsigned long long memmap_paddr;
    unsigned int memmap_entries;
    unsigned int reserved;
};

struct hvm_modlist_entry {
    unsigned long long paddr;
    unsigned long long size;
    unsigned long long cmdline_paddr;
    unsigned long long reserved;
};

struct hvm_memmap_table_entry {
    unsigned long long addr;
    unsigned long long size;
    unsigned int type;
    unsigned int reserved;
};
#endif

#endif
