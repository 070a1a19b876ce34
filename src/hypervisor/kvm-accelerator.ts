// The kvm accelerator: guest RAM as one anonymous mmap registered as one KVM slot per
// block ("pc.ram" at guest address 0 up to the 32-bit PCI hole, then "pc.ram.1", … from
// 4 GiB: src/hypervisor/ram-layout.ts), vCPUs on worker threads entered directly in long
// mode, KVM's dirty log, and one "cpu" state section per vCPU. No in-kernel irqchip or
// PIT: the built-in guests need neither, so there is no kernel device state to save.

import { debuglog } from 'node:util';
import { ConfigError, VmStateError } from '../errors.js';
import { loadBuiltinGuest } from '../guests/builtin.js';
import { CODE_MAX, STACK_TOP } from '../guests/layout.js';
import { longModeEntryRegisters, longModeSpecialRegisters } from '../guests/long-mode.js';
import { KvmSystem, probeKvm } from '../kvm/system.js';
import { zeroRegs } from '../kvm/structs.js';
import type { KvmSregs } from '../kvm/structs.js';
import { MSR_IA32_TSC, cpuidForVcpu } from '../kvm/vcpu.js';
import type { KvmCpuState, KvmVcpu } from '../kvm/vcpu.js';
import type { KvmCpuidEntry } from '../kvm/structs.js';
import { VcpuThread } from '../kvm/vcpu-thread.js';
import { STATE_PAUSED as VCPU_PAUSED, STATE_STOPPED as VCPU_STOPPED } from '../kvm/vcpu-mailbox.js';
import type { KvmVm } from '../kvm/vm.js';
import { HostMemory, hostMemoryOptions } from '../sys/host-memory.js';
import { MAX_GUEST_RAM, planRamBlocks, type RamBlockPlan } from './ram-layout.js';
import { CPU_SECTION_IDSTR, CPU_STATE_DESCRIPTION, cpuStateFromValue, cpuStateToValue } from './kvm-cpu-state.js';
import { PAGE_SIZE } from './types.js';
import type {
  Accelerator, AcceleratorConfig, DirtyBitmap, DirtyLog, GuestExit, GuestMemoryBlock, StateSection,
} from './types.js';

const trace = debuglog('ferry');

/**
 * Where RAM below 4 GiB ends: the 32-bit PCI hole, where KVM_TSS_ADDRESS also lives,
 * begins here (as on QEMU's pc machine). The built-in guests use this RAM alone: their
 * page tables map the first 4 GiB.
 */
export const LOW_RAM_LIMIT = 0xe0000000;
/** The most guest RAM the kvm accelerator runs (ram-layout.ts). */
export const MAX_MEMORY = MAX_GUEST_RAM;
/**
 * Secondary vCPUs (the built-in guests are single-threaded) park on `hlt; jmp .-1` at
 * the end of the code area; without an irqchip nothing ever wakes them.
 */
const AP_PARK_ADDR = CODE_MAX - 0x10;
const AP_PARK_CODE = Uint8Array.of(0xf4, 0xeb, 0xfd);

/** Whether KVM can be used on this host; `reason` is one line saying what to do. */
export function kvmAvailable(): { ok: true } | { ok: false; reason: string } {
  return probeKvm();
}

/**
 * KVM's dirty log of the RAM slots; slot i holds block i. A slot not logged (start()'s
 * `blocks`) costs the guest nothing — no write-protection — and syncs as all clean.
 */
class KvmDirtyLog implements DirtyLog {
  private on = false;
  /** Per slot, whether KVM logs it while on. */
  private logged: boolean[] = [];
  constructor(private readonly vm: KvmVm, private readonly slots: readonly number[], private readonly slotPages: readonly number[]) {}

  get active(): boolean {
    return this.on;
  }

