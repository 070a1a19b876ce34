// /dev/kvm's ioctl numbers, capabilities and exit reasons, derived the way <linux/kvm.h>
// derives them (_IO/_IOR/_IOW/_IOWR over KVMIO 0xAE and the struct sizes of x86_64);
// ioctls.test.ts checks every number against the kernel header's own values.

const IOC_NRBITS = 8;
const IOC_TYPEBITS = 8;
const IOC_SIZEBITS = 14;
const IOC_NRSHIFT = 0;
const IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

const KVMIO = 0xae;

function ioc(dir: number, type: number, nr: number, size: number): number {
  if (size >= 1 << IOC_SIZEBITS) throw new RangeError(`ioctl size ${size} does not fit in ${IOC_SIZEBITS} bits`);
  // `>>> 0` keeps the number unsigned: the direction bits reach bit 31.
  return ((dir << IOC_DIRSHIFT) | (type << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) | (size << IOC_SIZESHIFT)) >>> 0;
}
const io = (nr: number): number => ioc(IOC_NONE, KVMIO, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, KVMIO, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, KVMIO, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, KVMIO, nr, size);

/** sizeof() of the x86_64 structs the ioctl numbers encode (golden-checked in structs.test.ts). */
export const SIZEOF = {
  kvm_regs: 144,
  kvm_segment: 24,
  kvm_dtable: 16,
  kvm_sregs: 312,
  kvm_fpu: 416,
  kvm_xsave: 4096,
  kvm_xcr: 16,
  kvm_xcrs: 392,
  kvm_msrs: 8,
  kvm_msr_entry: 16,
  kvm_msr_list: 4,
  kvm_vcpu_events: 64,
  kvm_mp_state: 4,
  kvm_lapic_state: 1024,
  kvm_debugregs: 128,
  kvm_userspace_memory_region: 32,
  kvm_dirty_log: 16,
  kvm_clear_dirty_log: 24,
  kvm_cpuid2: 8,
  kvm_cpuid_entry2: 40,
  kvm_enable_cap: 104,
} as const;

// System ioctls (on the /dev/kvm fd).
export const KVM_GET_API_VERSION = io(0x00);
export const KVM_CREATE_VM = io(0x01);
export const KVM_GET_MSR_INDEX_LIST = iowr(0x02, SIZEOF.kvm_msr_list);
export const KVM_CHECK_EXTENSION = io(0x03);
export const KVM_GET_VCPU_MMAP_SIZE = io(0x04);
export const KVM_GET_SUPPORTED_CPUID = iowr(0x05, SIZEOF.kvm_cpuid2);

// VM ioctls.
export const KVM_CREATE_VCPU = io(0x41);
export const KVM_GET_DIRTY_LOG = iow(0x42, SIZEOF.kvm_dirty_log);
export const KVM_SET_USER_MEMORY_REGION = iow(0x46, SIZEOF.kvm_userspace_memory_region);
export const KVM_SET_TSS_ADDR = io(0x47);
export const KVM_SET_IDENTITY_MAP_ADDR = iow(0x48, 8);
export const KVM_ENABLE_CAP = iow(0xa3, SIZEOF.kvm_enable_cap);
export const KVM_CLEAR_DIRTY_LOG = iowr(0xc0, SIZEOF.kvm_clear_dirty_log);

