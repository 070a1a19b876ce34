// Golden values printed by src/kvm/golden/kvm-golden.c from the kernel's <linux/kvm.h>
// (linux-libc-dev for 6.x, x86_64); a mismatch means a wrong number or struct size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k from './ioctls.js';

const GOLDEN_IOCTLS: Record<string, number> = {
  KVM_GET_API_VERSION: 0xae00,
  KVM_CREATE_VM: 0xae01,
  KVM_CHECK_EXTENSION: 0xae03,
  KVM_GET_VCPU_MMAP_SIZE: 0xae04,
  KVM_GET_SUPPORTED_CPUID: 0xc008ae05,
  KVM_GET_MSR_INDEX_LIST: 0xc004ae02,
  KVM_SET_TSS_ADDR: 0xae47,
  KVM_SET_IDENTITY_MAP_ADDR: 0x4008ae48,
  KVM_SET_USER_MEMORY_REGION: 0x4020ae46,
  KVM_GET_DIRTY_LOG: 0x4010ae42,
  KVM_CLEAR_DIRTY_LOG: 0xc018aec0,
  KVM_ENABLE_CAP: 0x4068aea3,
  KVM_CREATE_VCPU: 0xae41,
  KVM_RUN: 0xae80,
  KVM_GET_REGS: 0x8090ae81,
  KVM_SET_REGS: 0x4090ae82,
  KVM_GET_SREGS: 0x8138ae83,
  KVM_SET_SREGS: 0x4138ae84,
  KVM_GET_FPU: 0x81a0ae8c,
  KVM_SET_FPU: 0x41a0ae8d,
  KVM_GET_XSAVE: 0x9000aea4,
  KVM_GET_XSAVE2: 0x9000aecf,
  KVM_SET_XSAVE: 0x5000aea5,
  KVM_GET_XCRS: 0x8188aea6,
  KVM_SET_XCRS: 0x4188aea7,
  KVM_GET_MSRS: 0xc008ae88,
  KVM_SET_MSRS: 0x4008ae89,
  KVM_GET_VCPU_EVENTS: 0x8040ae9f,
  KVM_SET_VCPU_EVENTS: 0x4040aea0,
  KVM_GET_MP_STATE: 0x8004ae98,
  KVM_SET_MP_STATE: 0x4004ae99,
  KVM_SET_CPUID2: 0x4008ae90,
  KVM_GET_CPUID2: 0xc008ae91,
  KVM_GET_LAPIC: 0x8400ae8e,
  KVM_SET_LAPIC: 0x4400ae8f,
  KVM_GET_DEBUGREGS: 0x8080aea1,
  KVM_SET_DEBUGREGS: 0x4080aea2,
};

const GOLDEN_CONSTANTS: Record<string, number> = {
  KVM_CAP_USER_MEMORY: 0x3,
  KVM_CAP_SET_TSS_ADDR: 0x4,
  KVM_CAP_EXT_CPUID: 0x7,
  KVM_CAP_NR_MEMSLOTS: 0xa,
  KVM_CAP_MP_STATE: 0xe,
  KVM_CAP_SET_IDENTITY_MAP_ADDR: 0x25,
  KVM_CAP_VCPU_EVENTS: 0x29,
  KVM_CAP_XSAVE: 0x37,
  KVM_CAP_XCRS: 0x38,
  KVM_CAP_IMMEDIATE_EXIT: 0x88,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: 0xa8,
  KVM_CAP_XSAVE2: 0xd0,
  KVM_CAP_DEBUGREGS: 0x32,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: 0x1,
  KVM_DIRTY_LOG_INITIALLY_SET: 0x2,
  KVM_MEM_LOG_DIRTY_PAGES: 0x1,
  KVM_API_VERSION: 0xc,
  KVM_EXIT_UNKNOWN: 0x0,
  KVM_EXIT_EXCEPTION: 0x1,
  KVM_EXIT_IO: 0x2,
  KVM_EXIT_HLT: 0x5,
  KVM_EXIT_MMIO: 0x6,
  KVM_EXIT_SHUTDOWN: 0x8,
  KVM_EXIT_FAIL_ENTRY: 0x9,
  KVM_EXIT_INTR: 0xa,
  KVM_EXIT_INTERNAL_ERROR: 0x11,
  KVM_EXIT_SYSTEM_EVENT: 0x18,
  KVM_EXIT_IO_IN: 0x0,
  KVM_EXIT_IO_OUT: 0x1,
  KVM_MP_STATE_RUNNABLE: 0x0,
  KVM_MP_STATE_HALTED: 0x3,
  KVM_VCPUEVENT_VALID_NMI_PENDING: 0x1,
  KVM_VCPUEVENT_VALID_SIPI_VECTOR: 0x2,
  KVM_VCPUEVENT_VALID_SHADOW: 0x4,
  KVM_VCPUEVENT_VALID_SMM: 0x8,
  KVM_VCPUEVENT_VALID_PAYLOAD: 0x10,
};

const table = k as unknown as Record<string, unknown>;

test('every ioctl number equals the kernel header value', () => {
  for (const [name, golden] of Object.entries(GOLDEN_IOCTLS)) {
    assert.equal(table[name], golden, `${name}: 0x${Number(table[name]).toString(16)} != 0x${golden.toString(16)}`);
  }
});

test('capabilities, flags and exit reasons equal the kernel header values', () => {
  for (const [name, golden] of Object.entries(GOLDEN_CONSTANTS)) {
    assert.equal(table[name], golden, name);
  }
});

test('ioctl numbers are unsigned (direction bits reach bit 31)', () => {
  assert.ok(k.KVM_GET_REGS > 0x80000000);
  assert.ok(k.KVM_GET_SUPPORTED_CPUID > 0xc0000000);
});

test('exitReasonName names known reasons and numbers unknown ones', () => {
  assert.equal(k.exitReasonName(8), 'KVM_EXIT_SHUTDOWN');
  assert.equal(k.exitReasonName(999), 'exit reason 999');
});
