// Many cameras in a real Node-RED runtime: one ml-camera node running a list of cameras (folders of
// real photos, an MJPEG camera on loopback), and separate camera nodes, ticking on their own phases.
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { loggedBy, node, coreNode, redHelper, loadFlow, tmpDir, validationPhotos, freePort, nextMessage, sleep, until, mjpegCamera } = require('./helpers');
const { phaseOffset } = require('../nodes/ml-camera/tick-schedule');

const helper = redHelper();
const unhandled = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));
const nodes = [node('ml-camera'), coreNode('common/25-catch.js')];
const photos = validationPhotos(2);

before(() => new Promise((resolve) => helper.startServer(resolve)));
afterEach(() => helper.unload());
after(() => new Promise((resolve) => helper.stopServer(resolve)));

// ---- a node with a list -----------------------------------------------------------------------

/** A folder per camera, each holding its own real photos (so frame.origin tells the cameras apart). */
function photoFolders(ids, perFolder = 3) {
  return Object.fromEntries(ids.map((id, i) => {
    const dir = tmpDir(`cameras-${id}-`);
    for (let k = 0; k < perFolder; k++) fs.symlinkSync(photos[(i * perFolder + k) % photos.length].file, path.join(dir, `${id}-${k}.jpg`));
    return [id, dir];
  }));
}

