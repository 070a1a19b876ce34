// The HTML reports as a person sees them: opened in headless Chromium (Debian's package,
// driven by playwright-core) with no network, every chart drawn with the right number of
// points and bars, no console errors; a PNG of each page goes to test-artifacts/.
// Skips only when /usr/bin/chromium is absent (apt-get install chromium).

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FERRY_MAIN, FerryProcess } from '../src/cli/ferry-process.js';
import { renderBenchReport } from '../src/report/bench-report.js';
import { renderMigrationReport } from '../src/report/migration-report.js';
import { sampleBenchResults, sampleRecord } from '../src/report/testing/sample-records.js';

const CHROMIUM = '/usr/bin/chromium';

// The callbacks below run inside the page; the project compiles without the DOM library,
// so this names the little of it they use.
interface PageElement {
  readonly id: string;
  getAttribute(name: string): string | null;
  setAttribute(name: string, value: string): void;
  querySelectorAll(selector: string): ArrayLike<PageElement>;
  getBoundingClientRect(): { width: number; height: number };
}
declare const document: { querySelectorAll(selector: string): ArrayLike<PageElement> & Iterable<PageElement> };
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));

interface ChartFacts {
  readonly id: string;
  readonly kind: string;
  readonly declared: number;
  readonly points: number;
  readonly bars: number;
  readonly missing: number;
  readonly width: number;
  readonly height: number;
}

interface PageFacts {
  readonly charts: ChartFacts[];
  readonly consoleErrors: string[];
  readonly requests: string[];
}

/** Open `html` from a file in a fresh Chromium profile, gather what each chart drew, and screenshot it. */
async function inspect(t: TestContext, html: string, name: string): Promise<PageFacts | undefined> {
  if (!existsSync(CHROMIUM)) {
    t.skip(`needs ${CHROMIUM} (apt-get install chromium)`);
    return undefined;
  }
  const { chromium } = await import('playwright-core');
  const dir = mkdtempSync(join(tmpdir(), 'ferry-report-chromium-'));
  const file = join(dir, `${name}.html`);
  writeFileSync(file, html);
  const context = await chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1500, height: 1000 },
    timeout: 60_000,
  });
  try {
    const page = await context.newPage();
    const consoleErrors: string[] = [];
    const requests: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(message.text());
    });
    page.on('pageerror', (error) => consoleErrors.push(error.message));
    page.on('request', (request) => {
      if (!request.url().startsWith('file:')) requests.push(request.url());
    });
    await page.goto(pathToFileURL(file).href, { waitUntil: 'load', timeout: 60_000 });
    // Open every <details> so the screenshot shows the per-case charts too.
    await page.evaluate(() => {
      for (const d of document.querySelectorAll('details')) d.setAttribute('open', '');
    });
    const charts = await page.evaluate(() =>
      [...document.querySelectorAll('svg.chart')].map((svg) => {
        const box = svg.getBoundingClientRect();
        return {
          id: svg.id,
          kind: svg.getAttribute('data-kind') ?? '',
          declared: Number(svg.getAttribute('data-points')),
          points: svg.querySelectorAll('circle.point').length,
          bars: svg.querySelectorAll('rect.bar').length,
          missing: svg.querySelectorAll('rect.bar.missing').length,
          width: box.width,
          height: box.height,
        };
      }),
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    return { charts, consoleErrors, requests };
  } finally {
    await context.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function chart(facts: PageFacts, id: string): ChartFacts {
  const found = facts.charts.find((c) => c.id === id);
  assert.ok(found, `chart #${id} is on the page (have ${facts.charts.map((c) => c.id).join(', ')})`);
  assert.ok(found.width > 100 && found.height > 100, `chart #${id} is drawn at a visible size (${found.width}×${found.height})`);
  return found;
}

function assertClean(facts: PageFacts): void {
  assert.deepEqual(facts.consoleErrors, [], 'no console errors');
  assert.deepEqual(facts.requests, [], 'nothing fetched from the network');
  for (const c of facts.charts) {
    assert.equal(c.kind === 'line' ? c.points : c.bars, c.declared, `chart #${c.id} drew as many marks as it declares`);
  }
}

test('a migration report opens in Chromium with every chart drawn from the record', { timeout: 120_000 }, async (t) => {
  const record = sampleRecord();
  const facts = await inspect(t, renderMigrationReport(record), 'migration-report');
  if (!facts) return;
  assertClean(facts);
  // 8 samples: 7 throughput deltas; 8 points each of remaining and sent.
  assert.equal(chart(facts, 'run-throughput').points, 7);
  assert.equal(chart(facts, 'run-progress').points, 16);
  // 3 passes × (sent, zero, dirtied).
  assert.equal(chart(facts, 'run-passes').bars, 9);
  assert.equal(chart(facts, 'run-downtime').bars, 1);
  assert.equal(chart(facts, 'run-expected').points, 7);
});

test('the benchmark report shows Ferry vs QEMU per case, with a gap where a side did not converge', { timeout: 120_000 }, async (t) => {
  const results = sampleBenchResults();
  const facts = await inspect(t, renderBenchReport(results), 'bench-report');
  if (!facts) return;
  assertClean(facts);
  for (const metric of ['totalMs', 'downtimeMs', 'throughput', 'bytes']) {
    const c = chart(facts, `cmp-${metric}`);
    assert.equal(c.bars, 4, `${metric}: 2 cases × 2 sides`);
    assert.equal(c.missing, 1, `${metric}: Ferry did not converge in the second case`);
  }
  // Each case's representative run of each side is drawn in full (5 charts per run).
  assert.equal(facts.charts.filter((c) => /^cell\d-(ferry|qemu)-/.test(c.id)).length, 2 * 2 * 5);
});

test('ferry migrate --report writes a page that Chromium draws from the real run', { timeout: 180_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.skip(`needs ${CHROMIUM} (apt-get install chromium)`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-report-e2e-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const args = ['-m', '64M', '--accel', 'sim', '--guest', 'builtin:sweep,rate=100000'];
  const dest = await FerryProcess.start({ dir, name: 'dst', args: [...args, '--incoming', 'tcp:127.0.0.1:0'] });
  t.after(() => dest.quit());
  const source = await FerryProcess.start({ dir, name: 'src', args });
  t.after(() => source.quit());
  const uri = await dest.incomingAddress();
  const reportPath = join(dir, 'report.html');
  const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [FERRY_MAIN, 'migrate', '--qmp', source.qmpPath, uri, '--max-bandwidth', '0', '--no-progress', '--report', reportPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.once('exit', (code) => resolve({ code, stderr }));
  });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stderr, /Report written to/);
  const html = readFileSync(reportPath, 'utf8');
  assert.match(html, /accelerator <b>sim<\/b>/, 'the page says which accelerator ran the guest');
  assert.doesNotMatch(html, /<script[^>]+src=|<link[^>]+href=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'self-contained');
  const facts = await inspect(t, html, 'migrate-report-e2e');
  if (!facts) return;
  assertClean(facts);
  const throughput = chart(facts, 'run-throughput');
  const progress = chart(facts, 'run-progress');
  assert.ok(progress.points >= 2, `at least one sample per series (${progress.points})`);
  assert.equal(throughput.points, progress.points / 2 - 1, 'one throughput point between each two samples');
  assert.ok(chart(facts, 'run-passes').bars >= 3, 'at least one pass, three bars each');
  assert.equal(chart(facts, 'run-downtime').missing, 0, 'a completed run has a downtime bar');
});
