// `ferry demo`: placeholder replaced below once the pieces are wired.
export async function demoCommand(_opts: unknown): Promise<number> {
  return 1;
}
