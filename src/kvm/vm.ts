// A KVM virtual machine fd: x86 setup addresses, memory slots backed by host mmaps,
// per-slot dirty logging (KVM_GET_DIRTY_LOG, with KVM_CLEAR_DIRTY_LOG where the kernel
// offers manual protection), and vCPU creation.

import { closeFd, ioctlInt, ioctlPtr, mmapAnonymous, munmap } from '../sys/libc.js';
import type { Mapping } from '../sys/libc.js';
import * as K from './ioctls.js';
import { encodeClearDirtyLog, encodeDirtyLog, encodeEnableCap, encodeMemoryRegion } from './structs.js';
import type { KvmSystem } from './system.js';
import { KvmVcpu } from './vcpu.js';

const PAGE_SIZE = 4096;

/**
 * Where KVM on Intel keeps the three pages of the real-mode TSS and the one page of the
 * identity map it needs for unrestricted-guest emulation: just below the BIOS area at
 * the top of the first 4 GiB, as QEMU and Firecracker place them, far above guest RAM.
 */
export const KVM_TSS_ADDRESS = 0xfffbd000;
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffbc000;

/** Host memory by address, as a slot registers it (a part of a mapping, or all of one). */
export interface HostRange {
  readonly address: bigint;
  readonly length: number;
}

export interface MemorySlot {
  readonly slot: number;
  readonly guestAddress: number;
  readonly size: number;
  /** The host memory behind it: where it starts and how long it is. */
  readonly memory: HostRange;
  dirtyLogging: boolean;
  /** Host memory the kernel writes the slot's dirty bitmap into (one bit per page, u64 words). */
  bitmap: Mapping | undefined;
}

export class KvmVm {
  readonly system: KvmSystem;
  readonly fd: number;
  readonly slots = new Map<number, MemorySlot>();
  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled: GET_DIRTY_LOG no longer re-protects, CLEAR_DIRTY_LOG does. */
  readonly manualDirtyProtect: boolean;
  /** Bytes of a vCPU's XSAVE area (KVM_CAP_XSAVE2 when the kernel reports more than 4096). */
  readonly xsaveSize: number;
  private closed = false;

