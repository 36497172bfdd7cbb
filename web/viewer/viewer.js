// The MMSB viewer. Every byte is decoded and replayed by the mmsb crate
// compiled to WebAssembly (mmsb_web); this file only fetches files, calls
// it and draws what it answers. docs/SERVE.md describes the HTTP API.
import init, { Viewer } from './mmsb_web.js';

const $ = (id) => document.getElementById(id);
const HEX_PAGE = 4096;
const SEGMENT = /^wal-[0-9a-f]{16}\.log$/;
const CHECKPOINT = /^ckpt-[0-9]{20}\.ckpt$/;

const ui = {
  viewer: null,
  points: [],          // [{lsn, time}]: the start, then every commit
  state: null,         // the state shown (StateView)
  compare: null,       // the compared state's LSN
  diff: new Map(),     // page id -> PageDiff
  page: null,          // selected page id
  hexAt: 0,
  tail: null,          // EventSource
  tailCommits: 0,
  syncing: Promise.resolve(),
  maxRange: 8 << 20,
};
window.mmsbTimings = {};

function fail(e) {
  $('error').textContent = String(e && e.message ? e.message : e);
}

async function fetchRange(name, from, to) {
  // Byte ranges of at most the server's maximum, in order.
  const parts = [];
  for (let at = from; at < to; ) {
    const end = Math.min(to, at + ui.maxRange);
    const r = await fetch(`/api/log/${encodeURIComponent(name)}`, { headers: { Range: `bytes=${at}-${end - 1}` } });
    if (r.status !== 206 && r.status !== 200) throw new Error(`${name}: HTTP ${r.status}`);
    const b = new Uint8Array(await r.arrayBuffer());
    if (b.length === 0) throw new Error(`${name}: empty range at ${at}`);
    parts.push(b);
    at += b.length;
  }
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

// Bring the files held up to the listing: new files whole, grown ones by
// their new bytes, vanished ones dropped. Returns whether anything changed.
async function syncFiles(files) {
  const v = ui.viewer;
  let changed = false;
  const listed = new Set(files.map((f) => f.name));
  for (const [name] of JSON.parse(v.files())) {
    if (!listed.has(name)) { v.removeFile(name); changed = true; }
  }
  for (const f of files) {
    const held = v.fileLen(f.name);
    if (held === f.bytes) continue;
    if (held < 0 || held > f.bytes) {
      v.setFile(f.name, await fetchRange(f.name, 0, f.bytes));
    } else {
      v.appendFile(f.name, held, await fetchRange(f.name, held, f.bytes));
    }
    changed = true;
  }
  return changed;
}

function readTimeline() {
  const t = JSON.parse(ui.viewer.timeline());
  ui.points = [t.start, ...t.commits];
  const s = $('slider');
  s.max = String(ui.points.length - 1);
  return t;
}

function fmtPoint(i) {
  const p = ui.points[i];
  return p ? `commit ${i} of ${ui.points.length - 1}: LSN ${p.lsn}, time ${p.time}` : '';
}

function show(state) {
  ui.state = state;
  $('lsn').textContent = String(state.lsn);
  $('time').textContent = String(state.time);
  $('state-hash').textContent = state.hash;
  $('npages').textContent = String(state.pages.length);
  $('nbytes').textContent = String(state.bytes);
  ui.diff = new Map();
  if (ui.compare !== null) {
    for (const d of JSON.parse(ui.viewer.diff())) ui.diff.set(d.id, d);
  }
  const rows = $('page-rows');
  rows.replaceChildren();
  const ids = new Set(state.pages.map((p) => p.id));
  for (const p of state.pages) {
    const tr = document.createElement('tr');
    tr.dataset.id = p.id;
    if (p.id === ui.page) tr.classList.add('sel');
    const d = ui.diff.get(p.id);
    const kind = p.derived ? `derived (${p.derived})` : p.layout ? 'typed' : '';
    for (const c of [p.id, p.name ?? '', p.len, p.epoch, p.location, kind]) {
      const td = document.createElement('td');
      td.textContent = String(c);
      tr.append(td);
    }
    const td = document.createElement('td');
    if (d && d.status !== 'same') {
      td.className = d.status;
      td.textContent = d.status === 'changed' ? `${d.bytes} B` : d.status;
    }
    tr.append(td);
    tr.onclick = () => { ui.page = p.id; ui.hexAt = 0; show(ui.state); };
    rows.append(tr);
  }
  for (const d of ui.diff.values()) {
    if (d.status === 'removed' && !ids.has(d.id)) {
      const tr = document.createElement('tr');
      tr.innerHTML = `<td>${d.id}</td><td colspan="5">(not present at this point)</td><td class="removed">removed</td>`;
      rows.append(tr);
    }
  }
  showPage();
  document.body.dataset.lsn = String(state.lsn);
}

function showPage() {
  const p = ui.state && ui.state.pages.find((q) => q.id === ui.page);
  if (!p) {
    $('detail-title').textContent = ui.page === null ? 'Select a page' : `Page ${ui.page} does not exist at this point`;
    for (const id of ['meta', 'typed', 'prov', 'hex', 'hex-at']) $(id).replaceChildren();
    return;
  }
  $('detail-title').textContent = `Page ${p.id}${p.name ? ` “${p.name}”` : ''}: ${p.len} bytes, epoch ${p.epoch}, ${p.location}`;
  $('meta').textContent = Object.entries(p.meta).map(([k, v]) => `${k} = ${v}`).join('; ');
  // Typed fields, where the metadata names a type.
  const typed = $('typed');
  typed.replaceChildren();
  if (p.layout) {
    try {
      const t = JSON.parse(ui.viewer.typed(p.id));
      const table = document.createElement('table');
      const head = document.createElement('tr');
      for (const h of ['offset', ...t.records[0].fields.map((f) => f[0])]) {
        const th = document.createElement('th'); th.textContent = h; head.append(th);
      }
      table.append(head);
      for (const r of t.records) {
        const tr = document.createElement('tr');
        for (const c of [r.offset, ...r.fields.map((f) => f[1])]) {
          const td = document.createElement('td'); td.textContent = String(c); tr.append(td);
        }
        table.append(tr);
      }
      const cap = document.createElement('div');
      cap.textContent = `${t.name}: ${t.records_in_page} records of ${t.size} bytes` +
        (t.records.length < t.records_in_page ? ` (first ${t.records.length} shown)` : '') +
        (t.trailing_bytes ? `, ${t.trailing_bytes} bytes after them` : '');
      typed.append(cap, table);
    } catch (e) {
      typed.textContent = `type ${p.layout}: ${e.message ?? e}`;
    }
  }
  // Provenance of a derived page's version.
  const prov = $('prov');
  prov.replaceChildren();
  if (p.derived) {
    try {
      const c = JSON.parse(ui.viewer.provenance(p.id));
      const pre = document.createElement('pre');
      pre.id = 'prov-text';
      pre.textContent = 'provenance:\n' + c.text;
      prov.append(pre);
    } catch (e) {
      prov.textContent = `provenance: ${e.message ?? e}`;
    }
  }
  // Hex, differing bytes highlighted.
  const at = Math.min(ui.hexAt, Math.max(0, p.len - 1));
  const bytes = ui.viewer.pageBytes(p.id, at, HEX_PAGE);
  const d = ui.diff.get(p.id);
  const marked = new Uint8Array(bytes.length);
  if (d && d.status === 'changed') {
    for (const [o, n] of d.ranges) {
      for (let i = Math.max(o, at); i < Math.min(o + n, at + bytes.length); i++) marked[i - at] = 1;
    }
  }
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    let line = (at + i).toString(16).padStart(8, '0') + '  ';
    let ascii = '';
    for (let j = i; j < Math.min(i + 16, bytes.length); j++) {
      const h = bytes[j].toString(16).padStart(2, '0');
      line += marked[j] ? `<span class="d">${h}</span> ` : `${h} `;
      const ch = bytes[j] >= 0x20 && bytes[j] < 0x7f ? String.fromCharCode(bytes[j]) : '.';
      ascii += ch.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;');
    }
    lines.push(line.padEnd(10 + 16 * 3) + ' ' + ascii);
  }
  $('hex').innerHTML = lines.join('\n');
  $('hex-at').textContent = `bytes ${at}–${at + bytes.length} of ${p.len}`;
}