function listFlow(camera, extra = []) {
  return loadFlow(helper, nodes, [
    { id: 'tab', type: 'tab' },
    { id: 'cam', type: 'ml-camera', z: 'tab', cameraId: 'cam1', sourceType: 'auto', source: '', interval: 0, loop: true, recursive: true, timeout: 2000, watchdog: 1000, ...camera, wires: [['out'], ['events']] },
    { id: 'out', type: 'helper', z: 'tab' },
    { id: 'events', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
    ...extra,
  ]);
}

function recorder(id) {
  const got = [];
  helper.getNode(id).on('input', (m) => got.push({ ...m, receivedAt: Date.now() }));
  return got;
}

/** How far past its camera's phase each frame came, in ms (-interval/2 .. interval/2). */
function pastPhase(receivedAt, phase, interval) {
  const o = (((receivedAt - phase) % interval) + interval) % interval;
  return o > interval / 2 ? o - interval : o;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Circular distance of two phases within an interval. */
const apart = (a, b, interval) => Math.min(Math.abs(a - b), interval - Math.abs(a - b));

/** Checks that every camera's frames came at its own phase, and that the cameras did not tick together. */
function assertSpread(frames, ids, interval) {
  const when = {};
  for (const id of ids) {
    const mine = frames.filter((m) => m.frame.camera === id);
    const past = mine.map((m) => pastPhase(m.receivedAt, phaseOffset(id, interval), interval));
    when[id] = (phaseOffset(id, interval) + median(past) + interval) % interval;
    assert.ok(median(past) >= -2 && median(past) < 60, `${id}'s frames come at its phase ${phaseOffset(id, interval)} ms: ${past.join(', ')} ms after it`);
  }
  for (const a of ids) {
    for (const b of ids) {
      if (a < b) assert.ok(apart(when[a], when[b], interval) >= 40, `${a} (at ${when[a]} ms) and ${b} (at ${when[b]} ms) tick apart`);
    }
  }
  return when;
}

test('one node, three cameras: each its own seq, frame.camera and topic, ticking on its own phase', async () => {
  const ids = ['belt1', 'belt2', 'belt3'];
  const interval = 400; // phases 86, 359 and 256 ms
  const dirs = photoFolders(ids);
  await listFlow({ cameras: ids.map((id) => `${id}=${dirs[id]}`).join(','), interval });
  const out = recorder('out');
  const errors = recorder('errors');
  await until(() => ids.every((id) => out.filter((m) => m.frame.camera === id).length >= 5), 10_000, 'five frames from each camera');
  await helper.unload();
  const received = out.length;
  await sleep(2 * interval);
  assert.equal(out.length, received, 'no frame after the node closed');
  assert.deepEqual(errors.map((e) => e.error.message), []);
  for (const id of ids) {
    const mine = out.filter((m) => m.frame.camera === id);
    assert.deepEqual(mine.map((m) => m.frame.seq), mine.map((_, i) => i + 1), `${id} numbers its own frames from 1`);
    assert.ok(mine.every((m) => m.topic === id && m.frame.source === 'folder' && m.payload[0] === 0xff && m.payload[1] === 0xd8));
    assert.deepEqual(mine.slice(0, 4).map((m) => path.basename(m.frame.origin)), [`${id}-0.jpg`, `${id}-1.jpg`, `${id}-2.jpg`, `${id}-0.jpg`], `${id} plays its own folder`);
    for (const key of ['camera', 'seq', 'capturedAt', 'width', 'height', 'origin', 'source']) assert.ok(key in mine[0].frame, `frame.${key}`);
    assert.deepEqual(Object.keys(mine[0].frame), ['camera', 'seq', 'capturedAt', 'width', 'height', 'origin', 'source'], 'the same frame as a single camera');
  }
  const when = assertSpread(out, ids, interval);
  console.log(`# three cameras of one node tick at ${ids.map((id) => `${id} ${when[id]} ms`).join(', ')} of each ${interval} ms`);
});

test('separate camera nodes deployed together tick on their own phases too', async () => {
  const ids = ['line-a', 'line-b', 'line-c'];
  const interval = 300; // phases 22, 120 and 199 ms
  const dirs = photoFolders(ids);
  const cam = (id) => ({ id: `node-${id}`, type: 'ml-camera', z: 'tab', cameraId: id, source: dirs[id], interval, loop: true, wires: [['out']] });
  await loadFlow(helper, nodes, [{ id: 'tab', type: 'tab' }, ...ids.map(cam), { id: 'out', type: 'helper', z: 'tab' }]);
  const out = recorder('out');
  await until(() => ids.every((id) => out.filter((m) => m.frame.camera === id).length >= 5), 10_000, 'five frames from each node');
  const when = assertSpread(out, ids, interval);
  console.log(`# three camera nodes tick at ${ids.map((id) => `${id} ${when[id]} ms`).join(', ')} of each ${interval} ms`);
});

test('a camera id used by two camera nodes is warned about, naming the other node; gone once a redeploy gives each its own', async () => {
  const dirs = photoFolders(['first', 'second']);
  const flow = (secondId, secondNode = 'second') => [
    { id: 'tab', type: 'tab' },
    // A copied node keeps the default id, cam1: its frames would mix with the first one's.
    { id: 'first', type: 'ml-camera', z: 'tab', name: 'belt camera', cameraId: '', source: dirs.first, interval: 0, wires: [[]] },
    { id: secondNode, type: 'ml-camera', z: 'tab', cameraId: '', cameras: `${secondId}=${dirs.second}`, interval: 0, wires: [[]] },
  ];
  const warnings = (id) => loggedBy(helper, id, 'WARN');
  await loadFlow(helper, nodes, flow('cam1'));
  assert.deepEqual(warnings('first'), []);
  assert.deepEqual(warnings('second'), ['camera id "cam1" is also used by ml-camera "belt camera" (first): frames are told apart by camera id ' +
    "(queues, routing, tracking, topics), so these cameras' frames mix; give each camera its own id"]);
  // A "nodes" deploy restarts only the edited node: the first one's id is still known, the old second one's released.
  helper.log().resetHistory();
  await helper.setFlows(flow('belt2'), 'nodes');
  await sleep(100);
  assert.deepEqual([...warnings('first'), ...warnings('second')], [], 'no warning once the ids differ');
  // The second node deleted and a third added with cam1: only the first one is named (ids of closed nodes are released).
  await helper.setFlows(flow('cam1', 'third'), 'nodes');
  await until(() => warnings('third').length === 1, 2000, 'the warning again for the shared id');
  assert.match(warnings('third')[0], /^camera id "cam1" is also used by ml-camera "belt camera" \(first\): /);
});

test('a message captures from every camera of the list, or the one msg.camera names', async () => {
  const ids = ['belt1', 'belt2', 'belt3'];
  const dirs = photoFolders(ids);
  await listFlow({ cameras: `[${ids.map((id) => JSON.stringify({ id, source: dirs[id] })).join(',')}]` });
  const out = recorder('out');
  const cam = helper.getNode('cam');
  cam.receive({ topic: 'kept', trigger: 1 });
  await until(() => out.length === 3, 5000, 'a frame from each camera');
  assert.deepEqual(out.map((m) => m.frame.camera).sort(), ids);
  assert.ok(out.every((m) => m.frame.seq === 1 && m.topic === 'kept' && m.trigger === 1), 'each is a copy of the trigger');
  cam.receive({ camera: 'belt2' });
  await until(() => out.length === 4, 5000, 'the frame of belt2');
  assert.equal(out[3].frame.camera, 'belt2');
  assert.equal(out[3].frame.seq, 2);
  assert.equal(out[3].topic, 'belt2');
  const caught = nextMessage(helper.getNode('errors'));
  cam.receive({ camera: 'belt9' });
  // (Node-RED prefixes the error's name to messages passed to done(err))
  assert.match((await caught).error.message, /^(Error: )?Expected msg\.camera to be one of belt1, belt2, belt3 but received "belt9"$/);
  await sleep(200);
  assert.equal(out.length, 4);
});

test('stop and start address every camera, or the one msg.camera names', async () => {
  const ids = ['belt1', 'belt2'];
  const dirs = photoFolders(ids);
  await listFlow({ cameras: ids.map((id) => `${id}=${dirs[id]}`).join('\n'), interval: 100 });
  const out = recorder('out');
  const cam = helper.getNode('cam');
  await until(() => ids.every((id) => out.some((m) => m.frame.camera === id)), 5000, 'frames from both');
  cam.receive({ command: 'stop', camera: 'belt1' });
  await sleep(150);
  let from = out.length;
  await sleep(400);
  assert.deepEqual([...new Set(out.slice(from).map((m) => m.frame.camera))], ['belt2'], 'only belt1 stopped');
  cam.receive({ command: 'stop' });
  await sleep(150);
  from = out.length;
  await sleep(400);
  assert.equal(out.length, from, 'all stopped');
  cam.receive({ command: 'start' });
  await until(() => ids.every((id) => out.slice(from).some((m) => m.frame.camera === id)), 5000, 'both again');
});

test('a bad camera list refuses to start, naming the entry', async () => {
  await listFlow({ cameras: 'belt1=/data/a,belt2', interval: 100 });
  const caught = nextMessage(helper.getNode('errors'));
  helper.getNode('cam').receive({});
  assert.match((await caught).error.message, /camera not started: cameras entry 2 \("belt2"\) is not id=source: expected id=source entries separated by commas/);
});

const liveCamera = (port) => mjpegCamera(port, photos.slice(0, 3).map((p) => fs.readFileSync(p.file)));

test('a live camera of the list has its own online and offline events and errors; the others go on', async () => {
  const dirs = photoFolders(['belt1']);
  const camera = await liveCamera(await freePort());
  try {
    await listFlow({ cameras: `belt1=${dirs.belt1},belt2=${camera.url}`, interval: 200, watchdog: 800 });
    const out = recorder('out');
    const events = recorder('events');
    const errors = recorder('errors');
    const shown = [];
    const node = helper.getNode('cam');
    const status = node.status.bind(node);
    node.status = (s) => { shown.push(s); return status(s); };
    await until(() => out.filter((m) => m.frame.camera === 'belt2').length >= 2, 8000, 'frames from the MJPEG camera');
    assert.deepEqual(events.map((e) => [e.topic, e.payload.event, e.payload.camera, e.payload.source]), [['belt2/online', 'online', 'belt2', 'mjpeg']]);
    await until(() => shown.some((s) => s.text?.startsWith('2 cameras · 2 online')), 3000, 'the status to count both online');

    await camera.close();
    await until(() => events.some((e) => e.payload.event === 'offline'), 8000, 'the offline event');
    const offline = events.find((e) => e.payload.event === 'offline');
    assert.equal(offline.topic, 'belt2/offline');
    assert.equal(offline.payload.camera, 'belt2');
    await until(() => errors.length > 0, 5000, 'the error');
    assert.match(errors[0].error.message, /^camera belt2: MJPEG stream http:\/\/127\.0\.0\.1:\d+\/video\.mjpg/);
    assert.equal(errors[0].payload.camera, 'belt2');
    assert.equal(errors[0].topic, 'belt2/error');
    await until(() => shown.some((s) => /^2 cameras · 1 online · offline: belt2/.test(s.text)), 3000, 'the status to name belt2 offline');
    assert.equal(shown[shown.length - 1].fill, 'yellow');
    const belt1Before = out.filter((m) => m.frame.camera === 'belt1').length;
    await sleep(600);
    const belt1 = out.filter((m) => m.frame.camera === 'belt1');
    assert.ok(belt1.length >= belt1Before + 2, 'belt1 goes on while belt2 is offline');
    assert.deepEqual(belt1.map((m) => m.frame.seq), belt1.map((_, i) => i + 1));
  } finally {
    await camera.close();
  }
});

test('closing the node stops every camera of the list: no connection, timer or frame is left', async () => {
  const dirs = photoFolders(['belt1', 'belt3']);
  const camera = await liveCamera(await freePort());
  try {
    await listFlow({ cameras: `belt1=${dirs.belt1},belt2=${camera.url},belt3=${dirs.belt3}`, interval: 100 });
    const out = recorder('out');
    await until(() => ['belt1', 'belt2', 'belt3'].every((id) => out.some((m) => m.frame.camera === id)), 8000, 'frames from all three');
    assert.equal(camera.sockets.size, 1, 'one connection to the MJPEG camera');
    await helper.unload();
    const count = out.length;
    await until(() => camera.sockets.size === 0, 2000, 'the MJPEG connection to close');
    await sleep(400);
    assert.equal(out.length, count, 'nothing after close');
    assert.equal(camera.sockets.size, 0, 'no reconnection after close');
  } finally {
    await camera.close();
  }
});

test('no promise rejection went unhandled in these tests', () => {
  assert.deepEqual(unhandled.map(String), []);
});
