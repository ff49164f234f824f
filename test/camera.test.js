// ml-camera: folder, file, snapshot URL (real HTTP server on loopback) and test pattern sources.
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const crypto = require('crypto');
const http = require('http');
const path = require('path');
const sharp = require('sharp');
const { node, coreNode, redHelper, loadFlow, tmpDir, validationPhotos, nextMessage, sleep, until } = require('./helpers');
const { listImages } = require('../nodes/ml-camera/sources');
const { HttpCameraAuth } = require('../nodes/ml-camera/http-auth');
const { captureDeadlineMs, readCameraTiming } = require('../nodes/ml-camera/camera-settings');

const helper = redHelper();
const unhandled = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));
const nodes = [node('ml-camera'), coreNode('common/25-catch.js')];
const photos = validationPhotos(2);

function cameraFlow(camera, credentials) {
  return loadFlow(helper, nodes, [
    { id: 'tab', type: 'tab' },
    { id: 'cam', type: 'ml-camera', z: 'tab', cameraId: 'belt-3', sourceType: 'auto', interval: 0, loop: true, recursive: true, timeout: 2000, ...camera, wires: [['out']] },
    { id: 'out', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ], credentials ? { cam: credentials } : {});
}

async function trigger(msg = {}) {
  const received = nextMessage(helper.getNode('out'));
  helper.getNode('cam').receive(msg);
  return received;
}

function isJpeg(buf) {
  return Buffer.isBuffer(buf) && buf[0] === 0xff && buf[1] === 0xd8;
}

before(() => new Promise((resolve) => helper.startServer(resolve)));
afterEach(() => helper.unload());
after(() => new Promise((resolve) => helper.stopServer(resolve)));

test('a folder is played in natural order, recursively, with frame metadata', async () => {
  const dir = tmpDir();
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.copyFileSync(photos[0].file, path.join(dir, 'img2.jpg'));
  fs.copyFileSync(photos[1].file, path.join(dir, 'img10.jpg'));
  await sharp(photos[2].file).png().toFile(path.join(dir, 'sub', 'img1.png'));
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'not an image');
  assert.deepEqual((await listImages(dir, true)).map((f) => path.relative(dir, f)), ['img10.jpg', 'img2.jpg', 'sub/img1.png'].sort(new Intl.Collator('en', { numeric: true }).compare));

  await cameraFlow({ source: dir, loop: false });
  const first = await trigger({ topic: 'kept' });
  assert.ok(isJpeg(first.payload));
  assert.equal(first.frame.camera, 'belt-3');
  assert.equal(first.frame.seq, 1);
  assert.equal(first.frame.source, 'folder');
  assert.equal(first.frame.origin, path.join(dir, 'img2.jpg'));
  assert.deepEqual([first.frame.width, first.frame.height], [384, 512]);
  assert.ok(Math.abs(Date.parse(first.frame.capturedAt) - Date.now()) < 5000);
  assert.equal(first.topic, 'kept', 'the trigger message properties are kept');
  assert.equal((await trigger()).frame.origin, path.join(dir, 'img10.jpg'));
  const third = await trigger();
  assert.equal(third.frame.origin, path.join(dir, 'sub', 'img1.png'));
  assert.ok(isJpeg(third.payload), 'PNG frames are converted to JPEG');
  // played once: the folder is exhausted, further triggers produce nothing
  const none = nextMessage(helper.getNode('out'), 500).then(() => 'frame', () => 'nothing');
  helper.getNode('cam').receive({});
  assert.equal(await none, 'nothing');
});

test('a looping folder emits on its interval and starts again', async () => {
  const dir = tmpDir();
  fs.copyFileSync(photos[0].file, path.join(dir, 'a.jpg'));
  fs.copyFileSync(photos[1].file, path.join(dir, 'b.jpg'));
  await cameraFlow({ source: dir, interval: 50, loop: true });
  const origins = [];
  helper.getNode('out').on('input', (m) => origins.push(path.basename(m.frame.origin)));
  const deadline = Date.now() + 5000;
  while (origins.length < 5 && Date.now() < deadline) await sleep(20);
  assert.deepEqual(origins.slice(0, 5), ['a.jpg', 'b.jpg', 'a.jpg', 'b.jpg', 'a.jpg']);
});