  start(blocks?: readonly boolean[]): void {
    const wanted = this.slots.map((_, i) => blocks?.[i] ?? true);
    if (this.on) {
      // Forget what was logged so far, as the interface asks; slots change as asked.
      this.slots.forEach((slot, i) => {
        if (this.logged[i] && wanted[i]) this.vm.fetchDirtyLog(slot);
        else if (this.logged[i] !== wanted[i]) this.vm.setDirtyLogging(slot, wanted[i]!);
      });
      this.logged = wanted;
      return;
    }
    this.slots.forEach((slot, i) => {
      if (wanted[i]) this.vm.setDirtyLogging(slot, true);
    });
    this.logged = wanted;
    this.on = true;
  }

  sync(): DirtyBitmap[] {
    if (!this.on) throw new RangeError('Dirty log sync() before start()');
    return this.slots.map((slot, i) => (this.logged[i] ? this.vm.fetchDirtyLog(slot) : new Uint32Array(Math.ceil(this.slotPages[i]! / 32))));
  }

  stop(): void {
    if (!this.on) return;
    this.slots.forEach((slot, i) => {
      if (this.logged[i]) this.vm.setDirtyLogging(slot, false);
    });
    this.on = false;
  }
}

/** CPUID.80000001H:EDX[26] (pdpe1gb): 1 GiB pages. */
function offersPages1G(cpuid: readonly KvmCpuidEntry[]): boolean {
  const ext = cpuid.find((e) => e.function === 0x80000001);
  return ext !== undefined && ((ext.edx >>> 26) & 1) === 1;
}

function bootVcpu(vcpu: KvmVcpu, index: number): void {
  const base = vcpu.getSregs();
  const lm = longModeSpecialRegisters();
  const sregs: KvmSregs = {
    ...base,
    cs: lm.cs, ds: lm.ds, es: lm.es, fs: lm.fs, gs: lm.gs, ss: lm.ss, tr: lm.tr,
    gdt: lm.gdt, idt: lm.idt, cr0: lm.cr0, cr3: lm.cr3, cr4: lm.cr4, efer: lm.efer,
  };
  vcpu.setSregs(sregs);
  const entry = longModeEntryRegisters();
  const regs = { ...zeroRegs(), ...entry };
  if (index > 0) {
    regs.rip = BigInt(AP_PARK_ADDR);
    regs.rsp = BigInt(STACK_TOP - index * PAGE_SIZE);
  }
  vcpu.setRegs(regs);
}

class KvmAccelerator implements Accelerator {
  readonly kind = 'kvm' as const;
  readonly memory: readonly GuestMemoryBlock[];
  readonly dirtyLog: DirtyLog;
  readonly stateSections: readonly StateSection[];
  private isRunning = false;
  private destroyed = false;
  private readonly listeners: Array<(exit: GuestExit) => void> = [];
  /** Exits before anyone listened (e.g. a crash right after resume), delivered to the first listener. */
  private unheard: GuestExit[] = [];
  /** Per vCPU: the TSC value that stands for the current stop (see freezeTsc). */
  private readonly stoppedTsc: Array<bigint | undefined>;

