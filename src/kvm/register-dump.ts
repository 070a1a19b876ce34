// A crash report's register dump: the general registers, segments, descriptor tables
// and control registers of a stopped vCPU, laid out like QEMU's `info registers`.

import { REG_NAMES, SEGMENT_NAMES } from './structs.js';
import type { KvmRegs, KvmSegment, KvmSregs } from './structs.js';

const hex = (v: bigint, width = 16): string => v.toString(16).padStart(width, '0');

function segment(name: string, s: KvmSegment): string {
  return `${name.toUpperCase().padEnd(3)}=${hex(BigInt(s.selector), 4)} ${hex(s.base)} ${hex(BigInt(s.limit), 8)} ` +
    `type=${s.type} p=${s.present} dpl=${s.dpl} db=${s.db} s=${s.s} l=${s.l} g=${s.g}${s.unusable ? ' unusable' : ''}`;
}

export function formatRegisterDump(regs: KvmRegs, sregs: KvmSregs): string {
  const lines: string[] = [];
  for (let i = 0; i < REG_NAMES.length; i += 4) {
    lines.push(REG_NAMES.slice(i, i + 4).map((n) => `${n.toUpperCase().padEnd(6)}=${hex(regs[n])}`).join(' '));
  }
  for (const name of SEGMENT_NAMES) lines.push(segment(name, sregs[name]));
  lines.push(`GDT=    ${hex(sregs.gdt.base)} ${hex(BigInt(sregs.gdt.limit), 8)}`);
  lines.push(`IDT=    ${hex(sregs.idt.base)} ${hex(BigInt(sregs.idt.limit), 8)}`);
  lines.push(`CR0=${hex(sregs.cr0, 8)} CR2=${hex(sregs.cr2)} CR3=${hex(sregs.cr3)} CR4=${hex(sregs.cr4, 8)}`);
  lines.push(`EFER=${hex(sregs.efer)} APIC_BASE=${hex(sregs.apic_base)} CR8=${hex(sregs.cr8)}`);
  return lines.join('\n');
}