test('a stop command pauses the interval and start resumes it', async () => {
  await cameraFlow({ source: '', interval: 50 });
  await nextMessage(helper.getNode('out'));
  helper.getNode('cam').receive({ command: 'stop' });
  await sleep(100);
  let count = 0;
  helper.getNode('out').on('input', () => count++);
  await sleep(200);
  assert.equal(count, 0);
  helper.getNode('cam').receive({ command: 'start' });
  await nextMessage(helper.getNode('out'));
});

test('a single file is read at every capture', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'latest.jpg');
  fs.copyFileSync(photos[0].file, file);
  await cameraFlow({ source: file });
  const a = await trigger();
  fs.copyFileSync(photos[1].file, file);
  const b = await trigger();
  assert.equal(a.frame.source, 'file');
  assert.equal(a.frame.origin, file);
  assert.ok(a.payload.equals(fs.readFileSync(photos[0].file)));
  assert.ok(b.payload.equals(fs.readFileSync(photos[1].file)));
});

test('the test pattern needs no camera', async () => {
  await cameraFlow({ source: '', patternWidth: 320, patternHeight: 240 });
  const msg = await trigger();
  assert.ok(isJpeg(msg.payload));
  assert.equal(msg.frame.source, 'pattern');
  assert.deepEqual([msg.frame.width, msg.frame.height], [320, 240]);
  assert.equal((await trigger()).frame.origin, 'test-pattern:1');
});

test('a missing source is a clear, catchable error', async () => {
  await cameraFlow({ source: '/no/such/folder' });
  const caught = nextMessage(helper.getNode('errors'));
  helper.getNode('cam').receive({});
  assert.match((await caught).error.message, /camera source "\/no\/such\/folder" does not exist: expected a folder, an image file, an http\(s\) snapshot or MJPEG URL, rtsp:\/\/\.\.\., \/dev\/videoN/);
});

/**
 * A snapshot camera that records the headers of every request. It asks for Basic, or for Digest with
 * `digest: true`; /slow.jpg never answers and /trickle.jpg sends one byte every 300 ms, forever.
 */
function snapshotServer(image, { digest = false } = {}) {
  const requests = [];
  const nonce = crypto.randomBytes(8).toString('hex');
  const md5 = (text) => crypto.createHash('md5').update(text).digest('hex');
  const server = http.createServer((req, res) => {
    const record = { url: req.url, auth: req.headers.authorization, aborted: false };
    requests.push(record);
    req.on('close', () => { if (!res.writableEnded) record.aborted = true; });
    if (req.url === '/slow.jpg') return; // never answers
    if (req.url === '/trickle.jpg') {
      res.writeHead(200, { 'Content-Type': 'image/jpeg', 'Content-Length': String(image.length) });
      let sent = 0;
      const timer = setInterval(() => { if (sent < image.length) res.write(image.subarray(sent, ++sent)); }, 300);
      res.on('close', () => clearInterval(timer));
      return;
    }
    const auth = req.headers.authorization ?? '';
    let accepted;
    if (digest) {
      const p = Object.fromEntries([...auth.matchAll(/(\w+)="?([^",]+)"?/g)].map((m) => [m[1], m[2]]));
      const expected = md5(`${md5('operator:cam:s3cret')}:${nonce}:${p.nc}:${p.cnonce}:auth:${md5(`GET:${req.url}`)}`);
      accepted = auth.startsWith('Digest ') && p.username === 'operator' && p.response === expected;
    } else {
      accepted = auth === 'Basic ' + Buffer.from('operator:s3cret').toString('base64');
    }
    if (!accepted) {
      res.writeHead(401, { 'WWW-Authenticate': digest ? `Digest realm="cam", qop="auth", nonce="${nonce}", algorithm=MD5` : 'Basic realm="cam"' });
      return res.end();
    }
    res.writeHead(200, { 'Content-Type': 'image/jpeg' });
    res.end(image);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  })));
}

/** Records every status text node `id` shows from now on, through the runtime's Node class. */
function recordStatuses(id) {
  const NodeClass = require('@node-red/runtime/lib/nodes/Node');
  const original = NodeClass.prototype.status;
  const shown = [];
  NodeClass.prototype.status = function (s) {
    if (this.id === id) shown.push(s.text ?? '');
    return original.call(this, s);
  };
  shown.stop = () => { NodeClass.prototype.status = original; };
  return shown;
}