// vCPU ioctls.
export const KVM_RUN = io(0x80);
export const KVM_GET_REGS = ior(0x81, SIZEOF.kvm_regs);
export const KVM_SET_REGS = iow(0x82, SIZEOF.kvm_regs);
export const KVM_GET_SREGS = ior(0x83, SIZEOF.kvm_sregs);
export const KVM_SET_SREGS = iow(0x84, SIZEOF.kvm_sregs);
export const KVM_GET_MSRS = iowr(0x88, SIZEOF.kvm_msrs);
export const KVM_SET_MSRS = iow(0x89, SIZEOF.kvm_msrs);
export const KVM_GET_FPU = ior(0x8c, SIZEOF.kvm_fpu);
export const KVM_SET_FPU = iow(0x8d, SIZEOF.kvm_fpu);
export const KVM_GET_LAPIC = ior(0x8e, SIZEOF.kvm_lapic_state);
export const KVM_SET_LAPIC = iow(0x8f, SIZEOF.kvm_lapic_state);
export const KVM_SET_CPUID2 = iow(0x90, SIZEOF.kvm_cpuid2);
export const KVM_GET_CPUID2 = iowr(0x91, SIZEOF.kvm_cpuid2);
export const KVM_GET_MP_STATE = ior(0x98, SIZEOF.kvm_mp_state);
export const KVM_SET_MP_STATE = iow(0x99, SIZEOF.kvm_mp_state);
export const KVM_GET_VCPU_EVENTS = ior(0x9f, SIZEOF.kvm_vcpu_events);
export const KVM_SET_VCPU_EVENTS = iow(0xa0, SIZEOF.kvm_vcpu_events);
export const KVM_GET_DEBUGREGS = ior(0xa1, SIZEOF.kvm_debugregs);
export const KVM_SET_DEBUGREGS = iow(0xa2, SIZEOF.kvm_debugregs);
export const KVM_GET_XSAVE = ior(0xa4, SIZEOF.kvm_xsave);
export const KVM_SET_XSAVE = iow(0xa5, SIZEOF.kvm_xsave);
export const KVM_GET_XCRS = ior(0xa6, SIZEOF.kvm_xcrs);
export const KVM_SET_XCRS = iow(0xa7, SIZEOF.kvm_xcrs);
/** The size in the number is sizeof(struct kvm_xsave); the real size is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2). */
export const KVM_GET_XSAVE2 = ior(0xcf, SIZEOF.kvm_xsave);

export const KVM_API_VERSION = 12;

// Capabilities (KVM_CHECK_EXTENSION arguments).
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_MP_STATE = 14;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_DEBUGREGS = 50;
export const KVM_CAP_XSAVE = 55;
export const KVM_CAP_XCRS = 56;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
export const KVM_CAP_XSAVE2 = 208;

export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;
export const KVM_DIRTY_LOG_INITIALLY_SET = 2;
export const KVM_MEM_LOG_DIRTY_PAGES = 1;

// kvm_run.exit_reason values.
export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_HALTED = 3;

export const KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1;
export const KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2;
export const KVM_VCPUEVENT_VALID_SHADOW = 0x4;
export const KVM_VCPUEVENT_VALID_SMM = 0x8;
/** The exception payload fields are valid (only with KVM_CAP_EXCEPTION_PAYLOAD enabled). */
export const KVM_VCPUEVENT_VALID_PAYLOAD = 0x10;

const EXIT_NAMES: Record<number, string> = {
  [KVM_EXIT_UNKNOWN]: 'KVM_EXIT_UNKNOWN',
  [KVM_EXIT_EXCEPTION]: 'KVM_EXIT_EXCEPTION',
  [KVM_EXIT_IO]: 'KVM_EXIT_IO',
  [KVM_EXIT_HLT]: 'KVM_EXIT_HLT',
  [KVM_EXIT_MMIO]: 'KVM_EXIT_MMIO',
  [KVM_EXIT_SHUTDOWN]: 'KVM_EXIT_SHUTDOWN',
  [KVM_EXIT_FAIL_ENTRY]: 'KVM_EXIT_FAIL_ENTRY',
  [KVM_EXIT_INTR]: 'KVM_EXIT_INTR',
  [KVM_EXIT_INTERNAL_ERROR]: 'KVM_EXIT_INTERNAL_ERROR',
  [KVM_EXIT_SYSTEM_EVENT]: 'KVM_EXIT_SYSTEM_EVENT',
};

export function exitReasonName(reason: number): string {
  return EXIT_NAMES[reason] ?? `exit reason ${reason}`;
}
