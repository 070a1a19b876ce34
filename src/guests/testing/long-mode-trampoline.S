/*
 * Test fixture: a boot sector that lets QEMU (TCG, no KVM needed) run the 64-bit
 * built-in guest exactly as Ferry sets it up. The test puts the first 512 KiB of guest
 * RAM that Ferry's loader prepares (GDT, page tables, parameter block, code) at 16 MiB
 * with -device loader; this sector copies it to address 0, then does in software what
 * Ferry does through KVM_SET_SREGS: CR3 = PML4, CR4.PAE, EFER.LME, CR0.PG, Ferry's GDT,
 * and a far jump to CODE_ADDR through selector 0x08.
 */
    .equ IMAGE_SOURCE, 0x1000000
    .equ IMAGE_SIZE, 0x80000
    .equ STAGE2_ADDR, 0x90000
    .equ GDT_ADDR, 0x1000
    .equ GDT_LIMIT, 31
    .equ PML4_ADDR, 0x2000
    .equ CODE_ADDR, 0x10000
    .equ STACK_TOP, 0x80000
    .equ MSR_EFER, 0xc0000080

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
    ljmp    $0, $1f
1:  in      $0x92, %al
    or      $2, %al
    and     $0xfe, %al
    out     %al, $0x92
    lgdt    boot_gdt_descriptor
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
    mov     $STAGE2_ADDR, %esp
    /* Stage 2 overwrites this sector's memory, so it runs from a copy at STAGE2_ADDR. */
    mov     $stage2, %esi
    mov     $STAGE2_ADDR, %edi
    mov     $(stage2_end - stage2), %ecx
    cld
    rep movsb
    mov     $STAGE2_ADDR, %eax
    jmp     *%eax

/* Position-independent: only absolute constants and relative jumps. */
stage2:
    mov     $IMAGE_SOURCE, %esi
    xor     %edi, %edi
    mov     $IMAGE_SIZE, %ecx
    rep movsb
    mov     $PML4_ADDR, %eax
    mov     %eax, %cr3
    mov     %cr4, %eax
    or      $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT, as LONG_MODE_CONTROL.cr4 */
    mov     %eax, %cr4
    mov     $MSR_EFER, %ecx
    rdmsr
    or      $0x100, %eax            /* LME; the CPU sets LMA when paging turns on */
    wrmsr
    mov     %cr0, %eax
    or      $0x80010033, %eax       /* PG | WP | NE | ET | MP | PE, as LONG_MODE_CONTROL.cr0 */
    mov     %eax, %cr0
    /* Ferry's GDT: a descriptor built on the stack (limit, then 32-bit base). */
    sub     $8, %esp
    movw    $GDT_LIMIT, (%esp)
    movl    $GDT_ADDR, 2(%esp)
    lgdt    (%esp)
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %fs
    mov     %ax, %gs
    mov     %ax, %ss
    mov     $STACK_TOP, %esp
    ljmp    $0x08, $CODE_ADDR
stage2_end:

    .p2align 3
boot_gdt:
    .quad   0
    .quad   0x00cf9a000000ffff
    .quad   0x00cf92000000ffff
boot_gdt_descriptor:
    .word   boot_gdt_descriptor - boot_gdt - 1
    .long   boot_gdt

    .org    510
    .word   0xaa55