/** Records every status the camera node shows. */
function statuses(id = 'cam') {
  const cam = helper.getNode(id);
  const shown = [];
  const original = cam.status.bind(cam);
  cam.status = (s) => {
    shown.push(s.text ?? '');
    return original(s);
  };
  return shown;
}

test('credentials go out only when asked over http, pre-emptively only over https, and a refusal is final', () => {
  const plain = new HttpCameraAuth('operator', 's3cret', false);
  assert.equal(plain.header('GET', '/a.jpg'), undefined, 'nothing before the camera asks');
  assert.equal(plain.challenge(['Basic realm="cam"'], false), 'retry');
  assert.equal(plain.header('GET', '/a.jpg'), 'Basic ' + Buffer.from('operator:s3cret').toString('base64'));
  assert.equal(plain.challenge(['Basic realm="cam"'], true), 'refused', 'Basic sent and refused');
  const digest = new HttpCameraAuth('operator', 's3cret', false);
  assert.equal(digest.challenge(['Basic realm="cam"', 'Digest realm="cam", nonce="n1", qop="auth"'], false), 'retry');
  assert.match(digest.header('GET', '/a.jpg'), /^Digest .*nc=00000001/, 'Digest preferred when both are offered');
  assert.match(digest.header('GET', '/a.jpg'), /nc=00000002/, 'the nonce count grows');
  assert.equal(digest.challenge(['Digest realm="cam", nonce="n2", qop="auth"'], true), 'retry', 'a new nonce is answered');
  assert.equal(digest.challenge(['Digest realm="cam", nonce="n2", qop="auth"'], true), 'refused', 'the same nonce refused twice is final');
  assert.equal(digest.challenge(['Digest realm="cam", nonce="n2", qop="auth", stale=true'], true), 'retry', 'a stale nonce is renewed');
  const secure = new HttpCameraAuth('operator', 's3cret', true);
  assert.match(secure.header('GET', '/a.jpg'), /^Basic /, 'pre-emptive Basic over https');
  assert.equal(new HttpCameraAuth(undefined, '', false).challenge(['Basic realm="cam"'], false), 'no-credentials');
  assert.equal(plain.challenge(['NTLM'], false), 'refused', 'a scheme we cannot answer');
});

test('the capture deadline is 3 intervals, at least 10 s and the idle timeout, at most 10 min', () => {
  assert.equal(captureDeadlineMs(100, 2000), 10_000);
  assert.equal(captureDeadlineMs(0, 5000), 10_000);
  assert.equal(captureDeadlineMs(60_000, 5000), 180_000);
  assert.equal(captureDeadlineMs(1000, 30_000), 30_000);
  assert.equal(captureDeadlineMs(3_600_000, 5000), 600_000);
  assert.deepEqual(readCameraTiming({ interval: '${SORTER_INTERVAL_MS}' }), { intervalMs: 1000, timeoutMs: 5000, watchdogMs: 10_000, maxFps: 0, captureDeadlineMs: 10_000 });
  assert.equal(readCameraTiming({ interval: '0' }).intervalMs, 0);
  assert.throws(() => readCameraTiming({ interval: 49 }), /^Error: Expected interval of at least 50 ms \(or 0: capture only when a message arrives\) but received 49$/);
  assert.throws(() => readCameraTiming({ watchdog: 100 }), /^Error: Expected watchdog of at least 500 ms but received 100$/);
  assert.throws(() => readCameraTiming({ maxFps: 500 }), /Expected maxFps of at most 120 frames per second \(0: twice the emission rate\) but received 500/);
});

test('a snapshot over plain HTTP sends no credentials until the camera asks, then Basic as asked', async () => {
  const image = fs.readFileSync(photos[0].file);
  const server = await snapshotServer(image);
  try {
    await cameraFlow({ source: `${server.url}/snapshot.jpg` }, { user: 'operator', password: 's3cret' });
    const msg = await trigger();
    assert.ok(msg.payload.equals(image));
    assert.equal(msg.frame.source, 'url');
    assert.equal(msg.frame.origin, `${server.url}/snapshot.jpg`);
    await trigger();
    const basic = 'Basic ' + Buffer.from('operator:s3cret').toString('base64');
    // The first request goes out bare; once the camera has asked for Basic, each frame is one request.
    assert.deepEqual(server.requests.map((r) => r.auth), [undefined, basic, basic]);
  } finally {
    await server.close();
  }
});

