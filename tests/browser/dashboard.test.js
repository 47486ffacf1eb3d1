// dashboard.test.js — kiln's dashboard in headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core), against a real kilnd.
// tests/test_browser.sh starts kilnd and sets the environment:
//   BASE_URL     where the dashboard is served (kilnd, or serve.js in front of it)
//   API_URL      kilnd itself (setup requests)
//   KILN_TOKEN   an admin token of a fresh team
//   KILND_DB     kilnd's SQLite database (the 10,000-job test seeds it)
//   DATASET_TAR  a tar of a few B100 HR images (uploaded as dataset "b4")
//   KILN_DATA    the shared data folder (tiny EDSR fixtures, the CARN-M checkpoint)
//   SHOTS        screenshot folder
//   MODE         "test" (default: both tests) or "bench" (load time only)
// Prints one line per check and "N passed, N failed"; exits non-zero on any
// failure, including any console error or uncaught exception in the page.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { chromium } = require('playwright-core');

const env = (k, d) => process.env[k] || d;
const BASE = env('BASE_URL'), API = env('API_URL', env('BASE_URL')), TOKEN = env('KILN_TOKEN');
const DB = env('KILND_DB'), TAR = env('DATASET_TAR'), DATA = env('KILN_DATA', '../shared/data');
const SHOTS = env('SHOTS', 'build/test-logs/screenshots'), MODE = env('MODE', 'test');
const SEED_JOBS = 10000;
const JOB_TIMEOUT_MS = Number(env('JOB_TIMEOUT_MS', '240000'));

let passed = 0, failed = 0;
function check(cond, what, detail) {
  if (cond) { passed++; console.log('ok   ' + what); }
  else { failed++; console.log('FAIL ' + what + (detail !== undefined ? ': ' + detail : '')); }
  return !!cond;
}

// ---- API setup (node's fetch, straight to kilnd) ----------------------------
async function api(method, p, body, type) {
  const headers = { Authorization: 'Bearer ' + TOKEN };
  let payload;
  if (body instanceof Buffer) { headers['Content-Type'] = type; payload = body; }
  else if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
  const res = await fetch(API + p, { method, headers, body: payload });
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = text; }
  if (!res.ok) throw new Error(`${method} ${p}: HTTP ${res.status}: ${text.slice(0, 300)}`);
  return data;
}

async function waitJob(id) {
  const t0 = Date.now();
  for (;;) {
    const j = await api('GET', '/v1/jobs/' + id);
    if (!['queued', 'running'].includes(j.status)) return j;
    if (Date.now() - t0 > JOB_TIMEOUT_MS) throw new Error(`job ${id} still ${j.status} after ${JOB_TIMEOUT_MS} ms`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function setup() {
  const ds = await api('POST', '/v1/datasets?name=b4', fs.readFileSync(TAR), 'application/x-tar');
  const a = await api('POST', '/v1/models?name=tiny-r2f8', fs.readFileSync(path.join(DATA, 'models/fixtures/r2f8_x2_zip.pt')), 'application/octet-stream');
  const b = await api('POST', '/v1/models?name=tiny-r1f12', fs.readFileSync(path.join(DATA, 'models/fixtures/r1f12_x2_resscale0.1_zip.pt')), 'application/octet-stream');
  // A second architecture: the CARN authors' CARN-M (multi-scale file, x2 used).
  const c = await api('POST', '/v1/models?name=carn-m&scale=2', fs.readFileSync(path.join(DATA, 'models/zoo/carn_m.pth')), 'application/octet-stream');
  if (c.arch !== 'carn_m') throw new Error('carn_m.pth uploaded as ' + JSON.stringify(c));
  const jobs = [];
  for (const [m, recipe] of [[a, 'fp32'], [b, 'fp32'], [a, 'p4'], [b, 'w8a8'], [c, 'fp32'], [c, 'w8a8']])
    jobs.push(await api('POST', '/v1/jobs', { model: m.id, dataset: 'b4', recipe, calibration_images: 1 }));
  for (const j of jobs) {
    const done = await waitJob(j.id);
    if (done.status !== 'succeeded') throw new Error(`setup job ${j.id} (${j.recipe}) ended ${done.status}: ${JSON.stringify(done.error)}`);
  }
  const doc = await (await fetch(API + '/v1/openapi.json')).json();
  return { ds, a, b, c, hasPreview: !!doc.paths['/v1/jobs/{id}/preview'] };
}

// ---- browser -------------------------------------------------------------------
async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'kiln-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 900 },
    acceptDownloads: true,
  });
  ctx.profile = profile;
  return ctx;
}

