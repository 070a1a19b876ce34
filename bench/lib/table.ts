// The figures of a benchmark's table cell: the median of the runs with their range, and
// the units the tables print.

/** The median of the finite values (NaN when there are none). */
export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** "median [min–max]" of the finite values, each through `f`; "—" when there are none. */
export function span(xs: readonly number[], f: (x: number) => string): string {
  const finite = xs.filter((x) => Number.isFinite(x));
  return finite.length === 0 ? '—' : `${f(median(finite))} [${f(Math.min(...finite))}–${f(Math.max(...finite))}]`;
}

export const ms = (x: number): string => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`);
export const mb = (x: number): string => `${(x / 1e6).toFixed(1)} MB`;
export const count = (x: number): string => String(Math.round(x));
