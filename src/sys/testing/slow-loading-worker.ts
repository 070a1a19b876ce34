// A worker for tests of src/sys/early-worker.ts: it takes ~300 ms to "load" (as a vCPU
// worker takes to load koffi on a slow machine) before it asks for its data.
import { workerInput } from '../early-worker.js';

const LOAD_MS = 300; // early-worker.test.ts counts on it

const until = Date.now() + LOAD_MS;
while (Date.now() < until) {
  // loading
}
await workerInput<unknown>();
