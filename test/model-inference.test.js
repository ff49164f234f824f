// ml-model, ml-preprocess and ml-inference in a real Node-RED runtime with real sharp and onnxruntime.
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { monitorEventLoopDelay } = require('perf_hooks');
const { describeModel, readOnnxMetadataProps } = require('../nodes/lib/onnx-metadata');
const { MODEL, node, coreNode, redHelper, loadFlow, tmpDir, validationPhotos, nextMessage, sleep, until } = require('./helpers');

const helper = redHelper();
const nodes = [node('ml-model'), node('ml-preprocess'), node('ml-inference'), coreNode('common/25-catch.js'), coreNode('common/24-complete.js')];
const photo = fs.readFileSync(validationPhotos(1)[0].file);
const spec = describeModel(readOnnxMetadataProps(fs.readFileSync(MODEL))).preprocess;
const inputSize = 3 * spec.height * spec.width;
const inputTensor = (batch = 1) => ({ type: 'float32', dims: [batch, 3, spec.height, spec.width], data: new Float32Array(batch * inputSize) });

function pipeline({ modelPath = MODEL, modelExtra = {}, inferenceExtra = {} } = {}) {
  return [
    { id: 'tab', type: 'tab' },
    { id: 'model', type: 'ml-model', path: modelPath, labelSource: 'metadata', provider: 'cpu', watch: true, ...modelExtra },
    { id: 'pre', type: 'ml-preprocess', z: 'tab', model: 'model', settingsFrom: 'model', wires: [['infer']] },
    { id: 'infer', type: 'ml-inference', z: 'tab', model: 'model', topK: 3, policy: 'latest', queueSize: 1, wires: [['out']], ...inferenceExtra },
    { id: 'out', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, uncaught: false, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ];
}

const load = (flow) => loadFlow(helper, nodes, flow);

before(() => new Promise((resolve) => helper.startServer(resolve)));
afterEach(() => helper.unload());
after(() => new Promise((resolve) => helper.stopServer(resolve)));

test('a photo goes through preprocess and inference to a labelled prediction', async () => {
  await load(pipeline());
  const out = helper.getNode('out');
  const received = nextMessage(out, 20_000);
  helper.getNode('pre').receive({ payload: photo, frame: { camera: 'cam1', seq: 1 } });
  const msg = await received;
  const labels = ['cardboard', 'glass', 'metal', 'paper', 'plastic', 'trash'];
  assert.ok(labels.includes(msg.payload.label));
  assert.ok(msg.payload.score > 0 && msg.payload.score <= 1);
  assert.equal(msg.payload.topK.length, 3);
  assert.equal(msg.payload.topK[0].label, msg.payload.label);
  assert.ok(msg.payload.topK[0].score >= msg.payload.topK[1].score);
  assert.equal(labels[msg.payload.topK[0].index], msg.payload.label);
  assert.ok(Buffer.isBuffer(msg.image) && msg.image.equals(photo), 'the original JPEG travels on');
  assert.deepEqual(msg.frame, { camera: 'cam1', seq: 1 });
  assert.equal(msg.inference.model, 'waste-classifier.onnx');
  assert.ok(msg.inference.ms > 0);
  assert.deepEqual([msg.preprocess.width, msg.preprocess.height], [spec.width, spec.height]);
  assert.deepEqual([msg.preprocess.sourceWidth, msg.preprocess.sourceHeight], [384, 512]);
});

async function expectCaught(sendTo, msg, pattern) {
  const errors = helper.getNode('errors');
  const caught = nextMessage(errors, 20_000);
  helper.getNode(sendTo).receive(msg);
  const m = await caught;
  assert.match(m.error.message, pattern);
  return m;
}

test('a payload that is not an image is a catchable error and later frames still work', async () => {
  await load(pipeline());
  await expectCaught('pre', { payload: 'hello' }, /msg.payload must be an image Buffer/);
  await expectCaught('pre', { payload: Buffer.from('GIF89a nonsense') }, /not a decodable image/);
  await expectCaught('pre', { payload: photo.subarray(0, photo.length >> 1) }, /not a decodable image \(.*premature end/i);
  const received = nextMessage(helper.getNode('out'), 20_000);
  helper.getNode('pre').receive({ payload: photo });
  assert.ok((await received).payload.label);
});

test('a tensor of the wrong shape, or no tensor, is refused with both shapes named', async () => {
  await load(pipeline());
  await expectCaught('infer', { payload: { type: 'float32', dims: [1, 3, 100, 100], data: new Float32Array(30000) } },
    new RegExp(`input tensor float32 \\[1, 3, 100, 100\\] does not fit the model input "input" float32 \\[batch, 3, ${spec.height}, ${spec.width}\\]`));
  await expectCaught('infer', { payload: photo }, /must be a tensor.*pass it through ml-preprocess first/);
});

test('a missing model file is reported on every frame, clearly', async () => {
  await load(pipeline({ modelPath: '/nonexistent/model.onnx' }));
  await expectCaught('pre', { payload: photo }, /model file not found: \/nonexistent\/model.onnx/);
  await expectCaught('infer', { payload: { type: 'float32', dims: [1], data: [1] } }, /model file not found/);
});

test('a corrupt model file is refused with the reason', async () => {
  const dir = tmpDir();
  const garbage = path.join(dir, 'broken.onnx');
  fs.writeFileSync(garbage, Buffer.from('definitely not protobuf'.repeat(100)));
  await load(pipeline({ modelPath: garbage }));
  await expectCaught('pre', { payload: photo }, /broken.onnx is not a valid ONNX model/);
  const truncated = path.join(dir, 'truncated.onnx');
  fs.writeFileSync(truncated, fs.readFileSync(MODEL).subarray(0, 100_000));
  await helper.unload();
  await load(pipeline({ modelPath: truncated }));
  await expectCaught('pre', { payload: photo }, /truncated.onnx is not a valid ONNX model|onnxruntime could not load/);
});

test('labels that do not match the model outputs are refused', async () => {
  await load(pipeline({ modelExtra: { labelSource: 'list', labels: 'glass\nmetal\npaper\nplastic\ntrash' } }));
  await expectCaught('pre', { payload: photo }, /the model outputs 6 classes but 5 labels were given/);
});

test('labels from a file replace the metadata labels', async () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'labels.txt'), '# ours\nA\nB\nC\nD\nE\nF\n');
  await load(pipeline({ modelExtra: { labelSource: 'file', labelsFile: path.join(dir, 'labels.txt') } }));
  const received = nextMessage(helper.getNode('out'), 20_000);
  helper.getNode('pre').receive({ payload: photo });
  assert.match((await received).payload.label, /^[A-F]$/);
});

