// The viewer in a real browser (headless Chromium through playwright-core),
// checked against the CLI: run by scripts/browser-test.sh, which starts
// `mmsb serve` and passes:
//
//   node browser-test.mjs URL STATE_DIR MMSB_BIN WRITER_BIN OUT_DIR
//
// Moves the slider to several commits and compares the state hash shown
// with `mmsb replay --to LSN`'s; checks typed fields, provenance and a
// comparison; commits from another process and waits for the live tail to
// show it; saves a screenshot and the page's timings under OUT_DIR.
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

const [url, dir, mmsb, writer, out] = process.argv.slice(2);
const require = createRequire(path.join(out, 'package.json'));
const { chromium } = require('playwright-core');

function fail(msg) {
  console.error(`browser-test: FAIL: ${msg}`);
  process.exitCode = 1;
  throw new Error(msg);
}

function cliHash(args) {
  const text = execFileSync(mmsb, ['replay', dir, ...args], { encoding: 'utf8' });
  const m = text.match(/state hash: ([0-9a-f]{32})\s*$/);
  if (!m) fail(`no state hash in mmsb replay's output: ${text}`);
  return m[1];
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let checks = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 400 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 60000 });
  const loadMs = Date.now() - t0;

  const shown = async () => ({
    lsn: Number(await page.textContent('#lsn')),
    hash: (await page.textContent('#state-hash')).trim(),
  });

  // Opens at the end of the log.
  const end = await shown();
  if (!/^[0-9a-f]{32}$/.test(end.hash)) fail(`the hash shown is not 32 hex digits: ${end.hash}`);
  if (end.hash !== cliHash([])) fail(`end of log: browser ${end.hash}, mmsb replay ${cliHash([])}`);
  checks++;

  // The slider at several commits.
  const max = Number(await page.getAttribute('#slider', 'max'));
  const picks = [...new Set([0, 1, Math.floor(max / 3), Math.floor(max / 2), max - 1, max])].filter((i) => i >= 0 && i <= max);
  for (const i of picks) {
    await page.evaluate((v) => {
      const s = document.getElementById('slider');
      s.value = String(v);
      s.dispatchEvent(new Event('input'));
    }, i);
    const s = await shown();
    const want = cliHash(['--to', String(s.lsn)]);
    if (s.hash !== want) fail(`slider ${i} (LSN ${s.lsn}): browser ${s.hash}, mmsb replay --to ${s.lsn} ${want}`);
    console.log(`browser-test: slider ${i}/${max}: LSN ${s.lsn} hash ${s.hash} = mmsb replay --to ${s.lsn}`);
    checks++;
  }

  // Compare the middle of the history with the end; look at a typed page
  // and at the derived page's provenance.
  await page.evaluate((v) => {
    const s = document.getElementById('slider');
    s.value = String(v);
    s.dispatchEvent(new Event('input'));
  }, Math.floor(max / 2));
  await page.click('#compare');
  await page.evaluate((v) => {
    const s = document.getElementById('slider');
    s.value = String(v);
    s.dispatchEvent(new Event('input'));
  }, max);
  const changed = await page.$$eval('#page-rows td.changed', (tds) => tds.length);
  if (changed === 0) fail('comparing two points marks no page changed');
  checks++;
  await page.click('#page-rows tr:has(td:text-is("total"))');
  const prov = await page.textContent('#prov');
  if (!prov.includes('total v1') || !prov.includes('user write')) fail(`provenance of the derived page: ${prov}`);
  checks++;
  await page.click('#page-rows tr:has(td:text-is("particles"))');
  await page.waitForSelector('#typed table');
  const typedHead = await page.textContent('#typed table tr');
  if (!typedHead.includes('pos') || !typedHead.includes('mass')) fail(`typed fields: ${typedHead}`);
  const marked = await page.$$eval('#hex .d', (s) => s.length);
  if (marked === 0) fail('no byte of the particles page is highlighted as changed');
  checks++;

  // A commit made by another process after the page loaded reaches it.
  const before = await shown();
  const wrote = execFileSync(writer, [dir, '1', '--append'], { encoding: 'utf8' });
  const newLsn = Number(wrote.match(/LSN (\d+)/)[1]);
  if (!(newLsn > before.lsn)) fail(`the writer's LSN ${newLsn} is not past ${before.lsn}`);
  await page.waitForFunction((l) => Number(document.body.dataset.tailLsn || 0) >= l, newLsn, { timeout: 20000 });
  await page.waitForFunction((l) => Number(document.getElementById('lsn').textContent) >= l, newLsn, { timeout: 20000 });
  const live = await shown();
  if (live.hash !== cliHash([])) fail(`after the live commit: browser ${live.hash}, mmsb replay ${cliHash([])}`);
  const status = await page.textContent('#tail-status');
  const m = status.match(/(\d+) new commits since the page loaded/);
  if (!m || Number(m[1]) < 1) fail(`live tail status: ${status}`);
  console.log(`browser-test: live tail showed LSN ${live.lsn} (written after the page loaded); hash ${live.hash}`);
  checks++;

  // Offline: the same directory picked from the local disk, no server data.
  const disk = await browser.newPage();
  disk.on('pageerror', (e) => errors.push(String(e)));
  await disk.goto(url);
  await disk.waitForSelector('body[data-ready="1"]', { timeout: 60000 });
  await disk.evaluate(() => { delete document.body.dataset.ready; });
  await disk.setInputFiles('#pick', dir);
  await disk.waitForSelector('body[data-ready="1"]', { timeout: 60000 });
  const source = await disk.textContent('#source');
  if (!source.includes('from disk')) fail(`the picked directory was not loaded: ${source}`);
  const fromDisk = (await disk.textContent('#state-hash')).trim();
  if (fromDisk !== cliHash([])) fail(`directory from disk: browser ${fromDisk}, mmsb replay ${cliHash([])}`);
  console.log(`browser-test: the directory picked from disk replays to ${fromDisk} = mmsb replay`);
  checks++;
  await disk.close();

  await page.screenshot({ path: path.join(out, 'viewer.png'), fullPage: true });
  const timings = await page.evaluate(() => window.mmsbTimings);
  // Replay of the whole log but its last commit in the page (the end
  // itself comes with the timeline), for docs/BENCHMARKS.md.
  const bench = await page.evaluate((to) => {
    const ms = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      window.mmsbViewer.gotoLsn(to);
      ms.push(performance.now() - t);
    }
    ms.sort((a, b) => a - b);
    return ms[2];
  }, live.lsn - 1);
  const version = browser.version();
  writeFileSync(path.join(out, 'timings.json'), JSON.stringify({ chromium: version, loadMs, replayEndMs: bench, ...timings }, null, 2));
  console.log(`browser-test: Chromium ${version}; page load to first state ${timings.firstStateMs.toFixed(0)} ms; replay to LSN ${live.lsn - 1} ${bench.toFixed(2)} ms`);
  if (errors.length) fail(`errors in the page: ${errors.join('; ')}`);
  console.log(`browser-test: ${checks} checks passed; screenshot ${path.join(out, 'viewer.png')}`);
} finally {
  await browser.close();
}