function gotoIndex(i) {
  const p = ui.points[i];
  if (!p) return;
  $('slider').value = String(i);
  $('slider-label').textContent = fmtPoint(i);
  const t0 = performance.now();
  show(JSON.parse(ui.viewer.gotoLsn(p.lsn)));
  window.mmsbTimings.lastReplayMs = performance.now() - t0;
  $('error').textContent = '';
}

function atEnd() {
  return Number($('slider').value) === ui.points.length - 1;
}

async function loadFromServer() {
  const t0 = performance.now();
  const r = await fetch('/api/summary');
  if (!r.ok) throw new Error(`GET /api/summary: HTTP ${r.status}`);
  const s = await r.json();
  ui.maxRange = s.max_range || ui.maxRange;
  $('source').textContent = `${s.dir} (served by mmsb serve ${s.version})`;
  await syncFiles(s.files);
  window.mmsbTimings.fetchMs = performance.now() - t0;
  open();
  startTail();
}

// Show the history held: the end of the log by default.
function open() {
  const t0 = performance.now();
  const t = readTimeline();
  window.mmsbTimings.timelineMs = performance.now() - t0;
  gotoIndex(ui.points.length - 1);
  window.mmsbTimings.firstStateMs = performance.now();
  if (t.torn_bytes) $('error').textContent = `the log ends in a torn tail of ${t.torn_bytes} bytes (left out, as recovery leaves it out)`;
  document.body.dataset.ready = '1';
  showTimings();
}

function showTimings() {
  const m = window.mmsbTimings;
  const f = (x) => (x === undefined ? '–' : `${x.toFixed(1)} ms`);
  $('timings').textContent = `wasm init ${f(m.initMs)} · fetch ${f(m.fetchMs)} · timeline ${f(m.timelineMs)} · ` +
    `last replay ${f(m.lastReplayMs)} · first state shown ${f(m.firstStateMs)} after page load`;
}

