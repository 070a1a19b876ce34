// Where the built-in guests keep things in guest-physical memory. The kvm guest (real
// code) and the sim workload (a model) share this layout, so the same checks — the
// per-page counters and the pass number — work on both.

/** Page tables, GDT, parameters, code and stack all sit below this; sweeps start here. */
export const SWEEP_DEFAULT_FROM = 0x100000;

export const GDT_ADDR = 0x1000;
/** PML4 at 0x2000, one PDPT at 0x3000, four page directories (2 MiB pages, 4 GiB) at 0x4000..0x7fff. */
export const PML4_ADDR = 0x2000;
export const PDPT_ADDR = 0x3000;
export const PD_ADDR = 0x4000;
export const PD_COUNT = 4;

/** The parameter block the VMM writes before boot and the guest updates. */
export const PARAMS_ADDR = 0x9000;
export const PARAMS_MAGIC = 0x59525246; // "FRRY" little-endian
export const PARAM_MAGIC_OFFSET = 0; // u32
export const PARAM_MODE_OFFSET = 4; // u32: GUEST_MODE_*
export const PARAM_FROM_OFFSET = 8; // u64: first byte swept
export const PARAM_TO_OFFSET = 16; // u64: end of the sweep (exclusive)
export const PARAM_PASS_OFFSET = 24; // u64: completed passes, written by the guest
export const PARAM_REPORT_EVERY_OFFSET = 32; // u32: print the pass number every N passes

export const GUEST_MODE_SWEEP = 1;
export const GUEST_MODE_IDLE = 2;

/** Guest code is loaded here and entered in 64-bit mode. */
export const CODE_ADDR = 0x10000;
export const CODE_MAX = 0x60000;
/** Initial stack pointer (grows down). */
export const STACK_TOP = 0x80000;

/** Each swept page holds a little-endian u32 counter at this offset. */
export const PAGE_COUNTER_OFFSET = 0;