test('a Digest snapshot camera gets a digest answer and never the password in Basic', async () => {
  const image = fs.readFileSync(photos[1].file);
  const server = await snapshotServer(image, { digest: true });
  try {
    await cameraFlow({ source: `${server.url}/snapshot.jpg` }, { user: 'operator', password: 's3cret' });
    assert.ok((await trigger()).payload.equals(image));
    assert.ok((await trigger()).payload.equals(image));
    assert.equal(server.requests[0].auth, undefined, 'nothing is sent before the challenge');
    assert.ok(server.requests.slice(1).every((r) => /^Digest username="operator"/.test(r.auth)), server.requests.map((r) => r.auth).join(' | '));
    assert.ok(server.requests.every((r) => !/^Basic/i.test(r.auth ?? '') && !(r.auth ?? '').includes('s3cret')));
    await helper.unload();
    await cameraFlow({ source: `${server.url}/snapshot.jpg` }, { user: 'operator', password: 'wrong' });
    const caught = nextMessage(helper.getNode('errors'));
    helper.getNode('cam').receive({});
    assert.match((await caught).error.message, /answered HTTP 401 \(check the user name and password\)/);
  } finally {
    await server.close();
  }
});

test('a snapshot that trickles a byte every 300 ms is aborted at the capture deadline, and skipped ticks show', async () => {
  const server = await snapshotServer(fs.readFileSync(photos[0].file));
  try {
    // interval 100 ms: deadline max(10 s, 3 x 100 ms, timeout 2 s) = 10 s; the idle timeout never trips.
    await cameraFlow({ source: `${server.url}/trickle.jpg`, interval: 100 });
    const shown = statuses();
    const startedAt = Date.now();
    const caught = await nextMessage(helper.getNode('errors'), 40_000);
    const tookMs = Date.now() - startedAt;
    console.log(`# trickling snapshot aborted after ${(tookMs / 1000).toFixed(1)} s`);
    assert.match(caught.error.message, /capture from http:\/\/127\.0\.0\.1:\d+\/trickle\.jpg did not finish within the 10000 ms capture deadline \(3 intervals, at least 10 s and the timeout\): aborted; \d+ ticks were skipped meanwhile/);
    assert.ok(tookMs >= 9500, `the deadline is the overall limit, not earlier (${tookMs} ms)`);
    assert.equal(caught.payload.camera, 'belt-3');
    await until(() => server.requests[0].aborted, 5000, 'the server to see the request aborted');
    const busy = shown.filter((t) => /^capture busy for \d+\.\d s: skipped \d+ ticks$/.test(t));
    assert.ok(busy.length >= 3, `skipped ticks are shown while the capture hangs: ${shown.slice(0, 5).join(' | ')}`);
    assert.ok(Number(/skipped (\d+)/.exec(busy[busy.length - 1])[1]) >= 10, busy[busy.length - 1]);

    // Undeployed in the middle of a capture: the request is aborted at once and nothing follows.
    await helper.unload();
    const before = server.requests.length;
    await cameraFlow({ source: `${server.url}/trickle.jpg`, interval: 100 });
    await until(() => server.requests.length === before + 1, 5000, 'the capture of the new deploy to start');
    await sleep(500);
    await helper.unload();
    await until(() => server.requests[before].aborted, 2000, 'the request to be aborted by the close');
    await sleep(500);
    assert.equal(server.requests.length, before + 1, 'no request after the node closed');
  } finally {
    await server.close();
  }
});

test('an interval below 50 ms is refused, naming the setting, what was expected and what came', async () => {
  // The status is set while the node starts, before any test hook on the instance: record it at the runtime.
  const shown = recordStatuses('cam');
  try {
    await cameraFlow({ source: '', interval: 1 });
  } finally {
    shown.stop();
  }
  const cam = helper.getNode('cam');
  let frames = 0;
  helper.getNode('out').on('input', () => frames++);
  const caught = nextMessage(helper.getNode('errors'));
  cam.receive({});
  // (Node-RED prefixes the error's name to messages passed to done(err))
  assert.match((await caught).error.message, /^(Error: )?camera not started: Expected interval of at least 50 ms \(or 0: capture only when a message arrives\) but received 1$/);
  assert.ok(shown.some((t) => /^Expected interval of at least 50 ms .* but received 1$/.test(t)), `the status says it: ${shown.join(' | ')}`);
  await sleep(300);
  assert.equal(frames, 0, 'a refused camera captures nothing');
  await helper.unload();
  await cameraFlow({ source: '', timeout: 'soon' });
  const caught2 = nextMessage(helper.getNode('errors'));
  helper.getNode('cam').receive({});
  assert.match((await caught2).error.message, /camera not started: Expected timeout to be a number of ms but received "soon"$/);
});