// Console errors and page exceptions fail the test; `allow` lists expected
// resource errors (a 422 from live config validation is the API's answer).
function watch(page, allow) {
  const errors = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const url = (m.location() && m.location().url) || '';
    if (allow.some((a) => a.test(m.text() + ' ' + url))) return;
    errors.push(m.text() + (url ? ' @ ' + url : ''));
  });
  page.on('pageerror', (e) => errors.push('uncaught: ' + e.message));
  return errors;
}

async function signIn(page) {
  await page.goto(BASE + '/');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', TOKEN);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#view-results:not([hidden])');
}

async function mainTest(ctx, s) {
  const page = await ctx.newPage();
  const errors = watch(page, [/status of 422.*\/v1\/configs:validate/]);
  await signIn(page);
  check(!page.url().includes(TOKEN), 'the token is not in the URL', page.url());
  const stored = await page.evaluate(() => [sessionStorage.getItem('kiln.token'), localStorage.length]);
  check(stored[0] === TOKEN && stored[1] === 0, 'the token is in sessionStorage only');
  check((await page.textContent('#who')).includes('browser'), 'signed in as the test team', await page.textContent('#who'));
  await page.waitForSelector('#rows tr[data-job]');
  check(await page.locator('#baseline-rows tr').count() === 3, 'one pinned FP32 baseline per model',
        await page.locator('#baseline-rows tr').count());
  await architectureColumn(page, s);

  // Live validation: local JSON errors, a server-side 422, then a valid config.
  await page.click('nav a[data-nav=new]');
  await page.waitForSelector('#view-new:not([hidden])');
  await page.selectOption('#j-model', s.a.id);
  await page.selectOption('#j-dataset', 'b4');
  await page.fill('#j-calib', '2');
  await page.selectOption('#j-preset', 'w8a8');
  await page.check('input[name=mode][value=config]');
  await page.waitForSelector('#validation.ok', { timeout: 10000 });
  check(/Valid/.test(await page.textContent('#validation')), 'preset config validates through the API',
        await page.textContent('#validation'));
  const good = await page.inputValue('#j-config');
  await page.fill('#j-config', '{"quantization": ');
  await page.waitForFunction(() => /Not valid JSON/.test(document.getElementById('validation').textContent));
  check(true, 'malformed JSON is reported before any request');
  const bad = JSON.parse(good);
  if (bad.quantization && bad.quantization.global && bad.quantization.global.weight) bad.quantization.global.weight.dtype = 'int7';
  else bad.quantization = { global: { weight: { dtype: 'int7' } } };
  await page.fill('#j-config', JSON.stringify(bad));
  await page.waitForFunction(() => document.getElementById('validation').classList.contains('bad') &&
                                   /dtype/.test(document.getElementById('validation').textContent), null, { timeout: 10000 });
  check(true, 'an invalid dtype is reported with its JSON path', await page.textContent('#validation'));
  await page.fill('#j-config', good);
  await page.waitForSelector('#validation.ok', { timeout: 10000 });
  await page.click('#j-submit');
  await page.waitForSelector('#view-results:not([hidden])');
  const toastText = await page.textContent('#toast');
  const m = /(job_[A-Za-z0-9]+)/.exec(toastText || '');
  check(m, 'the form submitted a job', toastText);
  if (!m) return errors;
  const id = m[1];

  // Its row goes from queued/running to succeeded by the page's own polling.
  const row = `#rows tr[data-job="${id}"]`;
  await page.waitForSelector(row, { timeout: 10000 });
  await page.waitForSelector(`${row}[data-status=succeeded]`, { timeout: JOB_TIMEOUT_MS });
  const psnr = await page.textContent(`${row} td.psnr`);
  check(/^\d+\.\d\d$/.test(psnr.trim()), 'the new row shows its PSNR', psnr);
  const apiJob = await api('GET', '/v1/jobs/' + id);
  check(Math.abs(Number(psnr) - apiJob.result.psnr_db) < 0.006, 'row PSNR equals the API result', `${psnr} vs ${apiJob.result.psnr_db}`);
  check(await page.locator(`#plot .pt[data-job="${id}"]`).count() === 1, 'the new job has a point on the plot');
  check(await page.locator('#plot path.frontier').getAttribute('d').then((d) => /^M[\d.]+,[\d.]+/.test(d || '')),
        'the Pareto frontier is drawn');
  await plotAcrossArchitectures(page, s);

  // Sorting within the page.
  await page.click('#results th[data-sort=psnr]');
  const vals = await page.$$eval('#rows td.psnr', (tds) => tds.map((t) => t.textContent));
  const nums = vals.filter((v) => v !== '—').map(Number);
  check(nums.every((v, i) => i === 0 || nums[i - 1] <= v), 'sorting by PSNR orders the page', vals.join(' '));

  // Exports.
  const [csv] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csvText = fs.readFileSync(await csv.path(), 'utf8');
  check(csvText.startsWith('id,baseline,model_id,model,arch,dataset,recipe,status,psnr_db') && csvText.includes(id),
        'CSV export has the header and the new job');
  check(csvText.split('\n').some((l) => l.includes(',carn-m,carn_m,')), 'CSV export names the architecture');
  const [js] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
  const arr = JSON.parse(fs.readFileSync(await js.path(), 'utf8'));
  check(Array.isArray(arr) && arr.some((j) => j.id === id) && arr.filter((j) => j.baseline).length === 3,
        'JSON export has the jobs and the baselines');

  // The frontier marks exactly the points no other point beats on size and PSNR.
  const pts = await page.$$eval('#plot .pt', (cs) => cs.map((c) => ({ id: c.dataset.job, pareto: c.classList.contains('pareto') })));
  const byId = {};
  for (const j of (await api('GET', '/v1/jobs?limit=50')).jobs) byId[j.id] = j;
  const res = (pid) => byId[pid] && byId[pid].result;
  const plotted = pts.filter((p) => res(p.id));
  const dominated = (p) => plotted.some((q) => q.id !== p.id &&
      res(q.id).weight_bytes <= res(p.id).weight_bytes && res(q.id).psnr_db >= res(p.id).psnr_db &&
      (res(q.id).weight_bytes < res(p.id).weight_bytes || res(q.id).psnr_db > res(p.id).psnr_db));
  check(plotted.length >= 5 && plotted.every((p) => p.pareto === !dominated(p)), 'Pareto points are exactly the non-dominated ones',
        JSON.stringify(plotted.map((p) => [p.id.slice(-4), p.pareto, !dominated(p)])));

  await page.screenshot({ path: path.join(SHOTS, 'results.png'), fullPage: true });
  await page.locator('#plot').screenshot({ path: path.join(SHOTS, 'plot.png') });

  // Click its point -> detail.
  await page.click(`#plot .pt[data-job="${id}"]`);
  await page.waitForSelector('#view-job:not([hidden])');
  check(page.url().endsWith('#/jobs/' + id), 'clicking the point opens the job', page.url());
  await page.waitForSelector('#jd-chart circle.img-pt');
  check(await page.locator('#jd-chart circle.img-pt').count() === apiJob.result.per_image.length,
        'per-image PSNR chart has one point per evaluated image');
  check((await page.textContent('#jd-config')).includes('"quantization"'), 'the job config is shown');
  check(await page.isVisible('#jd-download'), 'artifact download is offered');
  const [art] = await Promise.all([page.waitForEvent('download'), page.click('#jd-download')]);
  const artBytes = fs.statSync(await art.path()).size;
  check(artBytes === apiJob.artifact.bytes, 'the downloaded artifact has the advertised size', `${artBytes} vs ${apiJob.artifact.bytes}`);
  check(await page.isVisible('#jd-download-onnx'), 'ONNX download is offered');
  const [ox] = await Promise.all([page.waitForEvent('download'), page.click('#jd-download-onnx')]);
  const oxBytes = fs.readFileSync(await ox.path());
  check(ox.suggestedFilename().endsWith('.onnx') && oxBytes.length > 1000 && oxBytes.includes('QuantizeLinear'),
        'the ONNX download is a QDQ model', `${ox.suggestedFilename()}, ${oxBytes.length} bytes`);
  if (s.hasPreview) {
    await page.waitForSelector('#crop-msg[data-state=loaded], #crop-msg[data-state=error]', { timeout: 60000 });
    const w = await page.$eval('#crops', (img) => img.naturalWidth);
    check(w > 0, 'the crops image loads (naturalWidth > 0)', `${w}; ${await page.textContent('#crop-msg')}`);
  } else {
    await page.waitForSelector('#crop-msg[data-state=unavailable]');
    check(false, 'the crops image loads: kilnd has no GET /v1/jobs/{id}/preview route yet (server/openapi.json)');
  }
  await page.screenshot({ path: path.join(SHOTS, 'detail.png'), fullPage: true });

  // Print: controls hidden, content kept.
  await page.emulateMedia({ media: 'print' });
  check(!(await page.isVisible('header.top')) && (await page.isVisible('#jd-facts')), 'print style hides the controls, keeps the facts');
  await page.screenshot({ path: path.join(SHOTS, 'detail-print.png'), fullPage: true });
  await page.emulateMedia({ media: 'screen' });

  // Retry from the detail page queues a linked job that runs to the end.
  await page.click('#jd-retry');
  await page.waitForFunction((old) => /#\/jobs\/job_/.test(location.hash) && !location.hash.endsWith(old), id);
  const rid = page.url().split('#/jobs/')[1];
  await page.waitForSelector(`#view-job[data-job="${rid}"][data-status=succeeded] #jd-status.st-succeeded`,
                             { timeout: JOB_TIMEOUT_MS });
  const retried = await api('GET', '/v1/jobs/' + rid);
  check(retried.retry_of === id && retried.status === 'succeeded', 'retry queues a linked job that succeeds', JSON.stringify([retried.retry_of, retried.status]));

  check((await page.textContent('#jd-facts')).includes('EDSR, 2 blocks, 8 features'), 'the detail page names the architecture');

  await progressAndCancel(page);
  await page.close();
  return errors;
}

// The Architecture column: label per row, the model's description on hover,
// sortable, and the architecture filter (applied by the server).
async function architectureColumn(page, s) {
  const heads = await page.$$eval('#results thead th', (ths) => ths.map((t) => t.textContent.trim()));
  check(heads[1] === 'Architecture', 'the results table has an Architecture column after Model', heads.join(' | '));
  const cells = await page.$$eval('#rows tr[data-job] td.arch, #baseline-rows tr td.arch',
                                  (tds) => tds.map((t) => [t.textContent, t.getAttribute('title'), t.dataset.arch]));
  check(cells.length >= 6 && cells.every((c) => c[0] === (c[2] === 'carn_m' ? 'CARN-M' : 'EDSR')),
        'every row shows its architecture', JSON.stringify(cells));
  check(cells.some((c) => c[1] === 'CARN-M, x2') && cells.some((c) => /^EDSR, 2 blocks, 8 features, x2/.test(c[1] || '')),
        "hovering an architecture shows the model's description", JSON.stringify(cells.map((c) => c[1])));
  const base = await page.$$eval('#baseline-rows tr td.arch', (tds) => tds.map((t) => t.dataset.arch));
  check(base.filter((a) => a === 'carn_m').length === 1 && base.filter((a) => a === 'edsr').length === 2,
        'the FP32 baselines cover both architectures, one per model', base.join(' '));
  await page.click('#results th[data-sort=arch]');
  const sorted = await page.$$eval('#rows td.arch', (tds) => tds.map((t) => t.textContent));
  check(sorted.every((v, i) => i === 0 || sorted[i - 1].toLowerCase() <= v.toLowerCase()), 'sorting by architecture orders the page',
        sorted.join(' '));
  // Back to newest first (time, clicked twice: ascending, then descending).
  await page.click('#results th[data-sort=time]');
  await page.click('#results th[data-sort=time]');
  const archOpts = await page.$$eval('#f-arch option', (os) => os.map((o) => o.value));
  check(archOpts.includes('carn_m') && archOpts.includes('edsr'), 'the architecture filter offers the team\'s architectures', archOpts.join(' '));
  const asked = page.waitForRequest((r) => new URL(r.url()).pathname === '/v1/jobs' && new URL(r.url()).searchParams.get('arch') === 'carn_m' &&
                                           new URL(r.url()).searchParams.get('recipe') !== 'fp32');
  await page.selectOption('#f-arch', 'carn_m');
  await asked;
  await page.waitForFunction(() => [...document.querySelectorAll('#rows tr[data-job] td.arch')].every((t) => t.dataset.arch === 'carn_m') &&
                                   document.querySelectorAll('#rows tr[data-job]').length > 0);
  check(await page.locator('#rows tr[data-job]').count() === 2, 'filtering by architecture shows only its jobs');
  check(await page.locator('#baseline-rows tr').count() === 1, '... and only its baseline');
  await page.selectOption('#f-arch', '');
  await page.waitForFunction(() => document.querySelectorAll('#baseline-rows tr').length === 3);
}

// The plot across architectures: colour = architecture, marker shape = model
// within it, a legend grouped by architecture, per-architecture frontiers.
async function plotAcrossArchitectures(page, s) {
  const pts = await page.$$eval('#plot .pt', (cs) => cs.map((c) => ({ fill: c.getAttribute('fill'), arch: c.dataset.arch,
                                                                     model: c.dataset.model, shape: c.dataset.shape })));
  const fillOf = {};
  let consistent = true;
  for (const p of pts) { if (fillOf[p.arch] && fillOf[p.arch] !== p.fill) consistent = false; fillOf[p.arch] = p.fill; }
  check(consistent && Object.keys(fillOf).length === 2 && fillOf.edsr !== fillOf.carn_m, 'one colour per architecture on the plot',
        JSON.stringify(fillOf));
  const shapeOf = (m) => [...new Set(pts.filter((p) => p.model === m).map((p) => p.shape))];
  check(shapeOf(s.a.id).length === 1 && shapeOf(s.b.id).length === 1 && shapeOf(s.a.id)[0] !== shapeOf(s.b.id)[0],
        'the two EDSR models have different marker shapes', JSON.stringify([shapeOf(s.a.id), shapeOf(s.b.id)]));
  check(pts.some((p) => p.arch === 'carn_m'), 'CARN-M jobs are on the plot');
  const legend = await page.$$eval('#legend li.legend-arch', (ls) => ls.map((l) => ({
    arch: l.dataset.arch, label: l.querySelector('strong').textContent,
    models: [...l.querySelectorAll('.legend-model')].map((m) => m.textContent) })));
  const byArch = Object.fromEntries(legend.map((l) => [l.arch, l]));
  check(byArch.edsr && byArch.edsr.label === 'EDSR' && byArch.carn_m && byArch.carn_m.label === 'CARN-M',
        'the legend names both architectures', JSON.stringify(legend));
  check(byArch.edsr && ['tiny-r2f8', 'tiny-r1f12'].every((n) => byArch.edsr.models.includes(n)) &&
        byArch.carn_m && byArch.carn_m.models.join() === 'carn-m', 'the legend lists every model under its architecture',
        JSON.stringify(legend));
  check(await page.locator('#legend .legend-model svg.marker path').count() === 3, 'each legend model has its marker');
  const fronts = await page.$$eval('#plot path.frontier-arch', (ps) => ps.map((p) => [p.dataset.arch, p.getAttribute('d')]));
  check(fronts.length === 2 && fronts.every((f) => /^M[\d.]+,[\d.]+/.test(f[1] || '')), 'a Pareto frontier per architecture is drawn',
        JSON.stringify(fronts));
  check(/Pareto frontier of all points/.test(await page.textContent('#legend')) &&
        /frontier of all points/.test(await page.textContent('.plot figcaption')), 'the plot says which frontier is which');
}

// A running job (a row whose lease is held far into the future by a worker
// that does not exist, so nothing finishes it): its progress bar, stage,
// images done and ETA, and the cancel button, which asks kilnd to stop it.
async function progressAndCancel(page) {
  const now = Date.now() / 1000;
  execFileSync('sqlite3', [DB], { input: `PRAGMA busy_timeout = 20000;
INSERT INTO jobs (id, team_seq, model_seq, dataset_seq, recipe, calib, status, attempt, lease_owner, lease_expires,
                  heartbeat_at, stage, done, total, eta_s, created_at, started_at)
SELECT 'job_fakerunning01', team_seq, model_seq, dataset_seq, 'p4', 1, 'running', 1, 'browser-test', ${now + 3600},
       ${now}, 'calibrate', 3, 10, 12.4, ${now}, ${now} FROM jobs ORDER BY seq LIMIT 1;` });
  await page.goto(BASE + '/#/');
  await page.reload();
  const row = '#rows tr[data-job="job_fakerunning01"]';
  await page.waitForSelector(row + '[data-status=running]');
  const text = await page.textContent(row + ' .progress-text');
  check(/calibrate/.test(text) && /3\/10 images/.test(text) && /ETA 12 s/.test(text), 'a running job shows stage, images done and ETA', text);
  const width = await page.$eval(row + ' .bar > span', (e) => e.style.width);
  check(Math.abs(parseFloat(width) - 30) < 0.01, 'its progress bar is 3/10 full', width);
  await page.screenshot({ path: path.join(SHOTS, 'progress.png') });
  await page.click(row + ' button[data-action=cancel]');
  await page.waitForFunction((sel) => /cancelling/.test(document.querySelector(sel + ' .progress-text').textContent), row);
  const j = await api('GET', '/v1/jobs/job_fakerunning01');
  check(j.cancel_requested === true, 'Cancel asks kilnd to stop the running job', JSON.stringify(j.cancel_requested));
  check(await page.locator(row + ' button[data-action=cancel]').count() === 0, 'the cancel button goes once cancel is requested');
  // Finish it by hand (no worker holds it), so later pages have nothing to poll.
  execFileSync('sqlite3', [DB], { input: `PRAGMA busy_timeout = 20000;
UPDATE jobs SET status = 'canceled', finished_at = ${now + 1}, lease_owner = NULL WHERE id = 'job_fakerunning01';` });
}

// ---- 10,000 jobs ------------------------------------------------------------------
function seed(n) {
  const sql = `PRAGMA busy_timeout = 20000;
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ${n}),
     t AS (SELECT team_seq, model_seq, dataset_seq FROM jobs ORDER BY seq LIMIT 1),
     m AS (SELECT seq, row_number() OVER (ORDER BY seq) - 1 AS r, count(*) OVER () AS n FROM models)
INSERT INTO jobs (id, team_seq, model_seq, dataset_seq, recipe, calib, status, attempt, stage, done, total,
                  result_json, created_at, started_at, finished_at)
SELECT printf('job_seed%08d', i), t.team_seq, m.seq, t.dataset_seq,
       CASE i % 4 WHEN 0 THEN 'fp32' WHEN 1 THEN 'w8a8' WHEN 2 THEN 'p4' ELSE 'w8' END,
       1, 'succeeded', 1, 'done', 3, 3,
       json_object('psnr_db', 30.0 - (i % 4) * 0.25 - (i % 97) / 1000.0, 'fp32_psnr_db', 30.0,
                   'delta_db', -(i % 4) * 0.25 - (i % 97) / 1000.0,
                   'weight_bytes', CASE i % 4 WHEN 0 THEN 22796 WHEN 2 THEN 3200 ELSE 5800 END,
                   'fp32_weight_bytes', 22796,
                   'ratio', 22796.0 / CASE i % 4 WHEN 0 THEN 22796 WHEN 2 THEN 3200 ELSE 5800 END,
                   'per_image', json_array()),
       1700000000 + i, 1700000000 + i, 1700000001 + i
FROM k, t, m WHERE m.r = i % m.n;
SELECT count(*) FROM jobs;`;
  return Number(execFileSync('sqlite3', [DB], { input: sql, encoding: 'utf8' }).trim().split('\n').pop());
}

function listRequests(reqs) {
  return reqs.filter((u) => u.pathname === '/v1/jobs');
}

async function loadTimed(ctx) {
  const page = await ctx.newPage();
  const errors = watch(page, []);
  const reqs = [], bodies = [];
  page.on('request', (r) => { const u = new URL(r.url()); if (u.pathname === '/v1/jobs') reqs.push(u); });
  page.on('response', async (r) => {
    const u = new URL(r.url());
    if (u.pathname === '/v1/jobs') { try { bodies.push(await r.json()); } catch (e) { /* body gone */ } }
  });
  // The token goes in before the page's script runs, so the timing covers
  // exactly: HTML, CSS, JS, /v1/me, models, datasets, presets, one page of jobs.
  const statuses = [];
  page.on('response', (r) => { const u = new URL(r.url()); if (u.pathname.startsWith('/v1/')) statuses.push(`${r.status()} ${u.pathname}${u.search}`); });
  await page.goto(BASE + '/#/', { waitUntil: 'domcontentloaded' });
  await page.evaluate((t) => sessionStorage.setItem('kiln.token', t), TOKEN);
  const t0 = Date.now();
  await page.reload({ waitUntil: 'commit' });
  try {
    await page.waitForFunction(() => document.querySelectorAll('#rows tr[data-job]').length >= 50, null, { timeout: 60000 });
  } catch (e) {
    // Say what the page shows and what the API answered, not just "timeout".
    const text = await page.evaluate(() => document.body.innerText.slice(0, 600)).catch(() => '?');
    throw new Error(`50 rows did not appear: page says ${JSON.stringify(text)}; API: ${statuses.join(', ')}; console: ${errors.join(' | ')}`);
  }
  const ms = Date.now() - t0;
  await page.waitForLoadState('networkidle');
  return { page, errors, reqs, bodies, ms };
}

async function manyJobsTest(ctx) {
  const total = seed(SEED_JOBS);
  check(total >= SEED_JOBS, `seeded ${SEED_JOBS} jobs with sqlite3`, total);
  const { page, errors, reqs, bodies, ms } = await loadTimed(ctx);
  console.log(`info dashboard load with ${total} jobs: ${ms} ms to the first 50 rows`);
  const main = () => listRequests(reqs).filter((u) => u.searchParams.get('recipe') !== 'fp32');
  check(main().length === 1, 'the page asks for one page of jobs', main().map(String).join(' '));
  check(main()[0] && main()[0].searchParams.get('limit') === '50' && !main()[0].searchParams.has('cursor'),
        'the first request is limit=50 without a cursor', main()[0] && main()[0].search);
  check(listRequests(reqs).every((u) => Number(u.searchParams.get('limit')) >= 1 && Number(u.searchParams.get('limit')) <= 200),
        'every job list request is limited (<= 200)');
  const received = () => bodies.reduce((n, b) => n + ((b && b.jobs) ? b.jobs.length : 0), 0);
  check(received() <= 50 + 3, 'at most one page (+ one baseline per model) of jobs crossed the network', received());
  check(await page.locator('#rows tr[data-job]').count() === 50, '50 rows rendered');
  const archs = await page.$$eval('#rows tr[data-job] td.arch', (tds) => [...new Set(tds.map((t) => t.textContent))]);
  check(archs.includes('EDSR') && archs.includes('CARN-M'), 'the seeded page mixes architectures in the Architecture column', archs.join(' '));
  check(await page.locator('#legend li.legend-arch').count() === 2, 'the legend groups the page by architecture');
  const first = await page.getAttribute('#rows tr[data-job]', 'data-job');
  await page.screenshot({ path: path.join(SHOTS, 'results-10k.png') });

  await page.click('#next');
  await page.waitForFunction((f) => document.querySelector('#rows tr[data-job]').dataset.job !== f, first);
  await page.waitForLoadState('networkidle');
  check(main().length === 2 && main()[1].searchParams.has('cursor'), 'Older asks for the next page with the cursor',
        main().map((u) => u.search).join(' '));
  check(await page.locator('#rows tr[data-job]').count() === 50, 'still 50 rows on page 2');
  check((await page.textContent('#page-info')).startsWith('page 2'), 'page indicator says page 2');

  await page.selectOption('#f-limit', '100');
  await page.waitForFunction(() => document.querySelectorAll('#rows tr[data-job]').length === 100);
  check(main().length === 3 && main()[2].searchParams.get('limit') === '100', 'changing the page size refetches one page');
  await page.selectOption('#f-recipe', 'p4');
  await page.waitForFunction(() => [...document.querySelectorAll('#rows tr[data-job] td:nth-child(4)')].every((t) => t.textContent === 'p4'));
  check(main().length === 4 && main()[3].searchParams.get('recipe') === 'p4', 'the recipe filter is applied by the server');
  check(received() <= 50 + 50 + 100 + 100 + 4 * 3, 'jobs received stay within the pages asked for', received());
  await page.close();
  return errors;
}

async function bench(ctx) {
  const n = Number(env('BENCH_RUNS', '5'));
  const times = [];
  let total = 0;
  try { total = seed(SEED_JOBS); } catch (e) { throw new Error('seeding failed: ' + e.message); }
  for (let i = 0; i < n; i++) {
    const { page, ms, errors } = await loadTimed(ctx);
    if (errors.length) throw new Error('console errors: ' + errors.join('; '));
    times.push(ms);
    await page.close();
  }
  times.sort((x, y) => x - y);
  console.log(`dashboard_load_ms median=${times[n >> 1]} min=${times[0]} max=${times[n - 1]} runs=${n} jobs_in_db=${total} page=50`);
}

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  let ctx;
  try {
    const s = await setup();
    ctx = await launch();
    if (MODE === 'bench') { await bench(ctx); return; }
    const e1 = await mainTest(ctx, s);
    check(e1.length === 0, 'no console errors (submit, detail, retry)', e1.join(' | '));
    const e2 = await manyJobsTest(ctx);
    check(e2.length === 0, 'no console errors (10,000 jobs)', e2.join(' | '));
  } catch (e) {
    check(false, 'browser test ran to the end', e.stack || String(e));
  } finally {
    if (ctx) {
      await ctx.close().catch(() => {});
      fs.rmSync(ctx.profile, { recursive: true, force: true });
    }
  }
  if (MODE !== 'bench') console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
})();
