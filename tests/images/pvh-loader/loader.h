/*
 * pvh-loader: boots an uncompressed Linux kernel through its PVH entry
 * from inside a bzImage, so that any bzImage boot loader (SeaBIOS +
 * syslinux from a disk, QEMU's -kernel) runs it without the kernel's own
 * decompressor, which under TCG spends ~4.5 s on Debian's XZ payload.
 *
 * Payload (appended by harness/images/pvhboot.py, little-endian):
 *   struct payload_header, nr_segments x struct payload_segment, then each
 *   segment's file bytes as one LZ4 legacy frame (lz4 -l), in order.
 */
#ifndef PVH_LOADER_H
#define PVH_LOADER_H

#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define PAYLOAD_MAGIC "MPQPVH01"
#define PAYLOAD_MAX_SEGMENTS 16

struct payload_header {
    char magic[8];
    u32 entry;              /* XEN_ELFNOTE_PHYS32_ENTRY */
    u32 nr_segments;
};

struct payload_segment {
    u32 paddr;
    u32 memsz;              /* [filesz, memsz) is zeroed */
    u32 filesz;
    u32 frame_bytes;        /* size of its LZ4 legacy frame */
};

/* Decode one LZ4 legacy frame of frame_bytes into exactly out_bytes;
 * returns 0, or a message saying what is wrong with the frame.  (lz4.c
 * needs only memcpy, so the unit tests build it for the host too.) */
const char *lz4_legacy_decode(const u8 *frame, u32 frame_bytes, u8 *out, u32 out_bytes);

#endif
