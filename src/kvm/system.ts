// The /dev/kvm handle: opening it with errors a user can act on, the API version check,
// capabilities, and the system-wide queries (vcpu mmap size, supported CPUID, MSR list).

import { KvmUnavailableError, SystemCallError } from '../errors.js';
import { E2BIG, EACCES, ENOENT, ENODEV, ENXIO, EPERM, O_RDWR, closeFd, ioctlInt, ioctlPtr, openPath } from '../sys/libc.js';
import * as K from './ioctls.js';
import { cpuid2Buffer, decodeCpuid2, decodeMsrList, encodeMsrList } from './structs.js';
import type { KvmCpuidEntry } from './structs.js';
import { KvmVm } from './vm.js';

export const KVM_DEVICE = '/dev/kvm';

/** Capabilities Ferry cannot run without, by name for the error message. */
export const REQUIRED_CAPABILITIES: ReadonlyArray<readonly [number, string]> = [
  [K.KVM_CAP_USER_MEMORY, 'KVM_CAP_USER_MEMORY'],
  [K.KVM_CAP_SET_TSS_ADDR, 'KVM_CAP_SET_TSS_ADDR'],
  [K.KVM_CAP_SET_IDENTITY_MAP_ADDR, 'KVM_CAP_SET_IDENTITY_MAP_ADDR'],
  [K.KVM_CAP_EXT_CPUID, 'KVM_CAP_EXT_CPUID'],
  [K.KVM_CAP_MP_STATE, 'KVM_CAP_MP_STATE'],
  [K.KVM_CAP_VCPU_EVENTS, 'KVM_CAP_VCPU_EVENTS'],
  [K.KVM_CAP_XSAVE, 'KVM_CAP_XSAVE'],
  [K.KVM_CAP_XCRS, 'KVM_CAP_XCRS'],
  [K.KVM_CAP_DEBUGREGS, 'KVM_CAP_DEBUGREGS'],
  [K.KVM_CAP_IMMEDIATE_EXIT, 'KVM_CAP_IMMEDIATE_EXIT'],
];

/** Turn a failed open of /dev/kvm into one line that says what to do. */
export function explainOpenFailure(path: string, err: unknown): KvmUnavailableError {
  const errno = err instanceof SystemCallError ? err.errno : 0;
  let message: string;
  if (errno === ENOENT) {
    message = `${path} does not exist: this host has no KVM. Load the kvm_intel or kvm_amd module (and enable virtualization in the firmware or the nested hypervisor), or run with --accel sim.`;
  } else if (errno === EACCES || errno === EPERM) {
    message = `Permission denied opening ${path}: add your user to the "kvm" group (sudo usermod -aG kvm $USER, then log in again) or run as root; or run with --accel sim.`;
  } else if (errno === ENODEV || errno === ENXIO) {
    message = `${path} exists but no KVM module is behind it: load kvm_intel or kvm_amd (modprobe), or run with --accel sim.`;
  } else {
    message = `Cannot open ${path}: ${err instanceof Error ? err.message : String(err)}. Run with --accel sim to continue without KVM.`;
  }
  return new KvmUnavailableError(message, { cause: err });
}

export class KvmSystem {
  readonly fd: number;
  readonly path: string;
  private closed = false;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  /** Open /dev/kvm and check the API version and every required capability. */
  static open(path = KVM_DEVICE): KvmSystem {
    let fd: number;
    try {
      fd = openPath(path, O_RDWR);
    } catch (err) {
      throw explainOpenFailure(path, err);
    }
    const system = new KvmSystem(fd, path);
    try {
      let version: number;
      try {
        version = ioctlInt(fd, K.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
      } catch (err) {
        throw new KvmUnavailableError(`${path} is not a KVM device (KVM_GET_API_VERSION failed: ${err instanceof Error ? err.message : String(err)}): point Ferry at /dev/kvm, or run with --accel sim.`, { cause: err });
      }
      if (version !== K.KVM_API_VERSION) {
        throw new KvmUnavailableError(`${path} speaks KVM API version ${version}, Ferry needs ${K.KVM_API_VERSION}: use a kernel with the standard KVM API, or run with --accel sim.`);
      }
      for (const [cap, name] of REQUIRED_CAPABILITIES) system.requireCapability(cap, name);
    } catch (err) {
      system.close();
      throw err;
    }
    return system;
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, else 1 or a capability-specific value. */
  checkExtension(cap: number): number {
    return ioctlInt(this.fd, K.KVM_CHECK_EXTENSION, cap, `KVM_CHECK_EXTENSION(${cap})`);
  }

  requireCapability(cap: number, name: string): void {
    if (this.checkExtension(cap) <= 0) {
      throw new KvmUnavailableError(`KVM at ${this.path} lacks ${name} (capability ${cap}), which Ferry needs: use a newer kernel, or run with --accel sim.`);
    }
  }

  /** Bytes to mmap from a vCPU fd: kvm_run plus the pages that follow it (PIO data). */
  vcpuMmapSize(): number {
    return ioctlInt(this.fd, K.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  /** KVM_GET_SUPPORTED_CPUID, growing the buffer while the kernel answers E2BIG. */
  supportedCpuid(): KvmCpuidEntry[] {
    for (let capacity = 128; capacity <= 4096; capacity *= 2) {
      const buf = cpuid2Buffer(capacity);
      try {
        ioctlPtr(this.fd, K.KVM_GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
      } catch (err) {
        if (err instanceof SystemCallError && err.errno === E2BIG) continue;
        throw err;
      }
      return decodeCpuid2(buf);
    }
    throw new KvmUnavailableError('KVM_GET_SUPPORTED_CPUID still answers E2BIG with 4096 entries');
  }

  /** KVM_GET_MSR_INDEX_LIST: every MSR KVM can save and restore for a vCPU. */
  msrIndexList(): number[] {
    let capacity = 0;
    const probe = encodeMsrList(0);
    try {
      ioctlPtr(this.fd, K.KVM_GET_MSR_INDEX_LIST, probe, 'KVM_GET_MSR_INDEX_LIST');
      return [];
    } catch (err) {
      // E2BIG with nmsrs set to the real count is the documented way to size the list.
      if (!(err instanceof SystemCallError && err.errno === E2BIG)) throw err;
      capacity = new DataView(probe.buffer).getUint32(0, true);
    }
    const buf = encodeMsrList(capacity);
    ioctlPtr(this.fd, K.KVM_GET_MSR_INDEX_LIST, buf, 'KVM_GET_MSR_INDEX_LIST');
    return decodeMsrList(buf);
  }

  createVm(): KvmVm {
    // Argument 0: the default machine type (x86: the only one).
    const vmFd = ioctlInt(this.fd, K.KVM_CREATE_VM, 0, 'KVM_CREATE_VM');
    return new KvmVm(this, vmFd);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeFd(this.fd);
  }
}

/** Whether KVM can be used here, and if not, the one-line reason (the KvmUnavailableError message). */
export function probeKvm(path = KVM_DEVICE): { ok: true } | { ok: false; reason: string } {
  try {
    KvmSystem.open(path).close();
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
}