test('a model replaced on disk is reloaded; a broken replacement keeps the old one', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'model.onnx');
  fs.copyFileSync(MODEL, file);
  await load(pipeline({ modelPath: file, modelExtra: { labelSource: 'list', labels: 'a,b,c,d,e,f' } }));
  const model = helper.getNode('model');
  const infer = async () => {
    const received = nextMessage(helper.getNode('out'), 20_000);
    helper.getNode('pre').receive({ payload: photo });
    return (await received).payload;
  };
  assert.match((await infer()).label, /^[a-f]$/);

  const rejected = new Promise((resolve) => model.events.once('reload-failed', resolve));
  fs.writeFileSync(file, 'broken model');
  assert.match(await rejected, /not a valid ONNX model/);
  assert.match((await infer()).label, /^[a-f]$/, 'the previous session still serves');

  const reloaded = new Promise((resolve) => model.events.once('reloaded', resolve));
  await sleep(50);
  fs.copyFileSync(MODEL, file);
  const info = await reloaded;
  assert.equal(info.path, file);
  assert.match((await infer()).label, /^[a-f]$/);
});

test('frames arriving faster than the model are dropped, newest kept, and every message completes', async () => {
  const flow = pipeline();
  flow.push({ id: 'completed', type: 'complete', z: 'tab', scope: ['infer'], uncaught: false, wires: [['done-count']] });
  flow.push({ id: 'done-count', type: 'helper', z: 'tab' });
  await load(flow);
  const tensor = inputTensor();
  // warm up so the burst below measures the queue, not the model load
  const warm = nextMessage(helper.getNode('out'), 20_000);
  helper.getNode('infer').receive({ payload: tensor, n: 0 });
  await warm;

  const outputs = [];
  const completions = [];
  helper.getNode('out').on('input', (m) => outputs.push(m.n));
  helper.getNode('done-count').on('input', (m) => completions.push(m));
  for (let n = 1; n <= 20; n++) helper.getNode('infer').receive({ payload: tensor, n });
  const deadline = Date.now() + 20_000;
  while (completions.length < 21 && Date.now() < deadline) await sleep(20);
  assert.equal(completions.length, 21, 'done() was called for every message, dropped ones included');
  assert.ok(outputs.length < 20, `some frames were dropped (${outputs.length} of 20 inferred)`);
  assert.equal(outputs[outputs.length - 1], 20, 'the newest frame is always inferred');
  for (let i = 1; i < outputs.length; i++) assert.ok(outputs[i] > outputs[i - 1], 'order is kept');
});