function startTail() {
  if (ui.tail) ui.tail.close();
  const es = new EventSource('/api/tail');
  ui.tail = es;
  es.addEventListener('log', (ev) => {
    const snap = JSON.parse(ev.data);
    ui.syncing = ui.syncing.then(async () => {
      try {
        const follow = $('follow').checked && atEnd();
        const before = ui.points.length;
        if (!(await syncFiles(snap.files))) {
          $('tail-status').textContent = `live tail: connected; log ends at LSN ${snap.lsn}`;
          return;
        }
        const keep = Number($('slider').value);
        readTimeline();
        ui.tailCommits += Math.max(0, ui.points.length - before);
        const last = ui.points[ui.points.length - 1];
        $('tail-status').textContent =
          `live tail: connected; log ends at LSN ${last.lsn}; ${ui.tailCommits} new commits since the page loaded`;
        document.body.dataset.tailLsn = String(last.lsn);
        if (follow) gotoIndex(ui.points.length - 1);
        else gotoIndex(Math.min(keep, ui.points.length - 1));
      } catch (e) {
        fail(e);
      }
    });
  });
  es.onerror = () => { $('tail-status').textContent = 'live tail: disconnected (retrying)'; };
}

async function loadFromDisk(fileList) {
  // The picked directory (the state directory or its log/): segments and
  // checkpoints only.
  if (ui.tail) { ui.tail.close(); ui.tail = null; }
  $('tail-status').textContent = 'live tail: off (a directory from disk)';
  ui.viewer = new Viewer();
  window.mmsbViewer = ui.viewer;
  ui.compare = null;
  let n = 0;
  let root = '';
  for (const f of fileList) {
    const parts = f.webkitRelativePath.split('/');
    const name = parts[parts.length - 1];
    const inLog = parts.length < 2 || parts[parts.length - 2] === 'log' || parts.length === 2;
    if (!inLog || !(SEGMENT.test(name) || CHECKPOINT.test(name))) continue;
    ui.viewer.setFile(name, new Uint8Array(await f.arrayBuffer()));
    root = parts[0];
    n++;
  }
  if (n === 0) throw new Error('no log segments or checkpoints in the picked directory (pick the state directory or its log/)');
  $('source').textContent = `${root} (from disk, ${n} files)`;
  open();
}

async function main() {
  const t0 = performance.now();
  await init();
  window.mmsbTimings.initMs = performance.now() - t0;
  ui.viewer = new Viewer();
  window.mmsbViewer = ui.viewer;
  $('slider').addEventListener('input', () => { try { gotoIndex(Number($('slider').value)); } catch (e) { fail(e); } });
  $('prev').onclick = () => { try { gotoIndex(Math.max(0, Number($('slider').value) - 1)); } catch (e) { fail(e); } };
  $('next').onclick = () => { try { gotoIndex(Math.min(ui.points.length - 1, Number($('slider').value) + 1)); } catch (e) { fail(e); } };
  $('go-lsn').onchange = () => {
    // The last commit at or before the LSN asked for.
    const l = Number($('go-lsn').value);
    let i = 0;
    while (i + 1 < ui.points.length && ui.points[i + 1].lsn <= l) i++;
    try { gotoIndex(i); } catch (e) { fail(e); }
  };
  $('go-time').onchange = () => {
    try {
      const s = JSON.parse(ui.viewer.gotoTime(Number($('go-time').value)));
      const i = ui.points.findIndex((p) => p.lsn === s.lsn);
      if (i >= 0) { $('slider').value = String(i); $('slider-label').textContent = fmtPoint(i); }
      show(s);
    } catch (e) { fail(e); }
  };
  $('compare').onclick = () => {
    try {
      const s = JSON.parse(ui.viewer.compareLsn(ui.state.lsn));
      ui.compare = s.lsn;
      $('compare-label').textContent = `comparing with LSN ${s.lsn} (hash ${s.hash})`;
      $('uncompare').disabled = false;
      show(ui.state);
    } catch (e) { fail(e); }
  };
  $('uncompare').onclick = () => {
    ui.viewer.clearCompare();
    ui.compare = null;
    $('compare-label').textContent = '';
    $('uncompare').disabled = true;
    show(ui.state);
  };
  $('hex-prev').onclick = () => { ui.hexAt = Math.max(0, ui.hexAt - HEX_PAGE); showPage(); };
  $('hex-next').onclick = () => {
    const p = ui.state && ui.state.pages.find((q) => q.id === ui.page);
    if (p && ui.hexAt + HEX_PAGE < p.len) { ui.hexAt += HEX_PAGE; showPage(); }
  };
  $('pick').onchange = (ev) => loadFromDisk(ev.target.files).catch(fail);
  // Served by `mmsb serve`? Otherwise wait for a directory to be picked.
  let served = false;
  try { served = (await fetch('/api/summary', { method: 'HEAD' })).ok; } catch { served = false; }
  if (served) await loadFromServer();
  else $('source').textContent = 'no server: open a state directory from disk';
}

main().catch(fail);
