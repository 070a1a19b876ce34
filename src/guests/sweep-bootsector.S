/*
 * The sweep guest as a 512-byte boot sector for QEMU (-drive file=…,format=raw): the
 * BIOS loads it at 0x7c00 in real mode; it asks the BIOS for the RAM size, enters
 * 32-bit protected mode (flat, no paging) and sweeps [1 MiB, end of RAM) forever,
 * incrementing the u32 counter at offset 0 of each 4 KiB page and writing 'B' to COM1
 * after each pass. It fills in Ferry's parameter block (layout.ts) so the same
 * counter check applies to QEMU's memory as to Ferry's.
 */

    .equ PARAMS_ADDR, 0x9000
    .equ PARAMS_MAGIC, 0x59525246
    .equ GUEST_MODE_SWEEP, 1
    .equ SWEEP_FROM, 0x100000
    .equ COM1, 0x3f8
    .equ PAGE_SIZE, 4096

    .code16
    .text
    .globl _start
_start:
    cli
    xor     %ax, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $0x7c00, %sp
    ljmp    $0, $1f                 /* some BIOSes enter at 07c0:0000; normalise CS */
1:
    /* E801: CX/AX = KiB between 1 and 16 MiB, DX/BX = 64 KiB blocks above 16 MiB. */
    mov     $0xe801, %ax
    xor     %cx, %cx
    xor     %dx, %dx
    int     $0x15
    jc      2f
    jcxz    3f
    mov     %cx, %ax
    mov     %dx, %bx
3:  mov     %ax, kib_low
    mov     %bx, blocks_high
2:
    /* Fast A20 (port 0x92), enough on QEMU's i440fx/q35. */
    in      $0x92, %al
    or      $2, %al
    and     $0xfe, %al
    out     %al, $0x92

    cli
    lgdt    gdt_descriptor
    mov     %cr0, %eax
    or      $1, %eax
    mov     %eax, %cr0
    ljmp    $0x08, $protected

    .code32
protected:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $0x7c00, %esp

    /* edi = end of RAM below 4 GiB, page-aligned (no E801 answer: 16 MiB). */
    movzwl  blocks_high, %edi
    test    %edi, %edi
    jz      1f
    shl     $16, %edi
    add     $0x1000000, %edi
    jmp     2f
1:  movzwl  kib_low, %edi
    shl     $10, %edi
    add     $0x100000, %edi
2:  and     $~(PAGE_SIZE - 1), %edi

    movl    $PARAMS_MAGIC, PARAMS_ADDR + 0
    movl    $GUEST_MODE_SWEEP, PARAMS_ADDR + 4
    movl    $SWEEP_FROM, PARAMS_ADDR + 8
    movl    $0, PARAMS_ADDR + 12
    movl    %edi, PARAMS_ADDR + 16
    movl    $0, PARAMS_ADDR + 20
    movl    $0, PARAMS_ADDR + 24
    movl    $0, PARAMS_ADDR + 28
    movl    $1, PARAMS_ADDR + 32
    mov     $COM1, %dx

    /* The BIOS leaves data in some high pages: start every counter at 0 so that after
       pass N each counter reads N (the check in params.ts relies on it). */
    mov     $SWEEP_FROM, %eax
zero:
    movl    $0, (%eax)
    add     $PAGE_SIZE, %eax
    cmp     %edi, %eax
    jb      zero

pass:
    mov     $SWEEP_FROM, %eax
page:
    incl    (%eax)
    add     $PAGE_SIZE, %eax
    cmp     %edi, %eax
    jb      page
    addl    $1, PARAMS_ADDR + 24
    adcl    $0, PARAMS_ADDR + 28
    mov     $'B', %al
    out     %al, %dx
    jmp     pass

    .p2align 3
gdt:
    .quad   0                       /* null */
    .quad   0x00cf9a000000ffff      /* 0x08: code, base 0, limit 4 GiB, 32-bit */
    .quad   0x00cf92000000ffff      /* 0x10: data, base 0, limit 4 GiB */
gdt_descriptor:
    .word   gdt_descriptor - gdt - 1
    .long   gdt

/* Default 15 MiB between 1 and 16 MiB if the BIOS does not answer E801. */
kib_low:
    .word   0x3c00
blocks_high:
    .word   0

    .org    510
    .word   0xaa55
