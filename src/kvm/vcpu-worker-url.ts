// Where the vCPU worker's module is, apart from vcpu-thread.ts so that the entry point can
// prestart vCPU 0's worker (src/sys/early-worker.ts) without loading the KVM code itself.

export const VCPU_WORKER_URL = new URL('./vcpu-worker.js', import.meta.url);

/** The name of vCPU `id`'s thread. */
export function vcpuThreadName(id: number): string {
  return `vcpu ${id}`;
}
