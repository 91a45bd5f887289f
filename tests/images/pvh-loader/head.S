/*
 * Entry from the kernel's own real-mode setup code, which jumps to the
 * boot protocol's code32_start (0x100000, where the boot loader put the
 * "protected-mode kernel"): 32-bit protected mode, flat segments, paging
 * and interrupts off, %esi = the boot_params the setup code filled in.
 *
 * The builder (harness/images/pvhboot.py) reads the header below: it pads
 * the flat binary to image_size bytes (so .bss is zeros in the file) and
 * appends the payload right there, where loader_main() looks for it.
 */

.section .text.head, "ax"
.globl start
start:
    jmp 1f
    .balign 4
    .ascii "MPQL"               /* signature, checked by the builder */
    .long _end - start          /* image_size: the payload starts here */
1:  cli
    cld
    movl $stack_top, %esp
    pushl %esi                  /* boot_params */
    call loader_main            /* does not return */
2:  hlt
    jmp 2b

/*
 * pvh_enter(entry, start_info): the PVH boot ABI (xen/arch-x86/hvm/
 * start_info.h): 32-bit protected mode, paging off, flat %cs/%ds/%es/%ss,
 * %ebx = physical address of the hvm_start_info.
 */
.text
.globl pvh_enter
pvh_enter:
    movl 4(%esp), %eax
    movl 8(%esp), %ebx
    jmp *%eax

.bss
.balign 16
    .skip 16384
stack_top:

.section .note.GNU-stack, "", @progbits
