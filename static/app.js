/*
 * app.js — the kiln dashboard (plain JS, no build step, no dependencies).
 *
 * Talks to kilnd's /v1 API (server/openapi.json) with `Authorization: Bearer`;
 * the token lives in sessionStorage under "kiln.token" and never in a URL
 * (routes are hash fragments that carry only job ids). Views:
 *   #/           results: one server page of jobs (cursor paging, server-side
 *                filters), one FP32 baseline per model pinned on top, sort
 *                within the page, CSV/JSON export of what is shown,
 *                PSNR-vs-size plot across architectures (colour =
 *                architecture, marker shape = model within it) with the
 *                overall and per-architecture Pareto frontiers; polls while
 *                jobs are active;
 *   #/new        job form: preset, or a JSON config validated live by
 *                POST /v1/configs:validate;
 *   #/jobs/ID    detail: progress, cancel/retry, facts, per-image PSNR chart,
 *                artifact download, crops from GET /v1/jobs/ID/preview.
 * Everything server-provided is inserted as text (textContent / SVG text),
 * never as HTML. Every promise is caught: errors show in the page, and the
 * browser console stays clean (the browser test fails on console errors).
 */
'use strict';

(() => {
  const TOKEN_KEY = 'kiln.token';
  const POLL_MS = 1500;
  const PALETTE = ['#2f5fd0', '#d0572f', '#1b7f3b', '#8e3fc7', '#c7a02f', '#2fa8c7', '#c72f7a', '#5d6677'];
  // The architectures kiln names (kiln_model_arch) get fixed colours, so a
  // plot reads the same on every page; others take the rest of the palette.
  const ARCHS = { edsr: ['EDSR', 0], carn: ['CARN', 1], carn_m: ['CARN-M', 2], onnx: ['ONNX', 3] };
  const N_SHAPES = 6;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  const state = {
    models: new Map(),     // id -> model
    modelOrder: [],        // ids, oldest first: stable marker shapes
    archOrder: [],         // architectures not in ARCHS, for stable colours
    datasets: [],
    presets: {},
    cursors: [null],       // cursor of page i (null: first page)
    page: 0,
    nextCursor: null,
    rows: [],              // jobs of the current page
    baselines: [],         // pinned FP32 rows: {job, derived}
    sort: null,            // {key, dir}
    timer: null,
    hasPreview: null,      // the server's OpenAPI lists the preview route
    job: null,             // job shown in the detail view
    cropUrl: null,
    validateSeq: 0,
    metaLoaded: false,
  };

  // ---- API -----------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message, field, details) {
      super(message);
      this.status = status; this.code = code; this.field = field; this.details = details || [];
    }
  }

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Accept: 'application/json' }, extraHeaders || {});
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
    const res = await fetch(path, init);
    return handle(res);
  }

  async function handle(res) {
    const ct = res.headers.get('Content-Type') || '';
    let data = null;
    if (ct.includes('json')) { try { data = await res.json(); } catch (e) { data = null; } }
    if (!res.ok) {
      const e = (data && data.error) || {};
      const err = new ApiError(res.status, e.code || 'http_' + res.status, e.message || res.statusText, e.field, e.details);
      if (res.status === 401) signOut('Your token was not accepted: ' + err.message);
      throw err;
    }
    return data;
  }

  async function apiBlob(path) {
    const res = await fetch(path, { headers: { Authorization: 'Bearer ' + token() }, cache: 'no-store' });
    if (!res.ok) { await handle(res); }
    return res.blob();
  }

  function qs(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') u.set(k, v);
    const s = u.toString();
    return s ? '?' + s : '';
  }

  // ---- formatting ----------------------------------------------------------
  const fmt = {
    db: (v) => (typeof v === 'number' && isFinite(v) ? v.toFixed(2) : '—'),
    delta: (v) => (typeof v === 'number' && isFinite(v) ? (v > 0 ? '+' : '') + v.toFixed(3) : '—'),
    bytes(v) {
      if (typeof v !== 'number' || !isFinite(v)) return '—';
      if (v < 1024) return v + ' B';
      const u = ['KiB', 'MiB', 'GiB']; let x = v / 1024, i = 0;
      while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
      return x.toFixed(x < 10 ? 2 : 1) + ' ' + u[i];
    },
    ratio: (v) => (typeof v === 'number' && isFinite(v) && v > 0 ? v.toFixed(2) + '×' : '—'),
    secs(s) {
      if (typeof s !== 'number' || !isFinite(s) || s < 0) return '';
      if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
      if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
      return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
    },
    when(iso, short) {
      if (!iso) return '';
      const d = new Date(iso);
      if (isNaN(d)) return iso;
      const p = (n) => String(n).padStart(2, '0');
      const day = short && d.getFullYear() === new Date().getFullYear() ? '' : d.getFullYear() + '-';
      return `${day}${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
    },
  };

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function toast(msg) {
    const t = $('toast');
    t.textContent = msg; t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
  }

  // A job carries its model's name, arch and description (model_*); the
  // model list fills in for older servers.
  function modelName(id, j) {
    if (j && j.model_name) return j.model_name;
    const m = state.models.get(id); return m ? m.name : id;
  }
  function jobArch(j) {
    if (j.model_arch) return j.model_arch;
    const m = state.models.get(j.model); return (m && m.arch) || '';
  }
  function jobArchDescription(j) {
    if (j.model_description) return j.model_description;
    const m = state.models.get(j.model); return (m && m.description) || '';
  }
  const archLabel = (a) => (ARCHS[a] ? ARCHS[a][0] : a || '?');
  function archColour(a) {
    if (ARCHS[a]) return PALETTE[ARCHS[a][1]];
    let i = state.archOrder.indexOf(a);
    if (i < 0) { state.archOrder.push(a); i = state.archOrder.length - 1; }
    return PALETTE[(4 + i) % PALETTE.length];
  }
  function noteModel(id, arch) {
    if (!state.modelOrder.some((m) => m.id === id)) state.modelOrder.push({ id, arch });
  }
  // Marker shape of a model: its rank among the models of its architecture.
  function modelShape(id, arch) {
    noteModel(id, arch);
    const same = state.modelOrder.filter((m) => m.arch === arch);
    return same.findIndex((m) => m.id === id) % N_SHAPES;
  }
  // SVG path of marker `shape` (circle, square, triangle, diamond,
  // triangle down, hexagon) of radius r centred on (x, y).
  function markerPath(shape, x, y, r) {
    const f = (v) => v.toFixed(1);
    switch (shape) {
      case 1: { const a = r * 0.88; return `M${f(x - a)},${f(y - a)}h${f(2 * a)}v${f(2 * a)}h${f(-2 * a)}Z`; }
      case 2: { const a = r * 1.2; return `M${f(x)},${f(y - a)}L${f(x + a)},${f(y + a * 0.7)}L${f(x - a)},${f(y + a * 0.7)}Z`; }
      case 3: { const a = r * 1.25; return `M${f(x)},${f(y - a)}L${f(x + a)},${f(y)}L${f(x)},${f(y + a)}L${f(x - a)},${f(y)}Z`; }
      case 4: { const a = r * 1.2; return `M${f(x)},${f(y + a)}L${f(x + a)},${f(y - a * 0.7)}L${f(x - a)},${f(y - a * 0.7)}Z`; }
      case 5: {
        let d = '';
        for (let k = 0; k < 6; k++) {
          const t = Math.PI / 3 * k;
          d += (k ? 'L' : 'M') + f(x + r * 1.1 * Math.cos(t)) + ',' + f(y + r * 1.1 * Math.sin(t));
        }
        return d + 'Z';
      }
      default: return `M${f(x - r)},${f(y)}a${f(r)},${f(r)} 0 1,0 ${f(2 * r)},0a${f(r)},${f(r)} 0 1,0 ${f(-2 * r)},0Z`;
    }
  }
  // A small inline marker for the table and the legend.
  function markerIcon(id, arch) {
    const ic = svg('svg', { class: 'marker', width: 12, height: 12, viewBox: '0 0 12 12', 'aria-hidden': 'true' });
    ic.append(svg('path', { d: markerPath(modelShape(id, arch), 6, 6, 4.2), fill: archColour(arch) }));
    return ic;
  }
  function jobSeconds(j) {
    if (!j.started_at) return null;
    const end = j.finished_at ? Date.parse(j.finished_at) : Date.now();
    return (end - Date.parse(j.started_at)) / 1000;
  }
  const isActive = (j) => j.status === 'queued' || j.status === 'running';
  const isFinished = (j) => !isActive(j);

  // ---- session ---------------------------------------------------------------
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    stopPolling();
    state.metaLoaded = false;
    showView('signin');
    $('signin-error').textContent = message || '';
  }

  async function signIn(t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    try {
      const me = await api('GET', '/v1/me');
      $('who').textContent = `${me.user || ''} · ${me.team || ''}${me.admin ? ' (admin)' : ''}`;
      $('signin-error').textContent = '';
      return true;
    } catch (e) {
      if (e.status !== 401) signOut('Sign-in failed: ' + e.message);
      return false;
    }
  }

  async function loadMeta() {
    const [models, datasets, presets, doc] = await Promise.all([
      api('GET', '/v1/models'), api('GET', '/v1/datasets'), api('GET', '/v1/presets'),
      api('GET', '/v1/openapi.json').catch(() => null),
    ]);
    state.models = new Map(models.models.map((m) => [m.id, m]));
    for (const m of [...models.models].reverse()) noteModel(m.id, m.arch || ''); // oldest first: stable shapes
    const archs = [...new Set(models.models.map((m) => m.arch).filter(Boolean))].sort();
    state.datasets = datasets.datasets;
    state.presets = presets.presets || {};
    state.hasPreview = !!(doc && doc.paths && doc.paths['/v1/jobs/{id}/preview']);
    fillSelect($('f-model'), [['', 'any'], ...models.models.map((m) => [m.id, m.name])]);
    fillSelect($('f-arch'), [['', 'any'], ...archs.map((a) => [a, archLabel(a)])]);
    fillSelect($('f-dataset'), [['', 'any'], ...state.datasets.map((d) => [d.name, d.name])]);
    fillSelect($('f-recipe'), [['', 'any'], ...Object.keys(state.presets).map((p) => [p, p]), ['custom', 'custom']]);
    fillSelect($('j-model'), models.models.map((m) => [m.id, `${m.name} (${archLabel(m.arch)} x${m.scale || '?'}, ${fmt.bytes(m.bytes)})`]));
    fillSelect($('j-dataset'), state.datasets.map((d) => [d.name, `${d.name} (${d.images} images, ${d.source})`]));
    fillSelect($('j-preset'), Object.keys(state.presets).map((p) => [p, p]));
    if (state.presets.w8a8) $('j-preset').value = 'w8a8';
    state.metaLoaded = true;
  }

  function fillSelect(sel, options) {
    const keep = sel.value;
    sel.replaceChildren(...options.map(([v, label]) => el('option', { value: v, text: label })));
    if (options.some(([v]) => v === keep)) sel.value = keep;
  }

  // ---- routing ---------------------------------------------------------------
  function showView(name) {
    for (const v of ['signin', 'view-results', 'view-new', 'view-job']) $(v).hidden = v !== name;
    const signedIn = name !== 'signin';
    $('nav').hidden = !signedIn; $('signout').hidden = !signedIn;
    if (!signedIn) $('who').textContent = '';
    for (const a of document.querySelectorAll('[data-nav]'))
      a.classList.toggle('active', (a.dataset.nav === 'results' && name === 'view-results') ||
                                   (a.dataset.nav === 'new' && name === 'view-new'));
  }

  async function route() {
    stopPolling();
    if (!token()) { showView('signin'); $('token').focus(); return; }
    try {
      if (!state.metaLoaded) {
        if (!(await signIn(token()))) return;
        await loadMeta();
      }
      const h = location.hash || '#/';
      const m = h.match(/^#\/jobs\/([A-Za-z0-9_.-]+)$/);
      if (m) { showView('view-job'); await loadJob(m[1], true); }
      else if (h === '#/new') { showView('view-new'); validateNow(); }
      else { showView('view-results'); await loadPage(); }
    } catch (e) {
      if (e.status !== 401) toast('Error: ' + e.message);
    }
  }

  function stopPolling() { clearTimeout(state.timer); state.timer = null; }
  function poll(fn) { stopPolling(); state.timer = setTimeout(() => { fn().catch((e) => toast('Error: ' + e.message)); }, POLL_MS); }

  // ---- results -----------------------------------------------------------------
  function filters() {
    return { status: $('f-status').value, model: $('f-model').value, arch: $('f-arch').value,
             dataset: $('f-dataset').value, recipe: $('f-recipe').value };
  }

  function resetPaging() { state.cursors = [null]; state.page = 0; }

  async function loadPage() {
    const f = filters();
    const limit = Number($('f-limit').value) || 50;
    const page = await api('GET', '/v1/jobs' + qs(Object.assign({}, f, { limit, cursor: state.cursors[state.page] })));
    state.rows = page.jobs;
    state.nextCursor = page.next_cursor || null;
    await loadBaselines(f);
    renderResults();
    if (location.hash === '#/' || location.hash === '') {
      if (state.rows.some(isActive)) poll(loadPage);
    }
  }

  // The newest succeeded fp32 job of each model in view (one small request
  // per model, limit 1), or else an FP32 reference derived from a compressed
  // job's result (fp32_psnr_db / fp32_weight_bytes).
  async function loadBaselines(f) {
    let ids = f.model ? [f.model] : [...state.models.keys()];
    if (f.arch) ids = ids.filter((id) => (state.models.get(id) || {}).arch === f.arch);
    ids = ids.slice(0, 12);
    const found = await Promise.all(ids.map((id) =>
      api('GET', '/v1/jobs' + qs({ model: id, dataset: f.dataset, recipe: 'fp32', status: 'succeeded', limit: 1 }))
        .then((p) => p.jobs[0] || null).catch(() => null)));
    const out = [];
    ids.forEach((id, i) => {
      if (found[i]) { out.push({ job: found[i], derived: false }); return; }
      const src = state.rows.find((j) => j.model === id && j.result && typeof j.result.fp32_psnr_db === 'number');
      if (src) {
        out.push({ derived: true, job: {
          id: src.id, model: id, model_name: src.model_name, model_arch: src.model_arch,
          model_description: src.model_description, dataset: src.dataset, recipe: 'fp32 (reference)', status: 'succeeded',
          created_at: src.created_at, started_at: null, finished_at: null,
          result: { psnr_db: src.result.fp32_psnr_db, delta_db: 0, weight_bytes: src.result.fp32_weight_bytes, ratio: 1 },
        } });
      }
    });
    // Grouped by architecture, so the reference of each is easy to find.
    out.sort((a, b) => archLabel(jobArch(a.job)).localeCompare(archLabel(jobArch(b.job))));
    state.baselines = out;
  }

  const sortKeys = {
    model: (j) => modelName(j.model, j).toLowerCase(),
    arch: (j) => archLabel(jobArch(j)).toLowerCase(),
    dataset: (j) => (j.dataset || '').toLowerCase(),
    recipe: (j) => j.recipe || '',
    psnr: (j) => (j.result ? j.result.psnr_db : null),
    delta: (j) => (j.result ? j.result.delta_db : null),
    size: (j) => (j.result ? j.result.weight_bytes : null),
    ratio: (j) => (j.result ? j.result.ratio : null),
    status: (j) => j.status,
    time: (j) => Date.parse(j.created_at) || 0,
  };

  function sortedRows() {
    const rows = [...state.rows];
    if (!state.sort) return rows;
    const key = sortKeys[state.sort.key], dir = state.sort.dir;
    return rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1; // missing values last either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
  }

  function progressCell(j) {
    const p = j.progress || {};
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    const bar = el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': String(p.total || 0),
                             'aria-valuenow': String(p.done || 0) }, el('span'));
    bar.firstChild.style.width = (frac * 100).toFixed(1) + '%';
    const parts = [j.status];
    if (p.stage) parts.push(p.stage);
    if (p.total) parts.push(`${p.done}/${p.total} images`);
    if (typeof p.eta_s === 'number') parts.push('ETA ' + fmt.secs(p.eta_s));
    if (j.cancel_requested) parts.push('cancelling');
    return el('div', { class: 'progress' }, bar, el('small', { class: 'progress-text', text: parts.join(' · ') }));
  }

  function actionButtons(j) {
    const box = el('span', { class: 'row-actions' });
    if (isActive(j) && !j.cancel_requested)
      box.append(el('button', { type: 'button', class: 'small', 'data-action': 'cancel', text: 'Cancel',
                               onclick: (ev) => { ev.stopPropagation(); cancelJob(j.id); } }));
    if (isFinished(j) && j.status !== 'succeeded')
      box.append(el('button', { type: 'button', class: 'small', 'data-action': 'retry', text: 'Retry',
                               onclick: (ev) => { ev.stopPropagation(); retryJob(j.id); } }));
    return box;
  }

  function jobRow(j, baseline) {
    const r = j.result || {};
    const status = isActive(j) ? progressCell(j)
      : el('span', { class: 'st st-' + j.status, text: j.status, title: j.error ? j.error.message : null });
    const secs = jobSeconds(j);
    const delta = r.delta_db;
    const tr = el('tr', { class: 'clickable', 'data-job': j.id, 'data-status': j.status, tabindex: '0' },
      el('td', { class: 'model' }, markerIcon(j.model, jobArch(j)), modelName(j.model, j)),
      el('td', { class: 'arch', 'data-arch': jobArch(j), title: jobArchDescription(j) || null, text: archLabel(jobArch(j)) }),
      el('td', { text: j.dataset }),
      el('td', { text: j.recipe }),
      el('td', { class: 'num psnr', text: fmt.db(r.psnr_db) }),
      el('td', { class: 'num ' + (delta < -0.005 ? 'delta-neg' : delta > 0.005 ? 'delta-pos' : ''), text: baseline ? '0 (ref)' : fmt.delta(delta) }),
      el('td', { class: 'num', text: fmt.bytes(r.weight_bytes) }),
      el('td', { class: 'num', text: fmt.ratio(r.ratio) }),
      el('td', {}, status),
      el('td', { class: 'time', title: j.created_at, text: fmt.when(j.created_at, true) + (secs !== null ? ' · ' + fmt.secs(secs) : '') }),
      el('td', { class: 'noprint' }, baseline ? null : actionButtons(j)));
    const open = () => { location.hash = '#/jobs/' + j.id; };
    tr.addEventListener('click', open);
    tr.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') open(); });
    return tr;
  }

  function renderResults() {
    $('baseline-rows').replaceChildren(...state.baselines.map((b) => jobRow(b.job, true)));
    const rows = sortedRows();
    $('rows').replaceChildren(...(rows.length ? rows.map((j) => jobRow(j, false))
      : [el('tr', {}, el('td', { colspan: '11', class: 'muted', text: 'No jobs match these filters.' }))]));
    for (const th of document.querySelectorAll('#results th[data-sort]')) {
      th.classList.toggle('asc', !!state.sort && state.sort.key === th.dataset.sort && state.sort.dir > 0);
      th.classList.toggle('desc', !!state.sort && state.sort.key === th.dataset.sort && state.sort.dir < 0);
    }
    $('prev').disabled = state.page === 0;
    $('next').disabled = !state.nextCursor;
    $('page-info').textContent = `page ${state.page + 1} · ${state.rows.length} jobs`;
    renderPlot();
  }

  // ---- scatter plot ------------------------------------------------------------
  function niceStep(range, target) {
    const raw = range / Math.max(1, target), p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }

  // Points that no other point beats on both axes (smaller and better),
  // sorted by size: the staircase of best PSNR reachable at each size.
  // Equal points keep one representative here; onFrontier marks them all.
  function paretoFrontier(pts) {
    const s = [...pts].sort((a, b) => a.x - b.x || b.y - a.y);
    const front = [];
    let best = -Infinity;
    for (const p of s) if (p.y > best) { front.push(p); best = p.y; }
    return front;
  }
  // The set of points lying on a frontier (the same job drawn as a baseline
  // and as a row, or two jobs with equal results, are not dominated either).
  function onFrontier(pts, front) {
    const at = new Set(front.map((p) => p.x + ',' + p.y));
    return new Set(pts.filter((p) => at.has(p.x + ',' + p.y)));
  }

  function staircase(front, sx, sy) {
    let d = '';
    front.forEach((p, i) => {
      d += i === 0 ? `M${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`
                   : `H${sx(p.x).toFixed(1)}V${sy(p.y).toFixed(1)}`;
    });
    return d;
  }

  function renderPlot() {
    const plot = $('plot');
    const W = 520, H = 360, L = 58, R = 14, T = 12, B = 44;
    const seen = new Set(), pts = [];
    const add = (j, baseline) => {
      const r = j.result;
      if (!r || typeof r.psnr_db !== 'number' || !(r.weight_bytes > 0) || !isFinite(r.psnr_db)) return;
      const key = j.id + (baseline ? ':b' : '');
      if (seen.has(key)) return;
      seen.add(key);
      pts.push({ job: j, arch: jobArch(j), x: Math.log10(r.weight_bytes), y: r.psnr_db, baseline });
    };
    for (const b of state.baselines) add(b.job, true);
    for (const j of state.rows) if (j.status === 'succeeded') add(j, false);
    const kids = [];
    if (!pts.length) {
      kids.push(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No finished jobs on this page yet.'));
      plot.replaceChildren(...kids);
      $('legend').replaceChildren();
      return;
    }
    let x0 = Math.min(...pts.map((p) => p.x)), x1 = Math.max(...pts.map((p) => p.x));
    let y0 = Math.min(...pts.map((p) => p.y)), y1 = Math.max(...pts.map((p) => p.y));
    if (x1 - x0 < 0.3) { x0 -= 0.15; x1 += 0.15; }
    if (y1 - y0 < 0.2) { y0 -= 0.1; y1 += 0.1; }
    const px = (x1 - x0) * 0.06, py = (y1 - y0) * 0.08;
    x0 -= px; x1 += px; y0 -= py; y1 += py;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    // y grid + ticks
    const ys = niceStep(y1 - y0, 6);
    for (let v = Math.ceil(y0 / ys) * ys; v <= y1; v += ys) {
      kids.push(svg('line', { class: 'grid', x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
      kids.push(svg('text', { x: L - 6, y: sy(v) + 4, 'text-anchor': 'end' }, v.toFixed(ys < 0.1 ? 2 : ys < 1 ? 1 : 0)));
    }
    // x ticks at powers of two bytes (log scale), every other one when crowded
    const e0 = Math.ceil(x0 / Math.log10(2)), e1 = Math.floor(x1 / Math.log10(2));
    const estep = e1 - e0 > 7 ? 2 : 1;
    for (let e = e0; e <= e1; e += estep) {
      const v = e * Math.log10(2);
      kids.push(svg('line', { class: 'grid', x1: sx(v), x2: sx(v), y1: T, y2: H - B }));
      kids.push(svg('text', { x: sx(v), y: H - B + 15, 'text-anchor': 'middle' }, fmt.bytes(Math.pow(2, e)).replace(/\.0+ /, ' ')));
    }
    kids.push(svg('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    kids.push(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
    kids.push(svg('text', { x: (L + W - R) / 2, y: H - 8, 'text-anchor': 'middle' }, 'weight size (log scale)'));
    kids.push(svg('text', { x: 14, y: (T + H - B) / 2, 'text-anchor': 'middle', transform: `rotate(-90 14 ${(T + H - B) / 2})` }, 'PSNR (dB)'));
    // Frontiers: one per architecture (thin, its colour) when several are
    // shown, then the overall one (dashed) over every point.
    const archs = [...new Set(pts.map((p) => p.arch))].sort((a, b) => archLabel(a).localeCompare(archLabel(b)));
    const onArchFront = new Set();
    if (archs.length > 1) {
      for (const a of archs) {
        const mine = pts.filter((p) => p.arch === a), fa = paretoFrontier(mine);
        for (const p of onFrontier(mine, fa)) onArchFront.add(p);
        const path = svg('path', { class: 'frontier-arch', 'data-arch': a, d: staircase(fa, sx, sy) });
        path.style.stroke = archColour(a);
        kids.push(path);
      }
    }
    const front = paretoFrontier(pts);
    kids.push(svg('path', { class: 'frontier', d: staircase(front, sx, sy) }));
    const onFront = onFrontier(pts, front);
    for (const p of pts) {
      const shape = modelShape(p.job.model, p.arch);
      const c = svg('path', {
        class: 'pt' + (p.baseline ? ' baseline' : '') + (onFront.has(p) ? ' pareto' : '') +
               (onArchFront.has(p) ? ' pareto-arch' : ''),
        d: markerPath(shape, sx(p.x), sy(p.y), p.baseline ? 6.5 : 5),
        fill: archColour(p.arch), 'data-job': p.job.id, 'data-arch': p.arch, 'data-model': p.job.model,
        'data-shape': String(shape), tabindex: '0', role: 'link',
      });
      if (p.baseline) { c.setAttribute('stroke', '#1d2330'); c.setAttribute('stroke-width', '2'); }
      const r = p.job.result;
      c.append(svg('title', {}, `${modelName(p.job.model, p.job)} (${jobArchDescription(p.job) || archLabel(p.arch)})\n` +
                                 `${p.job.recipe} · ${p.job.dataset} · ${fmt.db(r.psnr_db)} dB · ` +
                                 `${fmt.bytes(r.weight_bytes)} · ${fmt.ratio(r.ratio)}`));
      const open = () => { location.hash = '#/jobs/' + p.job.id; };
      c.addEventListener('click', open);
      c.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') open(); });
      kids.push(c);
    }
    plot.replaceChildren(...kids);
    // Legend: one line per architecture (its colour), then its models
    // (their marker shapes).
    const items = [];
    for (const a of archs) {
      const sw = el('span', { class: 'swatch' });
      sw.style.background = archColour(a);
      const li = el('li', { class: 'legend-arch', 'data-arch': a }, el('strong', {}, sw, archLabel(a)));
      const models = [];
      for (const p of pts) if (p.arch === a && !models.some((q) => q.job.model === p.job.model)) models.push(p);
      for (const p of models)
        li.append(el('span', { class: 'legend-model', 'data-model': p.job.model, title: jobArchDescription(p.job) || null },
                     markerIcon(p.job.model, a), modelName(p.job.model, p.job)));
      items.push(li);
    }
    items.push(el('li', { class: 'muted legend-note', text: 'thick outline: FP32 baseline · dashed: Pareto frontier of all points' +
                                        (archs.length > 1 ? ' · thin: per architecture' : '') }));
    $('legend').replaceChildren(...items);
  }

  // ---- export -------------------------------------------------------------------
  function shownJobs() {
    return [...state.baselines.map((b) => Object.assign({ baseline: true, derived: b.derived }, b.job)),
            ...sortedRows().map((j) => Object.assign({ baseline: false }, j))];
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el('a', { href: url, download: name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function csvCell(v) {
    if (v === null || v === undefined) return '';
    const s = String(v);
    return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function exportCsv() {
    const cols = ['id', 'baseline', 'model_id', 'model', 'arch', 'dataset', 'recipe', 'status', 'psnr_db', 'delta_db',
                  'weight_bytes', 'ratio', 'created_at', 'started_at', 'finished_at', 'seconds'];
    const lines = [cols.join(',')];
    for (const j of shownJobs()) {
      const r = j.result || {};
      lines.push([j.id, j.baseline ? 1 : 0, j.model, modelName(j.model, j), jobArch(j), j.dataset, j.recipe, j.status, r.psnr_db,
                  r.delta_db, r.weight_bytes, r.ratio, j.created_at, j.started_at, j.finished_at, jobSeconds(j)]
        .map(csvCell).join(','));
    }
    download('kiln-jobs.csv', 'text/csv', lines.join('\n') + '\n');
  }

  function exportJson() {
    download('kiln-jobs.json', 'application/json', JSON.stringify(shownJobs(), null, 2) + '\n');
  }

  // ---- cancel / retry -------------------------------------------------------------
  async function cancelJob(id) {
    try {
      await api('POST', `/v1/jobs/${encodeURIComponent(id)}:cancel`);
      toast('Cancel requested');
    } catch (e) { toast('Cancel failed: ' + e.message); }
    route();
  }

  async function retryJob(id) {
    try {
      const j = await api('POST', `/v1/jobs/${encodeURIComponent(id)}:retry`);
      toast('Queued again as ' + j.id);
      location.hash = '#/jobs/' + j.id;
    } catch (e) { toast('Retry failed: ' + e.message); }
  }

  // ---- job form ---------------------------------------------------------------------
  function mode() { return document.querySelector('input[name=mode]:checked').value; }

  function setValidation(text, cls) {
    const v = $('validation');
    v.textContent = text; v.className = 'validation ' + (cls || '');
  }

  let validateTimer = null;
  function validateSoon() { clearTimeout(validateTimer); validateTimer = setTimeout(validateNow, 300); }

  // Returns the config object to submit, or null (and shows why).
  function parsedConfig() {
    const text = $('j-config').value.trim();
    if (!text) { setValidation('Paste a JSON config (docs/config.md), or pick a preset.', 'bad'); return null; }
    try {
      const c = JSON.parse(text);
      if (!c || typeof c !== 'object' || Array.isArray(c)) { setValidation('The config must be a JSON object.', 'bad'); return null; }
      return c;
    } catch (e) { setValidation('Not valid JSON: ' + e.message, 'bad'); return null; }
  }

  async function validateNow() {
    const seq = ++state.validateSeq;
    if (mode() === 'preset') {
      const p = $('j-preset').value;
      setValidation(p ? `Preset "${p}".` : 'No presets on this server.', p ? 'ok' : 'bad');
      return !!p;
    }
    const cfg = parsedConfig();
    if (!cfg) return false;
    setValidation('Validating…');
    try {
      const r = await api('POST', '/v1/configs:validate', cfg);
      if (seq !== state.validateSeq) return false;
      const ok = r.valid !== false;
      setValidation(ok ? `Valid${r.name ? ' · ' + r.name : ''} · hash ${String(r.config_hash || '').slice(0, 12)}` : 'Invalid config.',
                    ok ? 'ok' : 'bad');
      return ok;
    } catch (e) {
      if (seq !== state.validateSeq) return false;
      const lines = e.details && e.details.length ? e.details.map((d) => `${d.field || ''}: ${d.message}`)
                                                  : [(e.field ? e.field + ': ' : '') + e.message];
      setValidation(lines.join('\n'), 'bad');
      return false;
    }
  }

  function idemKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  }

  async function submitJob(ev) {
    ev.preventDefault();
    $('job-error').textContent = '';
    const body = { model: $('j-model').value, dataset: $('j-dataset').value,
                   calibration_images: Number($('j-calib').value) };
    if (!body.model || !body.dataset) { $('job-error').textContent = 'Pick a model and a dataset (upload them through the API first).'; return; }
    if (mode() === 'preset') body.recipe = $('j-preset').value;
    else {
      if (!(await validateNow())) { $('job-error').textContent = 'Fix the config first.'; return; }
      body.config = parsedConfig();
    }
    $('j-submit').disabled = true;
    try {
      const j = await api('POST', '/v1/jobs', body, { 'Idempotency-Key': idemKey() });
      toast('Job ' + j.id + ' queued');
      resetPaging();
      location.hash = '#/';
    } catch (e) {
      $('job-error').textContent = (e.field ? e.field + ': ' : '') + e.message;
    } finally {
      $('j-submit').disabled = false;
    }
  }

  // ---- job detail ---------------------------------------------------------------------
  function fact(dl, k, v) {
    if (v === null || v === undefined || v === '') return;
    dl.append(el('dt', { text: k }), el('dd', {}, v));
  }

  async function loadJob(id, first) {
    const j = await api('GET', '/v1/jobs/' + encodeURIComponent(id));
    const prevStatus = state.job && state.job.id === j.id ? state.job.status : null;
    state.job = j;
    renderJob(j, first || prevStatus !== j.status);
    if (isActive(j) && location.hash === '#/jobs/' + id) poll(() => loadJob(id, false));
  }

  function renderJob(j, full) {
    const r = j.result || {};
    $('view-job').dataset.job = j.id;
    $('view-job').dataset.status = j.status;
    $('jd-title').textContent = `${j.recipe} · ${modelName(j.model, j)} · ${j.dataset}`;
    $('jd-progress').replaceChildren(isActive(j) ? progressCell(j)
      : el('span', { class: 'st st-' + j.status, id: 'jd-status', text: j.status }));
    const dl = $('jd-facts');
    dl.replaceChildren();
    fact(dl, 'Job', j.id);
    fact(dl, 'Status', j.status);
    fact(dl, 'PSNR', r.psnr_db !== undefined ? fmt.db(r.psnr_db) + ' dB' : null);
    fact(dl, 'FP32 PSNR', r.fp32_psnr_db !== undefined ? fmt.db(r.fp32_psnr_db) + ' dB' : null);
    fact(dl, 'Δ vs FP32', r.delta_db !== undefined ? fmt.delta(r.delta_db) + ' dB' : null);
    fact(dl, 'Weights', r.weight_bytes !== undefined ? `${fmt.bytes(r.weight_bytes)} (FP32 ${fmt.bytes(r.fp32_weight_bytes)}, ${fmt.ratio(r.ratio)})` : null);
    fact(dl, 'Model', `${modelName(j.model, j)} (${j.model})`);
    fact(dl, 'Architecture', `${archLabel(jobArch(j))}${jobArchDescription(j) ? ' · ' + jobArchDescription(j) : ''}`);
    fact(dl, 'Dataset', r.dataset ? `${j.dataset}: ${r.dataset.calibration} calibration + ${r.dataset.evaluation} evaluation images` : j.dataset);
    fact(dl, 'Calibration images', String(j.calibration_images));
    fact(dl, 'Config hash', j.config_hash || r.config_hash);
    fact(dl, 'Artifact', j.artifact ? `${fmt.bytes(j.artifact.bytes)} · sha256 ${j.artifact.sha256.slice(0, 16)}…` : null);
    fact(dl, 'Created', fmt.when(j.created_at));
    fact(dl, 'Run time', jobSeconds(j) !== null ? fmt.secs(jobSeconds(j)) : null);
    fact(dl, 'Attempts', j.attempt ? String(j.attempt) : null);
    if (j.retry_of) fact(dl, 'Retry of', el('a', { href: '#/jobs/' + j.retry_of, text: j.retry_of }));
    fact(dl, 'kiln', r.kiln_version);
    $('jd-error').textContent = j.error ? `${j.error.code}: ${j.error.message}` : '';
    const cancel = $('jd-cancel'), retry = $('jd-retry'), dlb = $('jd-download'), dlo = $('jd-download-onnx');
    cancel.hidden = !(isActive(j) && !j.cancel_requested);
    retry.hidden = !isFinished(j);
    dlb.hidden = !j.artifact;
    dlo.hidden = !j.artifact;
    cancel.onclick = () => cancelJob(j.id);
    retry.onclick = () => retryJob(j.id);
    dlb.onclick = () => downloadArtifact(j, 'kiln');
    dlo.onclick = () => downloadArtifact(j, 'onnx');
    if (!full) return;
    renderChart(r.per_image || []);
    const cfg = r.config || state.presets[j.recipe] || null;
    $('jd-config').textContent = cfg ? JSON.stringify(cfg, null, 2) : (j.config_hash ? 'custom config, hash ' + j.config_hash : '—');
    setupCrops(j);
  }

  // format: 'kiln' (the stored artifact) or 'onnx' (its QDQ export, made by the server).
  async function downloadArtifact(j, format) {
    try {
      const blob = await apiBlob(format === 'onnx' ? j.artifact.url + '?format=onnx' : j.artifact.url);
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: `${j.id}.${format}` });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 2000);
    } catch (e) { toast('Download failed: ' + e.message); }
  }

  // Per-image PSNR as a dot plot (bars from an arbitrary floor would
  // exaggerate small differences): grey = FP32, blue = compressed, joined.
  function renderChart(per) {
    const chart = $('jd-chart');
    const W = Math.max(360, Math.round(chart.getBoundingClientRect().width) || 720), H = 240;
    const L = 50, R = 12, T = 22, B = 58;
    chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
    if (!per.length) {
      chart.replaceChildren(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No per-image results (yet).'));
      return;
    }
    const vals = per.flatMap((p) => [p.psnr_db, p.fp32_psnr_db]).filter((v) => typeof v === 'number' && isFinite(v));
    let y0 = Math.min(...vals), y1 = Math.max(...vals);
    if (y1 - y0 < 0.5) { const c = (y0 + y1) / 2; y0 = c - 0.25; y1 = c + 0.25; }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad; y1 += pad;
    const n = per.length, slot = (W - L - R) / n;
    const sy = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - T - B);
    const kids = [];
    const ys = niceStep(y1 - y0, 5);
    for (let v = Math.ceil(y0 / ys) * ys; v <= y1; v += ys) {
      kids.push(svg('line', { class: 'grid', x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
      kids.push(svg('text', { x: L - 6, y: sy(v) + 4, 'text-anchor': 'end' }, v.toFixed(ys < 0.1 ? 2 : ys < 1 ? 1 : 0)));
    }
    kids.push(svg('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    const every = Math.ceil(n / Math.max(1, Math.floor((W - L - R) / 16)));
    per.forEach((p, i) => {
      const cx = L + slot * (i + 0.5);
      const hasFp = typeof p.fp32_psnr_db === 'number' && isFinite(p.fp32_psnr_db);
      if (hasFp) {
        kids.push(svg('line', { x1: cx, x2: cx, y1: sy(p.fp32_psnr_db), y2: sy(p.psnr_db), stroke: '#9aa3b2', 'stroke-width': 1.5 }));
        const f = svg('circle', { cx, cy: sy(p.fp32_psnr_db), r: 4, fill: '#9aa3b2', class: 'img-fp32' });
        f.append(svg('title', {}, `${p.name}: FP32 ${fmt.db(p.fp32_psnr_db)} dB`));
        kids.push(f);
      }
      const c = svg('circle', { cx, cy: sy(p.psnr_db), r: 4.5, fill: '#2f5fd0', class: 'img-pt' });
      c.append(svg('title', {}, `${p.name}: ${fmt.db(p.psnr_db)} dB` + (hasFp ? ` (Δ ${fmt.delta(p.psnr_db - p.fp32_psnr_db)})` : '')));
      kids.push(c);
      if (i % every === 0) {
        kids.push(svg('text', { x: cx, y: H - B + 12, 'text-anchor': 'end', transform: `rotate(-40 ${cx} ${H - B + 12})` },
                      String(p.name).replace(/\.png$/, '')));
      }
    });
    kids.push(svg('text', { x: W - R, y: 12, 'text-anchor': 'end' }, 'dB per image · grey: FP32 · blue: compressed'));
    chart.replaceChildren(...kids);
  }

  function setupCrops(j) {
    const msg = $('crop-msg'), img = $('crops'), form = $('crop-form');
    img.hidden = true;
    if (state.cropUrl) { URL.revokeObjectURL(state.cropUrl); state.cropUrl = null; }
    const per = (j.result && j.result.per_image) || [];
    if (!state.hasPreview) {
      form.hidden = true;
      msg.textContent = 'This kilnd does not offer crop previews (no GET /v1/jobs/{id}/preview in its API document).';
      msg.dataset.state = 'unavailable';
      return;
    }
    if (j.status !== 'succeeded' || !per.length) {
      form.hidden = true;
      msg.textContent = 'Crops appear when the job has succeeded.';
      msg.dataset.state = 'waiting';
      return;
    }
    form.hidden = false;
    fillSelect($('c-image'), per.map((p) => [p.name, p.name]));
    renderCrops();
  }

  async function renderCrops(ev) {
    if (ev) ev.preventDefault();
    const j = state.job, msg = $('crop-msg'), img = $('crops');
    if (!j) return;
    const q = qs({ image: $('c-image').value, x: $('c-x').value, y: $('c-y').value, size: $('c-size').value });
    msg.textContent = 'Rendering…';
    msg.dataset.state = 'loading';
    try {
      const blob = await apiBlob(`/v1/jobs/${encodeURIComponent(j.id)}/preview${q}`);
      if (state.cropUrl) URL.revokeObjectURL(state.cropUrl);
      state.cropUrl = URL.createObjectURL(blob);
      img.onload = () => {
        // Shown at 2x (pixelated) so single-pixel artefacts are visible; click toggles full width.
        img.style.width = (img.naturalWidth * 2) + 'px';
        msg.textContent = `${img.naturalWidth}×${img.naturalHeight} px, shown at 2×`;
        msg.dataset.state = 'loaded';
      };
      img.src = state.cropUrl;
      img.hidden = false;
    } catch (e) {
      msg.textContent = 'Preview failed: ' + e.message;
      msg.dataset.state = 'error';
    }
  }

  // ---- wiring -----------------------------------------------------------------------------
  function init() {
    $('signin-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      $('token').value = '';
      if (!t) return;
      if (await signIn(t)) {
        try { await loadMeta(); } catch (e) { toast('Error: ' + e.message); }
        route();
      }
    });
    $('signout').addEventListener('click', () => signOut(''));
    for (const id of ['f-status', 'f-model', 'f-arch', 'f-dataset', 'f-recipe', 'f-limit'])
      $(id).addEventListener('change', () => { resetPaging(); loadPage().catch((e) => toast('Error: ' + e.message)); });
    $('next').addEventListener('click', () => {
      if (!state.nextCursor) return;
      state.cursors[state.page + 1] = state.nextCursor; state.page++;
      loadPage().catch((e) => toast('Error: ' + e.message));
    });
    $('prev').addEventListener('click', () => {
      if (state.page === 0) return;
      state.page--;
      loadPage().catch((e) => toast('Error: ' + e.message));
    });
    for (const th of document.querySelectorAll('#results th[data-sort]')) {
      th.addEventListener('click', () => {
        const k = th.dataset.sort;
        state.sort = state.sort && state.sort.key === k ? { key: k, dir: -state.sort.dir } : { key: k, dir: 1 };
        renderResults();
      });
    }
    $('export-csv').addEventListener('click', exportCsv);
    $('export-json').addEventListener('click', exportJson);
    $('job-form').addEventListener('submit', submitJob);
    for (const r of document.querySelectorAll('input[name=mode]')) {
      r.addEventListener('change', () => {
        $('preset-box').hidden = mode() !== 'preset';
        $('config-box').hidden = mode() !== 'config';
        if (mode() === 'config' && !$('j-config').value.trim() && state.presets[$('j-preset').value])
          $('j-config').value = JSON.stringify(state.presets[$('j-preset').value], null, 2);
        validateNow();
      });
    }
    $('j-preset').addEventListener('change', validateNow);
    $('j-config').addEventListener('input', validateSoon);
    $('crop-form').addEventListener('submit', renderCrops);
    $('crops').addEventListener('click', () => $('crops').classList.toggle('zoom'));
    window.addEventListener('hashchange', route);
    window.addEventListener('unhandledrejection', (ev) => { toast('Error: ' + (ev.reason && ev.reason.message)); });
    route();
  }

  init();
})();
