// A KVM vCPU fd as seen from the main thread: its kvm_run page (this thread's own
// mapping), CPUID setup, and the complete architectural state get/set that migration
// needs. KVM_RUN itself happens on the vCPU's worker thread (vcpu-thread.ts).

import { SystemCallError, VmStateError } from '../errors.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE, closeFd, ioctlPtr, mmap, munmap } from '../sys/libc.js';
import type { Mapping } from '../sys/libc.js';
import * as K from './ioctls.js';
import {
  KvmRunView, decodeDebugRegs, decodeMsrs, decodeRegs, decodeSregs, decodeVcpuEvents, decodeXcrs, encodeCpuid2, encodeDebugRegs, encodeMsrs,
  encodeRegs, encodeSregs, encodeVcpuEvents, encodeXcrs,
} from './structs.js';
import type { KvmCpuidEntry, KvmDebugRegs, KvmMsrEntry, KvmRegs, KvmSregs, KvmVcpuEvents, KvmXcr } from './structs.js';
import type { KvmVm } from './vm.js';

/** Everything KVM holds for one x86 vCPU without an in-kernel irqchip. */
export interface KvmCpuState {
  regs: KvmRegs;
  sregs: KvmSregs;
  /** The kvm_xsave area (4096 bytes, or KVM_CAP_XSAVE2's size): x87, SSE, AVX… state. */
  xsave: Uint8Array;
  xcrs: KvmXcr[];
  msrs: KvmMsrEntry[];
  events: KvmVcpuEvents;
  mpState: number;
  debugRegs: KvmDebugRegs;
}

/** CPUID leaves that report the APIC id: leaf 1 EBX[31:24], leaves 0xb and 0x1f EDX. */
export function cpuidForVcpu(supported: readonly KvmCpuidEntry[], vcpuId: number): KvmCpuidEntry[] {
  return supported.map((e) => {
    const entry = { ...e };
    if (entry.function === 1) entry.ebx = ((entry.ebx & 0x00ffffff) | ((vcpuId & 0xff) << 24)) >>> 0;
    if (entry.function === 0xb || entry.function === 0x1f) entry.edx = vcpuId >>> 0;
    return entry;
  });
}

/** The time-stamp counter (IA32_TIME_STAMP_COUNTER). */
export const MSR_IA32_TSC = 0x10;

/**
 * Hyper-V's synthetic MSRs (0x40000000-0x400000ff), which KVM lists whether or not the
 * guest was shown Hyper-V: Ferry's CPUID never is, so nothing in them is the guest's,
 * and two are clocks (VP_RUNTIME, TIME_REF_COUNT) that change on every read. QEMU saves
 * them only with hv-* enlightenments on.
 */
export function isHyperVMsr(index: number): boolean {
  return index >= 0x40000000 && index <= 0x400000ff;
}

/*
 * SAFETY (every ioctl below): the buffer is a fresh Uint8Array of exactly the struct size
 * the request number encodes (SIZEOF, golden-checked), or larger for the variable-length
 * structs (kvm_msrs, kvm_cpuid2, XSAVE2) whose count field the kernel reads first; koffi
 * pins it only for the call, and the kernel copies in or out before returning.
 */
export class KvmVcpu {
  readonly vm: KvmVm;
  readonly id: number;
  readonly fd: number;
  /** This thread's mapping of kvm_run: the worker maps the same page for itself. */
  readonly runMapping: Mapping;
  readonly run: KvmRunView;
  /** MSRs from KVM_GET_MSR_INDEX_LIST that this vCPU can actually read (learned on first save). */
  private readableMsrs: number[] | undefined;
  private closed = false;

