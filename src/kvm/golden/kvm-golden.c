/*
 * Prints the KVM ioctl numbers, constants and struct layouts Ferry hard-codes, from the
 * real <linux/kvm.h>, so the TypeScript tables can be checked against the kernel's own
 * headers (the src/kvm tests carry the output as golden values).
 * Build and run: gcc -o /tmp/kvm-golden src/kvm/golden/kvm-golden.c && /tmp/kvm-golden
 */
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>

#define NUM(x) printf("  %s: 0x%lx,\n", #x, (unsigned long)(x))
#define SIZE(t) printf("  'sizeof(struct %s)': %zu,\n", #t, sizeof(struct t))
#define OFF(t, m) printf("  '%s.%s': %zu,\n", #t, #m, offsetof(struct t, m))

int main(void) {
  printf("// ioctl numbers\n");
  NUM(KVM_GET_API_VERSION); NUM(KVM_CREATE_VM); NUM(KVM_CHECK_EXTENSION);
  NUM(KVM_GET_VCPU_MMAP_SIZE); NUM(KVM_GET_SUPPORTED_CPUID); NUM(KVM_GET_MSR_INDEX_LIST);
  NUM(KVM_SET_TSS_ADDR); NUM(KVM_SET_IDENTITY_MAP_ADDR); NUM(KVM_SET_USER_MEMORY_REGION);
  NUM(KVM_GET_DIRTY_LOG); NUM(KVM_CLEAR_DIRTY_LOG); NUM(KVM_ENABLE_CAP); NUM(KVM_CREATE_VCPU);
  NUM(KVM_RUN); NUM(KVM_GET_REGS); NUM(KVM_SET_REGS); NUM(KVM_GET_SREGS); NUM(KVM_SET_SREGS);
  NUM(KVM_GET_FPU); NUM(KVM_SET_FPU); NUM(KVM_GET_XSAVE); NUM(KVM_GET_XSAVE2); NUM(KVM_SET_XSAVE);
  NUM(KVM_GET_XCRS); NUM(KVM_SET_XCRS); NUM(KVM_GET_MSRS); NUM(KVM_SET_MSRS);
  NUM(KVM_GET_VCPU_EVENTS); NUM(KVM_SET_VCPU_EVENTS); NUM(KVM_GET_MP_STATE); NUM(KVM_SET_MP_STATE);
  NUM(KVM_SET_CPUID2); NUM(KVM_GET_CPUID2); NUM(KVM_GET_LAPIC); NUM(KVM_SET_LAPIC);
  NUM(KVM_GET_DEBUGREGS); NUM(KVM_SET_DEBUGREGS);
  printf("// capabilities and flags\n");
  NUM(KVM_CAP_USER_MEMORY); NUM(KVM_CAP_SET_TSS_ADDR); NUM(KVM_CAP_EXT_CPUID);
  NUM(KVM_CAP_NR_MEMSLOTS); NUM(KVM_CAP_MP_STATE); NUM(KVM_CAP_SET_IDENTITY_MAP_ADDR);
  NUM(KVM_CAP_VCPU_EVENTS); NUM(KVM_CAP_XSAVE); NUM(KVM_CAP_XCRS); NUM(KVM_CAP_IMMEDIATE_EXIT);
  NUM(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2); NUM(KVM_CAP_XSAVE2); NUM(KVM_CAP_DEBUGREGS);
  NUM(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE); NUM(KVM_DIRTY_LOG_INITIALLY_SET);
  NUM(KVM_MEM_LOG_DIRTY_PAGES); NUM(KVM_API_VERSION);
  printf("// exit reasons\n");
  NUM(KVM_EXIT_UNKNOWN); NUM(KVM_EXIT_EXCEPTION); NUM(KVM_EXIT_IO); NUM(KVM_EXIT_HLT);
  NUM(KVM_EXIT_MMIO); NUM(KVM_EXIT_SHUTDOWN); NUM(KVM_EXIT_FAIL_ENTRY); NUM(KVM_EXIT_INTR);
  NUM(KVM_EXIT_INTERNAL_ERROR); NUM(KVM_EXIT_SYSTEM_EVENT); NUM(KVM_EXIT_IO_IN); NUM(KVM_EXIT_IO_OUT);
  NUM(KVM_MP_STATE_RUNNABLE); NUM(KVM_MP_STATE_HALTED);
  NUM(KVM_VCPUEVENT_VALID_NMI_PENDING); NUM(KVM_VCPUEVENT_VALID_SIPI_VECTOR);
  NUM(KVM_VCPUEVENT_VALID_SHADOW); NUM(KVM_VCPUEVENT_VALID_SMM); NUM(KVM_VCPUEVENT_VALID_PAYLOAD);
  printf("// layouts\n");
  SIZE(kvm_regs); OFF(kvm_regs, rax); OFF(kvm_regs, rsp); OFF(kvm_regs, r8); OFF(kvm_regs, rip); OFF(kvm_regs, rflags);
  SIZE(kvm_segment); OFF(kvm_segment, base); OFF(kvm_segment, limit); OFF(kvm_segment, selector);
  OFF(kvm_segment, type); OFF(kvm_segment, present); OFF(kvm_segment, dpl); OFF(kvm_segment, db);
  OFF(kvm_segment, s); OFF(kvm_segment, l); OFF(kvm_segment, g); OFF(kvm_segment, avl); OFF(kvm_segment, unusable);
  SIZE(kvm_dtable); OFF(kvm_dtable, base); OFF(kvm_dtable, limit);
  SIZE(kvm_sregs); OFF(kvm_sregs, cs); OFF(kvm_sregs, ds); OFF(kvm_sregs, es); OFF(kvm_sregs, fs);
  OFF(kvm_sregs, gs); OFF(kvm_sregs, ss); OFF(kvm_sregs, tr); OFF(kvm_sregs, ldt); OFF(kvm_sregs, gdt);
  OFF(kvm_sregs, idt); OFF(kvm_sregs, cr0); OFF(kvm_sregs, cr2); OFF(kvm_sregs, cr3); OFF(kvm_sregs, cr4);
  OFF(kvm_sregs, cr8); OFF(kvm_sregs, efer); OFF(kvm_sregs, apic_base); OFF(kvm_sregs, interrupt_bitmap);
  SIZE(kvm_fpu); OFF(kvm_fpu, fpr); OFF(kvm_fpu, fcw); OFF(kvm_fpu, fsw); OFF(kvm_fpu, ftwx);
  OFF(kvm_fpu, last_opcode); OFF(kvm_fpu, last_ip); OFF(kvm_fpu, last_dp); OFF(kvm_fpu, xmm); OFF(kvm_fpu, mxcsr);
  SIZE(kvm_xsave);
  SIZE(kvm_xcrs); OFF(kvm_xcrs, nr_xcrs); OFF(kvm_xcrs, flags); OFF(kvm_xcrs, xcrs);
  SIZE(kvm_xcr); OFF(kvm_xcr, xcr); OFF(kvm_xcr, value);
  SIZE(kvm_msrs); OFF(kvm_msrs, nmsrs); OFF(kvm_msrs, entries);
  SIZE(kvm_msr_entry); OFF(kvm_msr_entry, index); OFF(kvm_msr_entry, data);
  SIZE(kvm_msr_list); OFF(kvm_msr_list, nmsrs); OFF(kvm_msr_list, indices);
  SIZE(kvm_vcpu_events); OFF(kvm_vcpu_events, exception); OFF(kvm_vcpu_events, interrupt);
  OFF(kvm_vcpu_events, nmi); OFF(kvm_vcpu_events, sipi_vector); OFF(kvm_vcpu_events, flags);
  OFF(kvm_vcpu_events, smi); OFF(kvm_vcpu_events, triple_fault); OFF(kvm_vcpu_events, exception_has_payload);
  OFF(kvm_vcpu_events, exception_payload);
  SIZE(kvm_mp_state);
  SIZE(kvm_lapic_state);
  SIZE(kvm_debugregs); OFF(kvm_debugregs, db); OFF(kvm_debugregs, dr6); OFF(kvm_debugregs, dr7); OFF(kvm_debugregs, flags);
  OFF(kvm_run, request_interrupt_window); OFF(kvm_run, immediate_exit); OFF(kvm_run, exit_reason);
  OFF(kvm_run, ready_for_interrupt_injection); OFF(kvm_run, if_flag); OFF(kvm_run, flags);
  OFF(kvm_run, cr8); OFF(kvm_run, apic_base); OFF(kvm_run, io); OFF(kvm_run, io.direction);
  OFF(kvm_run, io.size); OFF(kvm_run, io.port); OFF(kvm_run, io.count); OFF(kvm_run, io.data_offset);
  OFF(kvm_run, mmio.phys_addr); OFF(kvm_run, mmio.data); OFF(kvm_run, mmio.len); OFF(kvm_run, mmio.is_write);
  OFF(kvm_run, fail_entry.hardware_entry_failure_reason); OFF(kvm_run, fail_entry.cpu);
  OFF(kvm_run, internal.suberror); OFF(kvm_run, internal.ndata); OFF(kvm_run, internal.data);
  OFF(kvm_run, system_event.type);
  SIZE(kvm_userspace_memory_region); OFF(kvm_userspace_memory_region, slot); OFF(kvm_userspace_memory_region, flags);
  OFF(kvm_userspace_memory_region, guest_phys_addr); OFF(kvm_userspace_memory_region, memory_size);
  OFF(kvm_userspace_memory_region, userspace_addr);
  SIZE(kvm_dirty_log); OFF(kvm_dirty_log, slot); OFF(kvm_dirty_log, dirty_bitmap);
  SIZE(kvm_clear_dirty_log); OFF(kvm_clear_dirty_log, slot); OFF(kvm_clear_dirty_log, num_pages);
  OFF(kvm_clear_dirty_log, first_page); OFF(kvm_clear_dirty_log, dirty_bitmap);
  SIZE(kvm_cpuid2); OFF(kvm_cpuid2, nent); OFF(kvm_cpuid2, entries);
  SIZE(kvm_cpuid_entry2); OFF(kvm_cpuid_entry2, function); OFF(kvm_cpuid_entry2, index);
  OFF(kvm_cpuid_entry2, flags); OFF(kvm_cpuid_entry2, eax); OFF(kvm_cpuid_entry2, ebx);
  OFF(kvm_cpuid_entry2, ecx); OFF(kvm_cpuid_entry2, edx);
  SIZE(kvm_enable_cap); OFF(kvm_enable_cap, cap); OFF(kvm_enable_cap, args);
  return 0;
}