test('a missing folder on a fast interval raises its error about once a second, repeats counted in the status', async () => {
  await cameraFlow({ source: '/no/such/folder', interval: 50 });
  const shown = statuses();
  const caught = [];
  helper.getNode('errors').on('input', (m) => caught.push(m));
  await sleep(3000);
  const ticks = shown.filter((t) => /does not exist/.test(t)).length;
  assert.ok(ticks >= 15, `${ticks} failing ticks in 3 s`);
  assert.ok(caught.length >= 1 && caught.length <= 5, `${caught.length} errors raised in 3 s (at most one a second, plus slack)`);
  assert.ok(caught.every((m) => /camera source "\/no\/such\/folder" does not exist/.test(m.error.message)));
  const last = shown[shown.length - 1];
  const count = Number(/\(x(\d+)\)$/.exec(last)?.[1]);
  assert.ok(count >= 15, `the status counts the repeats: "${last}"`);

  // Triggered captures: every message completes, only the first of a burst is raised.
  await helper.unload();
  await loadFlow(helper, [...nodes, coreNode('common/24-complete.js')], [
    { id: 'tab', type: 'tab' },
    { id: 'cam', type: 'ml-camera', z: 'tab', source: '/no/such/folder', interval: 0, wires: [['out']] },
    { id: 'out', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
    { id: 'complete', type: 'complete', z: 'tab', scope: ['cam'], wires: [['completed']] },
    { id: 'completed', type: 'helper', z: 'tab' },
  ]);
  const caughtNow = [];
  const completed = [];
  helper.getNode('errors').on('input', (m) => caughtNow.push(m.n));
  helper.getNode('completed').on('input', (m) => completed.push(m.n));
  for (let i = 0; i < 100; i++) helper.getNode('cam').receive({ n: i });
  await until(() => caughtNow.length + completed.length >= 100, 10_000, 'every trigger to complete or fail');
  assert.ok(caughtNow.length >= 1 && caughtNow.length <= 3, `${caughtNow.length} errors raised for 100 failing triggers`);
  assert.equal(caughtNow.length + completed.length, 100, 'each message either completes or is raised, none is lost');
});

test('credentials in the URL are used but never shown in frame.origin', async () => {
  const server = await snapshotServer(fs.readFileSync(photos[0].file));
  try {
    const withCreds = server.url.replace('http://', 'http://operator:s3cret@') + '/snapshot.jpg';
    await cameraFlow({ source: withCreds });
    const msg = await trigger();
    assert.equal(msg.frame.origin, `${server.url}/snapshot.jpg`);
    assert.doesNotMatch(JSON.stringify(msg.frame), /s3cret/);
  } finally {
    await server.close();
  }
});

test('wrong credentials, a silent camera and a closed port each say what to fix', async () => {
  const server = await snapshotServer(fs.readFileSync(photos[0].file));
  try {
    await cameraFlow({ source: `${server.url}/snapshot.jpg` }, { user: 'operator', password: 'wrong' });
    let caught = nextMessage(helper.getNode('errors'));
    helper.getNode('cam').receive({});
    assert.match((await caught).error.message, /answered HTTP 401 \(check the user name and password\)/);
    await helper.unload();

    await cameraFlow({ source: `${server.url}/slow.jpg`, timeout: 300 });
    caught = nextMessage(helper.getNode('errors'));
    helper.getNode('cam').receive({});
    assert.match((await caught).error.message, /did not answer within 300 ms/);
    await helper.unload();
  } finally {
    await server.close();
  }
  await cameraFlow({ source: `${server.url}/snapshot.jpg` });
  const caught = nextMessage(helper.getNode('errors'));
  helper.getNode('cam').receive({});
  assert.match((await caught).error.message, /ECONNREFUSED.*nothing listens there/);
});

test('no promise rejection went unhandled in these tests', () => {
  assert.deepEqual(unhandled.map(String), []);
});
