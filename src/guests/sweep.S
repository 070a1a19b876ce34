/*
 * Ferry's built-in guest, entered by the VMM directly in 64-bit long mode at CODE_ADDR
 * (src/guests/layout.ts) with identity-mapped 2 MiB pages. It reads the parameter block
 * at PARAMS_ADDR and either sweeps RAM (a write per 4 KiB page per pass) or halts.
 * Everything it needs lives in registers, so a migrated vCPU continues where it stopped.
 */

/* Keep in step with src/guests/layout.ts. */
    .equ PARAMS_ADDR, 0x9000
    .equ PARAMS_MAGIC, 0x59525246
    .equ PARAM_MAGIC_OFFSET, 0
    .equ PARAM_MODE_OFFSET, 4
    .equ PARAM_FROM_OFFSET, 8
    .equ PARAM_TO_OFFSET, 16
    .equ PARAM_PASS_OFFSET, 24
    .equ PARAM_REPORT_EVERY_OFFSET, 32
    .equ GUEST_MODE_SWEEP, 1
    .equ COM1, 0x3f8
    .equ PAGE_SIZE, 4096

    .code64
    .text
    .globl _start
_start:
    mov     $PARAMS_ADDR, %ebx
    cmpl    $PARAMS_MAGIC, PARAM_MAGIC_OFFSET(%rbx)
    jne     no_params
    cmpl    $GUEST_MODE_SWEEP, PARAM_MODE_OFFSET(%rbx)
    jne     idle

    /* r14 = from, r15 = to, r12d = report_every (0 means 1), r13d = passes since the last line */
    mov     PARAM_FROM_OFFSET(%rbx), %r14
    mov     PARAM_TO_OFFSET(%rbx), %r15
    mov     PARAM_REPORT_EVERY_OFFSET(%rbx), %r12d
    test    %r12d, %r12d
    jnz     1f
    mov     $1, %r12d
1:  xor     %r13d, %r13d
    cmp     %r15, %r14
    jae     idle

pass:
    mov     %r14, %rax
    /* The hot loop: four instructions per page, because guest code may run at ~1 M instructions/s. */
page:
    incl    (%rax)
    add     $PAGE_SIZE, %rax
    cmp     %r15, %rax
    jb      page

    incq    PARAM_PASS_OFFSET(%rbx)
    inc     %r13d
    cmp     %r12d, %r13d
    jb      pass
    xor     %r13d, %r13d
    call    report
    jmp     pass

/* Print "pass N\n" on COM1, N = the pass counter in decimal. Clobbers rax, rcx, rdx, rsi, r8, r9. */
report:
    sub     $32, %rsp
    lea     32(%rsp), %rcx
    mov     PARAM_PASS_OFFSET(%rbx), %rax
    mov     $10, %r8d
1:  xor     %edx, %edx
    div     %r8
    add     $'0', %dl
    dec     %rcx
    mov     %dl, (%rcx)
    test    %rax, %rax
    jnz     1b
    mov     $COM1, %dx
    lea     pass_text(%rip), %rsi
2:  mov     (%rsi), %al
    test    %al, %al
    jz      3f
    out     %al, %dx
    inc     %rsi
    jmp     2b
3:  lea     32(%rsp), %r9
4:  cmp     %r9, %rcx
    jae     5f
    mov     (%rcx), %al
    out     %al, %dx
    inc     %rcx
    jmp     4b
5:  mov     $'\n', %al
    out     %al, %dx
    add     $32, %rsp
    ret

/* No parameter block: say so once, then idle, rather than sweep memory nobody described. */
no_params:
    mov     $COM1, %dx
    lea     no_params_text(%rip), %rsi
1:  mov     (%rsi), %al
    test    %al, %al
    jz      idle
    out     %al, %dx
    inc     %rsi
    jmp     1b

idle:
    hlt
    jmp     idle

pass_text:
    .asciz  "pass "
no_params_text:
    .asciz  "ferry guest: no parameter block\n"
