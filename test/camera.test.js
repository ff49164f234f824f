// ml-camera: folder, file, snapshot URL (real HTTP server on loopback) and test pattern sources.
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const http = require('http');
const path = require('path');
const sharp = require('sharp');
const { node, coreNode, redHelper, loadFlow, tmpDir, validationPhotos, nextMessage, sleep } = require('./helpers');
const { listImages } = require('../nodes/ml-camera/sources');

const helper = redHelper();
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
  await cameraFlow({ source: '', interval: 30 });
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

function snapshotServer(image) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ url: req.url, auth: req.headers.authorization });
    const expected = 'Basic ' + Buffer.from('operator:s3cret').toString('base64');
    if (req.url === '/slow.jpg') return; // never answers
    if (req.headers.authorization !== expected) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="cam"' });
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

test('a snapshot URL is fetched per frame with basic auth from the credentials', async () => {
  const image = fs.readFileSync(photos[0].file);
  const server = await snapshotServer(image);
  try {
    await cameraFlow({ source: `${server.url}/snapshot.jpg` }, { user: 'operator', password: 's3cret' });
    const msg = await trigger();
    assert.ok(msg.payload.equals(image));
    assert.equal(msg.frame.source, 'url');
    assert.equal(msg.frame.origin, `${server.url}/snapshot.jpg`);
    await trigger();
    assert.equal(server.requests.length, 2);
  } finally {
    await server.close();
  }
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
