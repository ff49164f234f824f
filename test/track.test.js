// ml-track in a real Node-RED runtime (node-red-node-test-helper): items, counts per period, frames
// with track ids for ml-annotate, bad input, and the counts of the period when the node is redeployed,
// stopped or deleted. Then the counting flow as shipped, with a small detector, publishing over MQTT.
const { test, before, after, afterEach, beforeEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { ROOT, node, coreNode, redHelper, loadFlow, nextMessage, sleep, until, startAedes, collect } = require('./helpers');
const { overlayFor } = require('../nodes/lib/annotate');

const helper = redHelper();
const nodes = [node('ml-track'), node('ml-annotate'), coreNode('common/25-catch.js')];
const T0 = Date.parse('2026-11-27T10:00:00.000Z');

// Each test its own tracker id: a stopped tracker's counts are sent by the next node with its id.
let trackId;
let tests = 0;
before(() => new Promise((resolve) => helper.startServer(resolve)));
beforeEach(() => { trackId = `track${++tests}`; });
afterEach(() => helper.unload());
after(() => new Promise((resolve) => helper.stopServer(resolve)));

/** ml-track wired to three helper nodes (items, counts, frames) and a Catch. */
function trackFlow(settings = {}) {
  return [
    { id: 'tab', type: 'tab' },
    { id: trackId, type: 'ml-track', z: 'tab', mode: 'line', direction: 'left-to-right', line: 0.5, minHits: 2, maxMissed: 2, maxDistance: 1.5,
      reportEvery: 0, ...settings, wires: [['items'], ['counts'], ['frames']] },
    { id: 'items', type: 'helper', z: 'tab' },
    { id: 'counts', type: 'helper', z: 'tab' },
    { id: 'frames', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ].map((n) => (n.type === 'tab' ? n : { x: 100, y: 100, wires: [], ...n }));
}

/** What ml-camera and ml-inference put on a message: one 80 x 60 item per [label, score, x, y]. */
function frameMessage(seq, items, camera = 'belt1') {
  return {
    frame: { camera, seq, capturedAt: new Date(T0 + seq * 1000).toISOString(), width: 640, height: 480, origin: 'test', source: 'pattern' },
    payload: { detections: items.map(([label, score, x, y]) => ({ label, score, index: 0, box: { x, y, w: 80, h: 60 } })), count: items.length },
  };
}

/** Collects what a helper node receives. */
function received(id) {
  const list = [];
  helper.getNode(id).on('input', (msg) => list.push(msg));
  return list;
}

/** Sends frames one by one, each after the previous one came out of the frames output. */
async function feed(messages) {
  for (const msg of messages) {
    const out = nextMessage(helper.getNode('frames'));
    helper.getNode(trackId).receive(msg);
    await out;
  }
}

// A plastic bottle riding the belt 60 px a frame: its centre crosses x = 320 in frame 5.
const riding = (label, seqs, camera) => seqs.map((seq, i) => frameMessage(seq, [[label, 0.9, 80 + 60 * i, 200]], camera));
const bottle = (seqs, camera) => riding('plastic', seqs, camera);

test('an item seen in 8 frames is sent once, with its id and fields; frames carry track ids that ml-annotate draws', async () => {
  await loadFlow(helper, nodes, trackFlow());
  const items = received('items');
  const frames = received('frames');
  await feed(bottle([1, 2, 3, 4, 5, 6, 7, 8]));
  assert.equal(items.length, 1);
  assert.deepEqual(items[0].payload, {
    id: `belt1-${T0 + 5000}-5-t1`, camera: 'belt1', track: 1, label: 'plastic', score: 0.9,
    box: { x: 320, y: 200, w: 80, h: 60 }, frameSeq: 5, capturedAt: new Date(T0 + 5000).toISOString(),
  });
  assert.equal(items[0].frame.camera, 'belt1');
  assert.equal(frames.length, 8);
  const last = frames.at(-1);
  assert.equal(last.payload.detections[0].track, 1);
  assert.equal(last.annotations[0].label, '#1 plastic 90%');
  assert.deepEqual(last.tracks.map((t) => [t.track, t.label, t.hits, t.counted]), [[1, 'plastic', 8, true]]);
  assert.equal(overlayFor(last.payload).shapes[0].label, '#1 plastic 90%', 'ml-annotate draws the track id');
});

test('counts are reported per camera every period, zeros for a camera that sent frames', async () => {
  await loadFlow(helper, nodes, trackFlow({ reportEvery: 1 }));
  const counts = received('counts');
  const started = Date.now();
  await feed([...bottle([1, 2, 3, 4, 5, 6], 'belt1'), frameMessage(1, [], 'belt2')]);
  await until(() => counts.length >= 2, 3000, 'the first report');
  const byCamera = Object.fromEntries(counts.map((m) => [m.payload.camera, m.payload]));
  assert.deepEqual(byCamera.belt1.counts, { plastic: 1 });
  assert.deepEqual(byCamera.belt2.counts, {});
  assert.equal(byCamera.belt1.from, byCamera.belt2.from);
  const from = Date.parse(byCamera.belt1.from);
  const to = Date.parse(byCamera.belt1.to);
  assert.ok(from >= started - 1000 && to - from >= 900 && to - from <= 1500, `a period of about 1 s: ${byCamera.belt1.from} - ${byCamera.belt1.to}`);
  // Next period: belt1 sends one frame and gets a report of nothing counted; belt2 sent none, so none.
  await feed(bottle([7]));
  await until(() => counts.length >= 3, 3000, 'the second report');
  assert.deepEqual(counts.slice(2).map((m) => [m.payload.camera, m.payload.counts, m.payload.from]), [['belt1', {}, byCamera.belt1.to]]);
});

test('bad input is an error naming the field, and the node goes on', async () => {
  await loadFlow(helper, nodes, trackFlow());
  const track = helper.getNode(trackId);
  const errorOf = async (msg) => {
    const caught = nextMessage(helper.getNode('errors'));
    track.receive(msg);
    return (await caught).error.message;
  };
  assert.match(await errorOf({ payload: 'plastic' }), /Expected msg.payload to be one frame's detections \{detections: \[...\]\} from ml-inference \(output: detection\) but received a string/);
  assert.match(await errorOf({ payload: { label: 'glass', score: 0.9 } }), /but received msg.payload.detections undefined/);
  assert.match(await errorOf({ payload: [{ detections: [] }] }), /received an array \(a batch of 1 results\)/);
  const noBox = frameMessage(1, [['glass', 0.9, 10, 10]]);
  noBox.payload.detections[0].box.w = -3;
  assert.match(await errorOf(noBox), /Expected msg.payload.detections\[0\].box to be \{x, y, w, h\} in frame pixels with w and h above 0 but received \{"x":10,"y":10,"w":-3,"h":60\}/);
  const badScore = frameMessage(1, [['glass', 0.9, 10, 10]]);
  badScore.payload.detections[0].score = NaN;
  assert.match(await errorOf(badScore), /detections\[0\].score to be a number from 0 to 1 but received number NaN/);
  const noSize = frameMessage(1, []);
  delete noSize.frame.width;
  assert.match(await errorOf(noSize), /Expected msg.frame.width \(the frame's width in pixels, set by ml-camera\) to place the counting line but received undefined/);
  const items = received('items');
  await feed(bottle([1, 2, 3, 4, 5, 6]));
  assert.equal(items.length, 1, 'still counting');
});

test('a wrong setting stops the node with an error naming it; messages fail with it', async () => {
  await loadFlow(helper, nodes, trackFlow({ direction: 'sideways', minHits: '${TRACK_TEST_UNSET}' }));
  const caught = nextMessage(helper.getNode('errors'));
  helper.getNode(trackId).receive(frameMessage(1, []));
  assert.match((await caught).error.message, /tracking not started: Expected direction to be one of left-to-right, right-to-left, top-to-bottom, bottom-to-top but received "sideways"/);
  await helper.unload();
  process.env.TRACK_TEST_PERIOD = '0.5';
  try {
    await loadFlow(helper, nodes, trackFlow({ reportEvery: '${TRACK_TEST_PERIOD:-60}' }));
    const refused = nextMessage(helper.getNode('errors'));
    helper.getNode(trackId).receive(frameMessage(1, []));
    assert.match((await refused).error.message, /Expected reportEvery to be 0 \(only when stopped\) or 1 to 86400 seconds/);
  } finally {
    delete process.env.TRACK_TEST_PERIOD;
  }
});

test('the counts of the period so far are not lost on a redeploy (nodes or full), a stop and a start, or a deletion', async () => {
  await loadFlow(helper, nodes, trackFlow({ reportEvery: 3600 }));
  await feed(bottle([1, 2, 3, 4, 5, 6]));
  const first = received('counts');

  // Only the tracker redeployed ("modified nodes"): its successor reports the period once the flows run.
  await helper.setFlows(trackFlow({ reportEvery: 3600, name: 'renamed' }), 'nodes');
  await until(() => first.length >= 1, 3000, 'the report of the redeployed node');
  assert.equal(first.length, 1);
  assert.equal(first[0].payload.camera, 'belt1');
  assert.deepEqual(first[0].payload.counts, { plastic: 1 });
  assert.ok(Date.now() - Date.parse(first[0].payload.to) < 3000, 'up to the redeploy');

  // A full redeploy stops every node, the helpers too: the new nodes get the report.
  await feed(riding('glass', [11, 12, 13, 14, 15, 16]));
  await helper.setFlows(trackFlow({ reportEvery: 3600 }), 'full');
  const afterFull = received('counts');
  await until(() => afterFull.length >= 1, 3000, 'the report after a full deploy');
  assert.deepEqual(afterFull.map((m) => m.payload.counts), [{ glass: 1 }]);
  assert.equal(afterFull[0].payload.from, first[0].payload.to, 'periods follow on');

  // Node-RED stops: the report waits on disk in the user directory, and goes out at the next start.
  await feed(bottle([21, 22, 23, 24, 25, 26]));
  await helper.unload();
  const saved = path.join(helper.settings().userDir, 'ml-track', `${trackId}.json`);
  assert.deepEqual(JSON.parse(fs.readFileSync(saved, 'utf8')).map((r) => r.counts), [{ plastic: 1 }]);
  await loadFlow(helper, nodes, trackFlow({ reportEvery: 3600 }));
  const afterStart = received('counts');
  await until(() => afterStart.length >= 1, 3000, 'the report after a start');
  assert.deepEqual(afterStart.map((m) => m.payload.counts), [{ plastic: 1 }]);
  assert.equal(fs.existsSync(saved), false, 'sent once');

  // Deleted, with its helpers kept: sent at once.
  await feed(bottle([31, 32, 33, 34, 35, 36]));
  const kept = received('counts');
  await helper.setFlows(trackFlow().filter((n) => n.id !== trackId), 'nodes');
  await until(() => kept.length >= 1, 3000, 'the report of the deleted node');
  assert.deepEqual(kept.map((m) => m.payload.counts), [{ plastic: 1 }]);
  assert.equal(fs.existsSync(saved), false);
});

test('the counting flow as shipped: a detector on the test pattern, frames with track ids, counts published on the documented topic', async () => {
  const broker = await startAedes();
  const sub = await collect(broker.url, ['recycling/#'], 4);
  const variables = ['MQTT_URL', 'MQTT_PROTOCOL', 'SORTER_INTERVAL_MS', 'SORTER_CAMERA_ID', 'SORTER_COUNT_PERIOD_S', 'SORTER_DETECTOR', 'SORTER_SOURCE', 'SORTER_CAMERAS'];
  const saved = variables.map((name) => [name, process.env[name]]);
  Object.assign(process.env, {
    MQTT_URL: broker.url, MQTT_PROTOCOL: '3.1.1', SORTER_INTERVAL_MS: '250', SORTER_CAMERA_ID: 'belt9', SORTER_COUNT_PERIOD_S: '1',
    SORTER_DETECTOR: path.join(ROOT, 'test', 'fixtures', 'models', 'detect-yolov8.onnx'),
  });
  delete process.env.SORTER_SOURCE;
  delete process.env.SORTER_CAMERAS;
  try {
    const flow = JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'conveyor-counter.json'), 'utf8'));
    const model = flow.find((n) => n.type === 'ml-model');
    assert.equal(model.path, '${SORTER_DETECTOR:-bundled:conveyor-detector.onnx}');
    const types = new Set(flow.map((n) => n.type));
    const ours = Object.keys(require('../package.json')['node-red'].nodes);
    for (const t of types) assert.ok(ours.includes(t) || ['tab', 'comment', 'catch', 'debug'].includes(t), `${t} is a known type`);
    const flowNodes = ours.map((t) => node(t)).concat([coreNode('common/25-catch.js'), coreNode('common/21-debug.js'), coreNode('common/90-comment.js')]);
    flow.push({ id: 'annotated', type: 'helper', z: 'counter-tab' });
    flow.find((n) => n.id === 'counter-annotate').wires = [['annotated']];
    await loadFlow(helper, flowNodes, flow);
    const annotated = nextMessage(helper.getNode('annotated'), 30_000);
    const frame = await annotated;
    // The fixture detector finds the same boxes in every frame: each keeps its track from frame to frame.
    assert.ok(frame.payload.detections.length > 0);
    assert.ok(frame.payload.detections.every((d) => Number.isInteger(d.track)));
    assert.ok(Buffer.isBuffer(frame.annotated));
    const counts = await sub.waitFor(1, 10_000, (m) => m.topic === 'recycling/belt9/counts');
    const report = JSON.parse(counts[0].payload);
    assert.deepEqual(Object.keys(report).sort(), ['camera', 'counts', 'from', 'to']);
    assert.equal(report.camera, 'belt9');
    assert.deepEqual(report.counts, {}, 'boxes that stand still cross no line');
  } finally {
    for (const [name, value] of saved) if (value === undefined) delete process.env[name]; else process.env[name] = value;
    await sub.close();
    await helper.unload();
    await broker.close();
  }
});