  constructor(vm: KvmVm, id: number, fd: number) {
    this.vm = vm;
    this.id = id;
    this.fd = fd;
    try {
      const size = vm.system.vcpuMmapSize();
      // SAFETY: the kernel backs the vCPU fd's pages 0.. with kvm_run and the PIO data
      // page; the mapping lives until close(), after the worker has stopped using it.
      this.runMapping = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      this.run = new KvmRunView(this.runMapping.bytes);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  setCpuid(entries: readonly KvmCpuidEntry[]): void {
    ioctlPtr(this.fd, K.KVM_SET_CPUID2, encodeCpuid2(entries), `KVM_SET_CPUID2(vcpu ${this.id}, ${entries.length} entries)`);
  }

  getRegs(): KvmRegs {
    const buf = new Uint8Array(K.SIZEOF.kvm_regs);
    ioctlPtr(this.fd, K.KVM_GET_REGS, buf, `KVM_GET_REGS(vcpu ${this.id})`);
    return decodeRegs(buf);
  }

  setRegs(regs: KvmRegs): void {
    ioctlPtr(this.fd, K.KVM_SET_REGS, encodeRegs(regs), `KVM_SET_REGS(vcpu ${this.id})`);
  }

  getSregs(): KvmSregs {
    const buf = new Uint8Array(K.SIZEOF.kvm_sregs);
    ioctlPtr(this.fd, K.KVM_GET_SREGS, buf, `KVM_GET_SREGS(vcpu ${this.id})`);
    return decodeSregs(buf);
  }

  setSregs(sregs: KvmSregs): void {
    ioctlPtr(this.fd, K.KVM_SET_SREGS, encodeSregs(sregs), `KVM_SET_SREGS(vcpu ${this.id})`);
  }

  getXsave(): Uint8Array {
    const size = this.vm.xsaveSize;
    const buf = new Uint8Array(size);
    // KVM_GET_XSAVE copies only 4096 bytes; KVM_GET_XSAVE2 copies the size KVM_CAP_XSAVE2 reported.
    if (size > K.SIZEOF.kvm_xsave) ioctlPtr(this.fd, K.KVM_GET_XSAVE2, buf, `KVM_GET_XSAVE2(vcpu ${this.id}, ${size} bytes)`);
    else ioctlPtr(this.fd, K.KVM_GET_XSAVE, buf, `KVM_GET_XSAVE(vcpu ${this.id})`);
    return buf;
  }

  setXsave(area: Uint8Array): void {
    // The kernel reads this VM's full XSAVE size whatever the ioctl number says: pad an
    // area from a host with a smaller one (components beyond it are absent in XSTATE_BV).
    const buf = new Uint8Array(this.vm.xsaveSize);
    if (area.byteLength > buf.byteLength && area.subarray(buf.byteLength).some((b) => b !== 0)) {
      throw new VmStateError(`Cannot load vCPU ${this.id} XSAVE area of ${area.byteLength} bytes: this host's KVM holds only ${buf.byteLength}`);
    }
    buf.set(area.subarray(0, buf.byteLength));
    ioctlPtr(this.fd, K.KVM_SET_XSAVE, buf, `KVM_SET_XSAVE(vcpu ${this.id})`);
  }

  getXcrs(): KvmXcr[] {
    const buf = new Uint8Array(K.SIZEOF.kvm_xcrs);
    ioctlPtr(this.fd, K.KVM_GET_XCRS, buf, `KVM_GET_XCRS(vcpu ${this.id})`);
    return decodeXcrs(buf);
  }

  setXcrs(xcrs: readonly KvmXcr[]): void {
    ioctlPtr(this.fd, K.KVM_SET_XCRS, encodeXcrs(xcrs), `KVM_SET_XCRS(vcpu ${this.id})`);
  }

  /**
   * Read MSRs. KVM_GET_MSRS stops at the first MSR it cannot read and returns how many
   * it did; that one is dropped (it is in the index list but not valid for this vCPU's
   * CPUID or without an in-kernel LAPIC) and reading continues after it.
   */
  getMsrs(indices: readonly number[]): { entries: KvmMsrEntry[]; unreadable: number[] } {
    const entries: KvmMsrEntry[] = [];
    const unreadable: number[] = [];
    let rest = [...indices];
    while (rest.length > 0) {
      const buf = encodeMsrs(rest.map((index) => ({ index, data: 0n })));
      const n = ioctlPtr(this.fd, K.KVM_GET_MSRS, buf, `KVM_GET_MSRS(vcpu ${this.id}, ${rest.length} MSRs)`);
      entries.push(...decodeMsrs(buf, n));
      if (n >= rest.length) break;
      unreadable.push(rest[n]!);
      rest = rest.slice(n + 1);
    }
    return { entries, unreadable };
  }

  /** Write MSRs; returns those KVM refused (same stop-at-first-failure contract as KVM_GET_MSRS). */
  setMsrs(entries: readonly KvmMsrEntry[]): number[] {
    const refused: number[] = [];
    let rest = [...entries];
    while (rest.length > 0) {
      const n = ioctlPtr(this.fd, K.KVM_SET_MSRS, encodeMsrs(rest), `KVM_SET_MSRS(vcpu ${this.id}, ${rest.length} MSRs)`);
      if (n >= rest.length) break;
      refused.push(rest[n]!.index);
      rest = rest.slice(n + 1);
    }
    return refused;
  }

  getVcpuEvents(): KvmVcpuEvents {
    const buf = new Uint8Array(K.SIZEOF.kvm_vcpu_events);
    ioctlPtr(this.fd, K.KVM_GET_VCPU_EVENTS, buf, `KVM_GET_VCPU_EVENTS(vcpu ${this.id})`);
    const events = decodeVcpuEvents(buf);
    // Without KVM_CAP_EXCEPTION_PAYLOAD (Ferry does not enable it) KVM reports a pending
    // exception as injected too, and KVM_SET_VCPU_EVENTS clears `pending`: the exception
    // travels as injected, so keep only that, as QEMU's kvm_get_vcpu_events does.
    if ((events.flags & K.KVM_VCPUEVENT_VALID_PAYLOAD) === 0) events.exception.pending = 0;
    return events;
  }

  setVcpuEvents(events: KvmVcpuEvents): void {
    // Restore NMI pending state, the SIPI vector and the interrupt shadow too, as QEMU
    // does (KVM ignores those fields unless their VALID flag is set).
    const withFlags = {
      ...events,
      flags: events.flags | K.KVM_VCPUEVENT_VALID_NMI_PENDING | K.KVM_VCPUEVENT_VALID_SIPI_VECTOR | K.KVM_VCPUEVENT_VALID_SHADOW,
    };
    ioctlPtr(this.fd, K.KVM_SET_VCPU_EVENTS, encodeVcpuEvents(withFlags), `KVM_SET_VCPU_EVENTS(vcpu ${this.id})`);
  }

  getMpState(): number {
    const buf = new Uint8Array(4);
    ioctlPtr(this.fd, K.KVM_GET_MP_STATE, buf, `KVM_GET_MP_STATE(vcpu ${this.id})`);
    return new DataView(buf.buffer).getUint32(0, true);
  }

  setMpState(state: number): void {
    const buf = new Uint8Array(4);
    new DataView(buf.buffer).setUint32(0, state, true);
    ioctlPtr(this.fd, K.KVM_SET_MP_STATE, buf, `KVM_SET_MP_STATE(vcpu ${this.id}, ${state})`);
  }

  getDebugRegs(): KvmDebugRegs {
    const buf = new Uint8Array(K.SIZEOF.kvm_debugregs);
    ioctlPtr(this.fd, K.KVM_GET_DEBUGREGS, buf, `KVM_GET_DEBUGREGS(vcpu ${this.id})`);
    return decodeDebugRegs(buf);
  }

  setDebugRegs(regs: KvmDebugRegs): void {
    ioctlPtr(this.fd, K.KVM_SET_DEBUGREGS, encodeDebugRegs(regs), `KVM_SET_DEBUGREGS(vcpu ${this.id})`);
  }

  /**
   * The whole vCPU state. Only while the vCPU is out of KVM_RUN and any IO/MMIO exit has
   * been completed by a KVM_RUN with immediate_exit (the worker guarantees both when paused).
   */
  getState(): KvmCpuState {
    const msrIndices = this.readableMsrs ?? this.vm.system.msrIndexList().filter((i) => !isHyperVMsr(i));
    const { entries, unreadable } = this.getMsrs(msrIndices);
    if (!this.readableMsrs) this.readableMsrs = msrIndices.filter((i) => !unreadable.includes(i));
    return {
      regs: this.getRegs(),
      sregs: this.getSregs(),
      xsave: this.getXsave(),
      xcrs: this.getXcrs(),
      msrs: entries,
      events: this.getVcpuEvents(),
      mpState: this.getMpState(),
      debugRegs: this.getDebugRegs(),
    };
  }

  /** Install a whole state, in the order QEMU's kvm_arch_put_registers uses. Returns MSRs KVM refused. */
  setState(state: KvmCpuState): { refusedMsrs: number[] } {
    try {
      this.setRegs(state.regs);
      this.setXsave(state.xsave);
      this.setXcrs(state.xcrs);
      this.setSregs(state.sregs);
      const refusedMsrs = this.setMsrs(state.msrs);
      this.setVcpuEvents(state.events);
      this.setMpState(state.mpState);
      this.setDebugRegs(state.debugRegs);
      return { refusedMsrs };
    } catch (err) {
      if (err instanceof SystemCallError) {
        throw new VmStateError(`Cannot load the CPU state of vCPU ${this.id}: ${err.message}`, { cause: err });
      }
      throw err;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    munmap(this.runMapping);
    closeFd(this.fd);
  }
}
