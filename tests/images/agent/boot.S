/*
 * The PVH entry (32-bit protected mode, paging off, interrupts off, %ebx
 * the hvm_start_info), our own GDT, and the interrupt stubs.
 *
 * QEMU's -kernel boots an ELF with a PVH entry note through either
 * firmware: qboot jumps to it, SeaBIOS through QEMU's pvh.bin option ROM.
 *
 * Interrupt handlers return without iret: under the PVM flavour of KVM,
 * guest code without paging runs in KVM's instruction emulator, which
 * implements iret for real mode only ("KVM internal error. Suberror: 1 ...
 * emulation failure").  The stub instead rewrites the frame the CPU pushed
 * (EIP, CS, EFLAGS) into EFLAGS, EIP, then pops EFLAGS and returns.
 */

#include "pvh.h"

#define CODE_SEL 0x08
#define DATA_SEL 0x10

.section .note.Xen, "a", @note
.align 4
    .long 4                     /* name size */
    .long 4                     /* description size */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long start

.section .text.start, "ax"
.globl start
start:
    cli
    lgdt gdt_desc
    ljmp $CODE_SEL, $1f
1:  movw $DATA_SEL, %cx
    movw %cx, %ds
    movw %cx, %es
    movw %cx, %fs
    movw %cx, %gs
    movw %cx, %ss
    movl $stack_top, %esp
    pushl %ebx                  /* struct hvm_start_info */
    call main
2:  hlt
    jmp 2b

/* Exceptions: push a zero error code where the CPU pushes none. */
.macro exception_stub vector, has_error
exc_\vector:
    .if \has_error == 0
    pushl $0
    .endif
    pushl $\vector
    jmp exception_common
.endm

.macro irq_stub line
irq_\line:
    pushl $\line
    jmp irq_common
.endm

.text
exception_common:               /* vector, error, EIP, CS, EFLAGS */
    movl (%esp), %eax
    movl 4(%esp), %ecx
    movl 8(%esp), %edx
    pushl %edx
    pushl %ecx
    pushl %eax
    call exception              /* does not return */
3:  hlt
    jmp 3b

irq_common:                     /* line, EIP, CS, EFLAGS */
    pushal
    rdtsc
    pushl %edx
    pushl %eax
    pushl 40(%esp)              /* line: above the TSC (8) and pushal (32) */
    call irq_dispatch
    addl $12, %esp
    popal
    addl $4, %esp               /* EIP, CS, EFLAGS */
    pushl %eax
    movl 4(%esp), %eax          /* EIP */
    xchgl %eax, 12(%esp)        /* EFLAGS slot := EIP, eax := EFLAGS */
    movl %eax, 8(%esp)          /* CS slot := EFLAGS */
    popl %eax
    addl $4, %esp               /* EFLAGS, EIP */
    popfl
    ret

exception_stub 0, 0
exception_stub 1, 0
exception_stub 2, 0
exception_stub 3, 0
exception_stub 4, 0
exception_stub 5, 0
exception_stub 6, 0
exception_stub 7, 0
exception_stub 8, 1
exception_stub 9, 0
exception_stub 10, 1
exception_stub 11, 1
exception_stub 12, 1
exception_stub 13, 1
exception_stub 14, 1
exception_stub 15, 0
exception_stub 16, 0
exception_stub 17, 1
exception_stub 18, 0
exception_stub 19, 0
exception_stub 20, 0
exception_stub 21, 1
exception_stub 22, 0
exception_stub 23, 0
exception_stub 24, 0
exception_stub 25, 0
exception_stub 26, 0
exception_stub 27, 0
exception_stub 28, 0
exception_stub 29, 0
exception_stub 30, 0
exception_stub 31, 0
irq_stub 0
irq_stub 1
irq_stub 2
irq_stub 3
irq_stub 4
irq_stub 5
irq_stub 6
irq_stub 7
irq_stub 8
irq_stub 9
irq_stub 10
irq_stub 11
irq_stub 12
irq_stub 13
irq_stub 14
irq_stub 15

.section .rodata
.align 4
.globl interrupt_stubs          /* vectors 0..47, for irq.c */
interrupt_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long exc_\v
    .endr
    .irp l, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .long irq_\l
    .endr

.align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* CODE_SEL: flat 32-bit code */
    .quad 0x00cf92000000ffff    /* DATA_SEL: flat data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

.bss
.align 16
    .skip 16384
stack_top:

/* No executable stack. */
.section .note.GNU-stack, "", @progbits
