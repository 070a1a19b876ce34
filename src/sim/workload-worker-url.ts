// Where the sim's workload worker module is, apart from the accelerator: `ferry run`
// starts that worker as soon as the command line says the sim will be used
// (src/cli/main.ts), so it boots while the main thread loads the VMM's modules; the
// accelerator then takes it and sends it what it would otherwise have got as workerData
// (src/sys/early-worker.ts).

export const WORKLOAD_WORKER_URL = new URL('./workload-worker.js', import.meta.url);
export const WORKLOAD_WORKER_NAME = 'sim workload';