  constructor(system: KvmSystem, fd: number) {
    this.system = system;
    this.fd = fd;
    try {
      ioctlInt(fd, K.KVM_SET_TSS_ADDR, KVM_TSS_ADDRESS, 'KVM_SET_TSS_ADDR');
      // SAFETY: the kernel reads one u64 (the address) from this 8-byte buffer.
      const identity = new Uint8Array(8);
      new DataView(identity.buffer).setBigUint64(0, BigInt(KVM_IDENTITY_MAP_ADDRESS), true);
      ioctlPtr(fd, K.KVM_SET_IDENTITY_MAP_ADDR, identity, 'KVM_SET_IDENTITY_MAP_ADDR');
      this.manualDirtyProtect = this.enableManualDirtyProtect();
      this.xsaveSize = Math.max(K.SIZEOF.kvm_xsave, this.checkExtension(K.KVM_CAP_XSAVE2));
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  /** KVM_CHECK_EXTENSION on the VM fd: per-VM answers where they differ from the system's. */
  checkExtension(cap: number): number {
    return ioctlInt(this.fd, K.KVM_CHECK_EXTENSION, cap, `KVM_CHECK_EXTENSION(${cap}) on the VM`);
  }

  private enableManualDirtyProtect(): boolean {
    const supported = this.checkExtension(K.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if ((supported & K.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) === 0) return false;
    // Without KVM_DIRTY_LOG_INITIALLY_SET: turning logging on write-protects every page
    // at once, so the first fetch reports exactly the pages written since start().
    const cap = encodeEnableCap(K.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, [BigInt(K.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)]);
    ioctlPtr(this.fd, K.KVM_ENABLE_CAP, cap, 'KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)');
    return true;
  }

  /**
   * Register host memory as guest-physical [guestAddress, guestAddress + size).
   * SAFETY: `memory` must stay mapped for as long as the slot exists (until close()).
   */
  addMemorySlot(slot: number, guestAddress: number, memory: HostRange): MemorySlot {
    if (this.slots.has(slot)) throw new RangeError(`KVM memory slot ${slot} is already in use`);
    if (guestAddress % PAGE_SIZE !== 0 || memory.length % PAGE_SIZE !== 0) {
      throw new RangeError(`KVM memory slot ${slot}: guest address 0x${guestAddress.toString(16)} and size ${memory.length} must be page-aligned`);
    }
    const entry: MemorySlot = { slot, guestAddress, size: memory.length, memory, dirtyLogging: false, bitmap: undefined };
    this.setRegion(entry, 0);
    this.slots.set(slot, entry);
    return entry;
  }

  private setRegion(entry: MemorySlot, flags: number): void {
    const region = encodeMemoryRegion({
      slot: entry.slot, flags, guestPhysAddr: BigInt(entry.guestAddress), memorySize: BigInt(entry.size), userspaceAddr: entry.memory.address,
    });
    ioctlPtr(this.fd, K.KVM_SET_USER_MEMORY_REGION, region, `KVM_SET_USER_MEMORY_REGION(slot ${entry.slot}, flags ${flags})`);
  }

  private slot(slot: number): MemorySlot {
    const entry = this.slots.get(slot);
    if (!entry) throw new RangeError(`KVM memory slot ${slot} does not exist`);
    return entry;
  }

  /** Turn KVM_MEM_LOG_DIRTY_PAGES on or off for one slot (re-registers it with the new flags). */
  setDirtyLogging(slot: number, enabled: boolean): void {
    const entry = this.slot(slot);
    if (entry.dirtyLogging === enabled) return;
    this.setRegion(entry, enabled ? K.KVM_MEM_LOG_DIRTY_PAGES : 0);
    entry.dirtyLogging = enabled;
    if (enabled && !entry.bitmap) {
      // The kernel writes whole u64 words: ALIGN(pages, 64) / 8 bytes, rounded up to a page by mmap.
      const pages = entry.size / PAGE_SIZE;
      const bytes = Math.ceil(pages / 64) * 8;
      entry.bitmap = mmapAnonymous(Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE);
    }
  }

  /**
   * Pages of `slot` written since logging began or the previous fetch, as a fresh
   * bitmap (bit i of word i>>5 = page i); the log is reset for those pages.
   */
  fetchDirtyLog(slot: number): Uint32Array {
    const entry = this.slot(slot);
    if (!entry.dirtyLogging || !entry.bitmap) throw new RangeError(`KVM memory slot ${slot} is not logging dirty pages`);
    const pages = entry.size / PAGE_SIZE;
    const words64 = Math.ceil(pages / 64);
    const bitmap = entry.bitmap;
    // SAFETY: the kernel writes words64 * 8 bytes at bitmap.address, inside the mapping.
    ioctlPtr(this.fd, K.KVM_GET_DIRTY_LOG, encodeDirtyLog(slot, bitmap.address), `KVM_GET_DIRTY_LOG(slot ${slot})`);
    if (this.manualDirtyProtect) {
      // Re-protect exactly the pages reported, over the whole slot (first_page 0, a
      // multiple of 64; num_pages may end unaligned only at the slot's end, as here).
      ioctlPtr(this.fd, K.KVM_CLEAR_DIRTY_LOG, encodeClearDirtyLog(slot, 0n, pages, bitmap.address), `KVM_CLEAR_DIRTY_LOG(slot ${slot})`);
    }
    // Little-endian u64 words read as u32 words give the same bit numbering; copy,
    // because the next fetch overwrites the kernel's buffer.
    const out = new Uint32Array(words64 * 2);
    new Uint8Array(out.buffer).set(bitmap.bytes.subarray(0, words64 * 8));
    return out.subarray(0, Math.ceil(pages / 32));
  }

  createVcpu(id: number): KvmVcpu {
    const fd = ioctlInt(this.fd, K.KVM_CREATE_VCPU, id, `KVM_CREATE_VCPU(${id})`);
    return new KvmVcpu(this, id, fd);
  }

  /** Close the VM fd and unmap the dirty bitmaps. Guest RAM mappings belong to the caller. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const entry of this.slots.values()) {
      if (entry.bitmap) munmap(entry.bitmap);
      entry.bitmap = undefined;
    }
    closeFd(this.fd);
  }
}
