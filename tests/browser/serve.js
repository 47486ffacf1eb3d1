// serve.js — a stand-in front end for the browser tests while kilnd does not
// serve static/ at "/" itself: serves the dashboard files and forwards every
// /v1/ request, unchanged and streamed, to the real kilnd. Same origin, so the
// page behaves exactly as it will when kilnd serves it.
//   node serve.js STATIC_DIR UPSTREAM_URL    -> prints "PORT <n>" once listening
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');

const [staticDir, upstream] = process.argv.slice(2);
if (!staticDir || !upstream) {
  process.stderr.write('usage: node serve.js STATIC_DIR UPSTREAM_URL\n');
  process.exit(2);
}
const up = new URL(upstream);
const root = path.resolve(staticDir);
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
                '.css': 'text/css; charset=utf-8', '.svg': 'image/svg+xml', '.png': 'image/png' };

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname.startsWith('/v1/')) {
    const p = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url,
                             headers: Object.assign({}, req.headers, { host: up.host }) }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    p.on('error', (e) => { res.writeHead(502, { 'Content-Type': 'text/plain' }); res.end('upstream: ' + e.message); });
    req.pipe(p);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405); res.end(); return; }
  const rel = url.pathname === '/' ? 'index.html' : decodeURIComponent(url.pathname).replace(/^\/+/, '');
  const file = path.resolve(root, rel);
  if (!file.startsWith(root + path.sep)) { res.writeHead(403); res.end(); return; }
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404, { 'Content-Type': 'text/plain' }); res.end('not found'); return; }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream',
                         'Cache-Control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : data);
  });
});
server.listen(0, '127.0.0.1', () => { process.stdout.write(`PORT ${server.address().port}\n`); });
process.on('SIGTERM', () => server.close(() => process.exit(0)));