test('inference runs off the event loop: a large batch does not stall Node-RED', async () => {
  await load(pipeline());
  const batch = 256;
  const tensor = inputTensor(batch);
  const warm = nextMessage(helper.getNode('out'), 30_000);
  helper.getNode('infer').receive({ payload: inputTensor() });
  await warm;
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
  const received = nextMessage(helper.getNode('out'), 60_000);
  helper.getNode('infer').receive({ payload: tensor });
  const msg = await received;
  delay.disable();
  assert.equal(msg.payload.length, batch, 'one classification per batch row');
  const maxStallMs = delay.max / 1e6;
  assert.ok(msg.inference.ms > 3 * maxStallMs,
    `the model ran ${msg.inference.ms.toFixed(0)} ms while the event loop stalled at most ${maxStallMs.toFixed(0)} ms`);
});

/** Real photos as model tensors, pre-processed once with the collection's own code. */
async function photoTensors(count) {
  const { imageToTensor } = require('../nodes/lib/preprocess');
  const photos = validationPhotos(Math.ceil(count / 6)).slice(0, count);
  return Promise.all(photos.map(async (p) => (await imageToTensor(fs.readFileSync(p.file), spec)).tensor));
}

test('20 cameras, one flooding at 10 frames/s: every frame of the 19 others gets through', async () => {
  const flow = pipeline();
  flow.push({ id: 'completed', type: 'complete', z: 'tab', scope: ['infer'], uncaught: false, wires: [['done-count']] });
  flow.push({ id: 'done-count', type: 'helper', z: 'tab' });
  await load(flow);
  const [tensor] = await photoTensors(1);
  const warm = nextMessage(helper.getNode('out'), 20_000);
  helper.getNode('infer').receive({ payload: tensor, frame: { camera: 'warm-up', seq: 0 } });
  await warm;

  const results = [];
  let completions = 0;
  helper.getNode('out').on('input', (m) => results.push(m));
  helper.getNode('done-count').on('input', () => completions++);
  const slow = Array.from({ length: 19 }, (_, i) => `belt${i + 1}`);
  const seconds = 3;
  let sent = 0;
  for (let second = 1; second <= seconds; second++) {
    // The slow cameras tick together, as cameras deployed at the same moment do, and the flooding
    // camera sends ten frames within the same second.
    for (const camera of slow) helper.getNode('infer').receive({ payload: tensor, frame: { camera, seq: second } });
    sent += slow.length;
    for (let k = 0; k < 10; k++) {
      helper.getNode('infer').receive({ payload: tensor, frame: { camera: 'flood', seq: second * 10 + k } });
      sent++;
      await sleep(5);
    }
    await sleep(1000);
  }
  await until(() => completions >= sent, 20_000, 'every message to complete');
  for (const camera of slow) {
    const seqs = results.filter((m) => m.frame.camera === camera).map((m) => m.frame.seq);
    assert.deepEqual(seqs, [1, 2, 3], `${camera} got all its frames through`);
  }
  const flood = results.filter((m) => m.frame.camera === 'flood');
  assert.ok(flood.length >= seconds, `the flooding camera got its newest frames through (${flood.length})`);
  assert.ok(flood.some((m) => m.inference.dropped > 0), 'its own older frames were the ones dropped, counted on msg.inference');
  assert.ok(results.some((m) => m.inference.batch > 1), 'frames waiting together ran as one batch');
});

test('batched and unbatched runs give the same labels and scores for the same frames', async () => {
  const flow = pipeline({ inferenceExtra: { maxBatch: 8, queueSize: 16 } });
  flow.push({ id: 'single', type: 'ml-inference', z: 'tab', model: 'model', topK: 3, policy: 'latest', queueSize: 16, maxBatch: 1, wires: [['single-out']] });
  flow.push({ id: 'single-out', type: 'helper', z: 'tab' });
  await load(flow);
  const tensors = await photoTensors(16);
  const run = async (nodeId, outId) => {
    const got = [];
    helper.getNode(outId).on('input', (m) => got.push(m));
    for (const [i, payload] of tensors.entries()) helper.getNode(nodeId).receive({ payload, frame: { camera: 'belt1', seq: i } });
    await until(() => got.length === tensors.length, 30_000, `${nodeId} results`);
    return got.sort((a, b) => a.frame.seq - b.frame.seq);
  };
  const batched = await run('infer', 'out');
  const single = await run('single', 'single-out');
  assert.ok(batched.some((m) => m.inference.batch > 1), 'the burst ran in batches');
  assert.ok(single.every((m) => m.inference.batch === 1));
  batched.forEach((m, i) => {
    assert.equal(m.payload.label, single[i].payload.label, `frame ${i}: same label`);
    m.payload.topK.forEach((k, j) => {
      assert.equal(k.label, single[i].payload.topK[j].label);
      assert.ok(Math.abs(k.score - single[i].payload.topK[j].score) < 1e-5, `frame ${i}: same score (${k.score} vs ${single[i].payload.topK[j].score})`);
    });
  });
});