  constructor(
    private readonly system: KvmSystem,
    private readonly vm: KvmVm,
    private readonly ram: HostMemory,
    private readonly vcpus: readonly KvmVcpu[],
    private readonly threads: readonly VcpuThread[],
    /** Guest RAM's blocks; block i is KVM slot i. */
    blocks: readonly RamBlockPlan[],
    incoming = false,
  ) {
    this.stoppedTsc = vcpus.map(() => undefined);
    // An incoming VM's RAM stays untouched until the migration loads it (no guest loaded).
    this.memory = blocks.map((b) => ram.block(b.idstr, b.guestAddress, { offset: b.offset, size: b.size, freshZero: incoming }));
    this.dirtyLog = new KvmDirtyLog(vm, blocks.map((_, slot) => slot), blocks.map((b) => b.size / PAGE_SIZE));
    // KVM would happily read registers of a vCPU that is about to run again; the
    // interface promises these run only while paused, so hold callers to it.
    const requirePaused = (i: number, action: string): void => {
      const state = threads[i]!.state;
      if (state !== VCPU_PAUSED && state !== VCPU_STOPPED) {
        throw new VmStateError(`Cannot ${action} the CPU state of vCPU ${i} while it runs: pause the guest first`);
      }
    };
    this.stateSections = vcpus.map((vcpu, i): StateSection => ({
      idstr: CPU_SECTION_IDSTR,
      instanceId: i,
      description: CPU_STATE_DESCRIPTION,
      save: () => {
        requirePaused(i, 'save');
        const state = vcpu.getState();
        this.freezeTsc(i, state);
        return cpuStateToValue(state);
      },
      load: (value) => {
        requirePaused(i, 'load');
        const state = cpuStateFromValue(value);
        const { refusedMsrs } = vcpu.setState(state);
        this.stoppedTsc[i] = state.msrs.find((m) => m.index === MSR_IA32_TSC)?.data;
        if (refusedMsrs.length > 0) {
          // KVM lists some MSRs it then refuses to restore on another CPU model; the
          // guest runs without them, as QEMU's filtered MSR list would.
          trace('kvm: vCPU %d refused MSRs %s on load', i, refusedMsrs.map((m) => '0x' + m.toString(16)).join(', '));
        }
      },
      check: (value) => {
        cpuStateFromValue(value);
      },
    }));
  }

  get running(): boolean {
    return this.isRunning;
  }

  emit(exit: GuestExit): void {
    if (this.listeners.length === 0) this.unheard.push(exit);
    for (const listener of this.listeners) listener(exit);
  }

  /**
   * The guest's TSC as of the stop. KVM's TSC MSR goes on counting while the vCPUs are
   * out of KVM_RUN, so each read of a stopped guest would give another value: the value
   * pause() read (or a load set; or, failing both, the first save's) stands for the whole
   * stop, as QEMU's env->tsc_valid does, and every save until the guest runs again sends it.
   */
  private freezeTsc(i: number, state: KvmCpuState): void {
    const tsc = state.msrs.find((m) => m.index === MSR_IA32_TSC);
    if (tsc === undefined) return;
    const frozen = this.stoppedTsc[i];
    if (frozen === undefined) this.stoppedTsc[i] = tsc.data;
    else tsc.data = frozen;
  }

  resume(): void {
    if (this.destroyed) throw new RangeError('Cannot resume a destroyed kvm accelerator');
    this.stoppedTsc.fill(undefined);
    this.isRunning = true;
    for (const t of this.threads) t.resume();
  }

  vcpuThreadIds(): readonly number[] {
    return this.threads.map((t) => t.tid);
  }

  setThrottle(percent: number): void {
    for (const t of this.threads) t.setThrottle(percent);
  }

  async pause(): Promise<void> {
    // Ask every vCPU before waiting for any, so they stop together.
    const claimed = this.threads.map((t) => t.requestPause());
    await Promise.all(this.threads.map((t, i) => t.finishPause(claimed[i]!)));
    this.isRunning = false;
    // As QEMU when a VM stops (kvmclock's state handler, kvm_synchronize_all_tsc): the TSC
    // is read now, and that value stands for the whole stop — not the first save's, which
    // may come much later (a migration's device state, after its last RAM).
    for (let i = 0; i < this.vcpus.length && !this.destroyed; i++) {
      if (this.stoppedTsc[i] !== undefined) continue;
      const state = this.threads[i]!.state;
      if (state !== VCPU_PAUSED && state !== VCPU_STOPPED) continue;
      this.stoppedTsc[i] = this.vcpus[i]!.getMsrs([MSR_IA32_TSC]).entries[0]?.data;
    }
  }

