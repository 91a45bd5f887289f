/*
 * LZ4 legacy frames (lz4 -l): magic 0x184c2102, then blocks of at most
 * 8 MiB of output, each a u32 compressed size and an LZ4 block.  Every
 * length and offset is checked against both buffers.
 */
#include "loader.h"

#define LZ4_LEGACY_MAGIC 0x184c2102
#define LZ4_LEGACY_BLOCK_BYTES (8u << 20)
#define LZ4_MIN_MATCH 4

static u32 get_le32(const u8 *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24;
}

/* An LZ4 length: the 4-bit field, extended by bytes while they are 255. */
static int read_length(const u8 **ip, const u8 *end, u32 *len)
{
    u8 b;

    if (*len != 15) {
        return 0;
    }
    do {
        if (*ip >= end) {
            return -1;
        }
        b = *(*ip)++;
        *len += b;
    } while (b == 255);
    return 0;
}

static const char *decode_block(const u8 *ip, const u8 *end, u8 *out, u8 *op_end,
                                u8 **op_out)
{
    u8 *op = out;

    for (;;) {
        u32 token, lit, match, offset;
        const u8 *ref;

        if (ip >= end) {
            return "block ends before its last sequence";
        }
        token = *ip++;
        lit = token >> 4;
        if (read_length(&ip, end, &lit) || lit > (u32)(end - ip)) {
            return "literals overrun the block";
        }
        if (lit > (u32)(op_end - op)) {
            return "literals overrun the segment";
        }
        __builtin_memcpy(op, ip, lit);
        op += lit;
        ip += lit;
        if (ip == end) {            /* the last sequence has no match */
            *op_out = op;
            return 0;
        }
        if (end - ip < 2) {
            return "truncated match offset";
        }
        offset = ip[0] | ip[1] << 8;
        ip += 2;
        if (offset == 0 || offset > (u32)(op - out)) {
            return "match offset before the block's output";
        }
        match = token & 15;
        if (read_length(&ip, end, &match)) {
            return "truncated match length";
        }
        match += LZ4_MIN_MATCH;
        if (match > (u32)(op_end - op)) {
            return "match overruns the segment";
        }
        ref = op - offset;
        if (offset >= 4) {          /* whole words; overlap only >= 4 apart */
            while (match >= 4) {
                u32 w;
                __builtin_memcpy(&w, ref, 4);
                __builtin_memcpy(op, &w, 4);
                op += 4;
                ref += 4;
                match -= 4;
            }
        }
        while (match--) {
            *op++ = *ref++;
        }
    }
}

const char *lz4_legacy_decode(const u8 *frame, u32 frame_bytes, u8 *out, u32 out_bytes)
{
    const u8 *ip = frame, *end = frame + frame_bytes;
    u8 *op = out, *op_end = out + out_bytes;

    if (frame_bytes < 4 || get_le32(ip) != LZ4_LEGACY_MAGIC) {
        return "not an LZ4 legacy frame";
    }
    ip += 4;
    while (ip < end) {
        u32 block_bytes;
        u8 *block_end = op_end;
        const char *err;

        if (end - ip < 4) {
            return "truncated block size";
        }
        block_bytes = get_le32(ip);
        ip += 4;
        if (block_bytes > (u32)(end - ip)) {
            return "block overruns the frame";
        }
        if ((u32)(op_end - op) > LZ4_LEGACY_BLOCK_BYTES) {
            block_end = op + LZ4_LEGACY_BLOCK_BYTES;
        }
        err = decode_block(ip, ip + block_bytes, op, block_end, &op);
        if (err) {
            return err;
        }
        ip += block_bytes;
    }
    return op == op_end ? 0 : "frame decodes to fewer bytes than the segment holds";
}