  onExit(listener: (exit: GuestExit) => void): void {
    this.listeners.push(listener);
    const unheard = this.unheard;
    this.unheard = [];
    for (const exit of unheard) listener(exit);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.isRunning = false;
    const results = await Promise.allSettled(this.threads.map((t) => t.stop()));
    for (const vcpu of this.vcpus) vcpu.close();
    this.vm.close();
    this.ram.unmap();
    this.system.close();
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

export async function createKvmAccelerator(config: AcceleratorConfig): Promise<Accelerator> {
  if (!Number.isSafeInteger(config.memorySize) || config.memorySize <= 0 || config.memorySize % PAGE_SIZE !== 0) {
    throw new ConfigError(`Guest memory size ${config.memorySize} must be a positive multiple of ${PAGE_SIZE} bytes`);
  }
  if (config.memorySize > MAX_MEMORY) {
    throw new ConfigError(`Guest memory of ${config.memorySize} bytes is more than the kvm accelerator supports (${MAX_MEMORY / 1048576} MiB)`);
  }
  if (!Number.isInteger(config.vcpus) || config.vcpus < 1 || config.vcpus > 255) {
    throw new ConfigError(`Invalid vCPU count ${config.vcpus}: expected 1 to 255`);
  }
  const system = KvmSystem.open();
  const cleanup: Array<() => void> = [() => system.close()];
  const threads: VcpuThread[] = [];
  try {
    const vm = system.createVm();
    cleanup.unshift(() => vm.close());
    // SAFETY: guest RAM stays mapped until destroy(), after the vCPUs and the VM are gone.
    // Transparent huge pages, as QEMU asks for: fewer faults on the host and fewer TLB
    // misses in the guest; KVM's dirty log stays per 4 KiB page. Backed now only with
    // --mem-prealloc; otherwise an incoming migration backs it 2 MiB at a time (ram.ts).
    const host = HostMemory.allocate(config.memorySize, hostMemoryOptions(config));
    cleanup.unshift(() => host.unmap());
    // One slot per block: below the PCI hole, then from 4 GiB up.
    const blocks = planRamBlocks(config.memorySize, LOW_RAM_LIMIT, config.memoryBackend?.id);
    blocks.forEach((b, slot) => vm.addMemorySlot(slot, b.guestAddress, host.regionAt(b.offset, b.size)));
    const ram = host.regionAt(0, blocks[0]!.size);

    const cpuid = system.supportedCpuid();
    const vcpus: KvmVcpu[] = [];
    for (let i = 0; i < config.vcpus; i++) {
      const vcpu = vm.createVcpu(i);
      cleanup.unshift(() => vcpu.close());
      // CPUID before the special registers: KVM accepts EFER.LME only when CPUID shows long mode.
      vcpu.setCpuid(cpuidForVcpu(cpuid, i));
      vcpus.push(vcpu);
    }

    if (!config.incoming) {
      // The built-in guest's sweep ends at the hole unless told to sweep above 4 GiB,
      // which its page tables map with 1 GiB pages where the CPU has them.
      const last = blocks.at(-1)!;
      const high = blocks.length > 1 ? { lowRamLimit: LOW_RAM_LIMIT, end: last.guestAddress + last.size, pages1G: offersPages1G(cpuid) } : undefined;
      loadBuiltinGuest(ram.bytes, config.guest, config.memorySize, undefined, undefined, high);
      ram.bytes.set(AP_PARK_CODE, AP_PARK_ADDR);
      vcpus.forEach((vcpu, i) => bootVcpu(vcpu, i));
    }

    let accelerator: KvmAccelerator | undefined;
    const pendingExits: GuestExit[] = [];
    for (const vcpu of vcpus) {
      const thread = new VcpuThread(vcpu, config.ioBus, (exit) => {
        if (accelerator) accelerator.emit(exit);
        else pendingExits.push(exit);
      });
      threads.push(thread);
    }
    await Promise.all(threads.map((t) => t.ready()));
    accelerator = new KvmAccelerator(system, vm, host, vcpus, threads, blocks, config.incoming);
    for (const exit of pendingExits) accelerator.emit(exit);
    return accelerator;
  } catch (err) {
    await Promise.allSettled(threads.map((t) => t.stop()));
    for (const undo of cleanup) {
      try {
        undo();
      } catch (cleanupErr) {
        trace('kvm: cleanup after a failed start: %s', (cleanupErr as Error).message);
      }
    }
    throw err;
  }
}
