// Counting items on a conveyor with the bundled detector and ml-track, measured against the truth.
// The belts are built here from validation photos only (tools/train/scenes.py sequences: TrashNet
// objects cut from their board, riding generated belts left to right, every class equally often),
// so the detector never saw these objects in training.
const { test, before } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const { ROOT, DATASET, MODEL, node, coreNode, redHelper, loadFlow, tmpDir, startMosquitto, collect, nextMessage, validationPhotos } = require('./helpers');
const { countBelts, printReport } = require('../tools/evaluate-counting');

const SCENES = path.join(ROOT, 'tools', 'train', 'scenes.py');
const LABELS = ['cardboard', 'glass', 'metal', 'paper', 'plastic', 'trash'];
const helper = redHelper();
let dir;

function makeBelts(out, args) {
  execFileSync('/usr/bin/python3', [SCENES, 'sequences', '--data', DATASET, '--split', 'val', '--out', out, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  return JSON.parse(fs.readFileSync(path.join(out, 'index.json'), 'utf8'));
}

before(() => {
  dir = tmpDir('counting-');
});

/** Belts of validation photos, counted once for both tests below. */
let report;
async function countedBelts() {
  if (!report) {
    const belts = path.join(dir, 'belts');
    makeBelts(belts, ['--count', '6', '--items', '40', '--seed', '11']);
    report = await countBelts({ beltsDir: belts });
    printReport(report);
  }
  return report;
}

// The issue's target for the total, and the labels of counted items right at least 50 % of the time
// (60.4 % with the shipped detector, threshold and belt-crop classifier; chance is 17 %), so neither can slip back.
test('belts of validation photos: the total count within 5 % of the truth, labels well above chance', async () => {
  const r = await countedBelts();
  assert.equal(r.total.truth, 240);
  assert.ok(Math.abs(r.total.error) <= 0.05, `total: counted ${r.total.counted} of ${r.total.truth}`);
  assert.ok(r.itemLabelAccuracy >= 0.50, `labels of counted items right: ${(100 * r.itemLabelAccuracy).toFixed(1)} %`);
});

const ISSUE_13_TARGETS = 'issue 13: materials are named poorly (labels of counted items right 60 %, models/conveyor-detector.md); this runs and reports until better models pass';

test('belts of validation photos: counts per class within 10 % of the truth', { todo: ISSUE_13_TARGETS }, async () => {
  const r = await countedBelts();
  for (const [label, c] of Object.entries(r.perClass)) {
    assert.ok(c.truth >= 25, `${label}: enough items on the belts to measure (${c.truth})`);
    assert.ok(Math.abs(c.error) <= 0.10, `${label}: counted ${c.counted} of ${c.truth}`);
  }
});

test('one item seen in many frames is counted once', async () => {
  const belts = path.join(dir, 'slow');
  // A slow belt: the item is in view for about 20 frames.
  const index = makeBelts(belts, ['--count', '3', '--items', '1', '--speed', '0.06', '--seed', '5']);
  for (const { folder } of index.sequences) {
    const truth = JSON.parse(fs.readFileSync(path.join(belts, folder, 'truth.json'), 'utf8'));
    assert.ok(truth.frames.filter((boxes) => boxes.length > 0).length >= 8, 'the item is in view in at least 8 frames');
  }
  const slow = await countBelts({ beltsDir: belts });
  printReport(slow);
  for (const belt of slow.perBelt) {
    assert.equal(Object.values(belt.counted).reduce((a, b) => a + b, 0), 1, `${belt.belt}: counted ${JSON.stringify(belt.counted)}, truth ${JSON.stringify(belt.truth)}`);
  }
});

test('the counting flow as shipped, two belt cameras: one item message per item crossing, counts per camera on the documented topics', async (t) => {
  const belts = path.join(dir, 'flow');
  const index = makeBelts(belts, ['--count', '2', '--items', '12', '--seed', '21']);
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#'], 4);
  const variables = ['MQTT_URL', 'MQTT_PROTOCOL', 'SORTER_INTERVAL_MS', 'SORTER_CAMERAS', 'SORTER_COUNT_PERIOD_S', 'SORTER_DETECTOR', 'SORTER_SPOOL_DIR'];
  const saved = variables.map((name) => [name, process.env[name]]);
  Object.assign(process.env, {
    MQTT_URL: broker.url, SORTER_INTERVAL_MS: '200', SORTER_COUNT_PERIOD_S: '2', SORTER_SPOOL_DIR: path.join(dir, 'spool'),
    SORTER_CAMERAS: index.sequences.map((s) => `${s.folder}=${path.join(belts, s.folder)}`).join(','),
  });
  delete process.env.SORTER_DETECTOR;
  delete process.env.MQTT_PROTOCOL;
  try {
    const flow = JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'conveyor-counter.json'), 'utf8'));
    const ours = Object.keys(require('../package.json')['node-red'].nodes);
    await loadFlow(helper, ours.map((type) => node(type)).concat([coreNode('common/25-catch.js'), coreNode('common/21-debug.js'), coreNode('common/90-comment.js')]), flow);
    const frames = Object.fromEntries(index.sequences.map((s) => [s.folder, s.frames]));
    // Each belt plays once in frames x 200 ms; the folder then loops, and later passes are ignored.
    const longest = Math.max(...Object.values(frames));
    await new Promise((resolve) => setTimeout(resolve, longest * 200 + 3000));
    const items = sub.messages.filter((m) => m.topic.endsWith('/item')).map((m) => JSON.parse(m.payload));
    const counts = sub.messages.filter((m) => m.topic.endsWith('/counts')).map((m) => ({ topic: m.topic, report: JSON.parse(m.payload) }));
    for (const s of index.sequences) {
      const firstPass = items.filter((i) => i.camera === s.folder && i.frameSeq <= frames[s.folder]);
      t.diagnostic(`${s.folder}: ${firstPass.length} items published, truth ${s.items} (${JSON.stringify(s.counts)})`);
      // As the total on the long belts: within 5 %, at least one item either way on a short belt.
      assert.ok(Math.abs(firstPass.length - s.items) <= Math.max(1, 0.05 * s.items), `${s.folder}: ${firstPass.length} items published for ${s.items} on the belt`);
      for (const item of firstPass) {
        assert.deepEqual(Object.keys(item).sort(), ['box', 'camera', 'capturedAt', 'frameSeq', 'id', 'label', 'score', 'track']);
        assert.ok(LABELS.includes(item.label), `label ${item.label}`);
        assert.ok(item.score > 0 && item.score <= 1 && item.box.w > 0 && item.box.h > 0);
      }
      assert.equal(new Set(firstPass.map((i) => i.track)).size, firstPass.length, 'one message per track');
      const reports = counts.filter((c) => c.topic === `recycling/${s.folder}/counts`);
      assert.ok(reports.length >= 2, `${s.folder}: a report every 2 s (${reports.length})`);
      assert.ok(reports.every((c) => c.report.camera === s.folder && Date.parse(c.report.to) > Date.parse(c.report.from)));
      const reported = reports.reduce((n, c) => n + Object.values(c.report.counts).reduce((a, b) => a + b, 0), 0);
      assert.ok(reported >= firstPass.length, 'the reports add up to at least the items published');
    }
  } finally {
    for (const [name, value] of saved) if (value === undefined) delete process.env[name]; else process.env[name] = value;
    await sub.close();
    await helper.unload();
    await broker.close();
  }
});

test('a box namer left set while the node classifies is not loaded, nor needed to exist', async () => {
  const photo = fs.readFileSync(validationPhotos(1)[0].file);
  const flow = [
    { id: 'tab', type: 'tab' },
    { id: 'cls', type: 'ml-model', path: MODEL, labelSource: 'metadata' },
    { id: 'namer', type: 'ml-model', path: MODEL, labelSource: 'metadata' },
    { id: 'pre', type: 'ml-preprocess', z: 'tab', model: 'cls', settingsFrom: 'model', wires: [['inf', 'inf2']] },
    // Output switched to classification after a namer was chosen (the dialog hides the field then).
    { id: 'inf', type: 'ml-inference', z: 'tab', model: 'cls', namer: 'namer', output: 'classification', wires: [['out']] },
    { id: 'inf2', type: 'ml-inference', z: 'tab', model: 'cls', namer: 'deleted-config-node', output: 'classification', wires: [['out2']] },
    { id: 'out', type: 'helper', z: 'tab' },
    { id: 'out2', type: 'helper', z: 'tab' },
  ];
  await loadFlow(helper, [node('ml-model'), node('ml-preprocess'), node('ml-inference')], flow);
  const results = [nextMessage(helper.getNode('out'), 20_000), nextMessage(helper.getNode('out2'), 20_000)];
  helper.getNode('pre').receive({ payload: photo });
  for (const msg of await Promise.all(results)) assert.ok(LABELS.includes(msg.payload.label), msg.payload.label);
  assert.equal(helper.getNode('namer').state, 'idle', 'the unused namer was never loaded');
  await helper.unload();
});

test('a classifier names each box from its crop: its label and score, the detector\'s kept; no msg.image fails the frame saying so', async () => {
  const ort = require('onnxruntime-node');
  const { imageToTensor } = require('../nodes/lib/preprocess');
  const { readOnnxMetadataProps, describeModel } = require('../nodes/lib/onnx-metadata');
  const belts = path.join(dir, 'named');
  const index = makeBelts(belts, ['--count', '1', '--items', '6', '--seed', '31']);
  const folder = path.join(belts, index.sequences[0].folder);
  const frames = fs.readdirSync(folder).filter((f) => f.endsWith('.jpg')).sort().map((f) => fs.readFileSync(path.join(folder, f)));
  // The namer here is the waste classifier (any classifier will do); the crop rule without `crop` metadata: margin 1.15.
  const classifierBytes = fs.readFileSync(MODEL);
  const classifier = describeModel(readOnnxMetadataProps(classifierBytes));
  const session = await ort.InferenceSession.create(classifierBytes);
  const flow = [
    { id: 'tab', type: 'tab' },
    { id: 'det', type: 'ml-model', path: path.join(ROOT, 'models', 'conveyor-detector.onnx'), labelSource: 'metadata' },
    { id: 'cls', type: 'ml-model', path: MODEL, labelSource: 'metadata' },
    { id: 'pre', type: 'ml-preprocess', z: 'tab', model: 'det', settingsFrom: 'model', wires: [['inf', 'tensor']] },
    { id: 'inf', type: 'ml-inference', z: 'tab', model: 'det', namer: 'cls', output: 'detection', scoreThreshold: 0.16, acrossClasses: true, wires: [['out']] },
    { id: 'tensor', type: 'helper', z: 'tab' },
    { id: 'out', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: ['inf'], wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ];
  try {
    await loadFlow(helper, [node('ml-model'), node('ml-preprocess'), node('ml-inference'), coreNode('common/25-catch.js')], flow);
    let checked = 0;
    for (const jpeg of frames) {
      const result = nextMessage(helper.getNode('out'), 20_000);
      helper.getNode('pre').receive({ payload: jpeg });
      const msg = await result;
      for (const d of msg.payload.detections) {
        assert.ok(LABELS.includes(d.detected.label) && d.detected.score > 0, `the detector's own: ${JSON.stringify(d.detected)}`);
        // The same crop through the classifier here: box grown 1.15x around its centre, clipped to the frame.
        const { sourceWidth: W, sourceHeight: H } = msg.preprocess;
        const cx = d.box.x + d.box.w / 2;
        const cy = d.box.y + d.box.h / 2;
        const x0 = Math.max(0, Math.round(cx - d.box.w * 0.575));
        const y0 = Math.max(0, Math.round(cy - d.box.h * 0.575));
        const x1 = Math.min(W, Math.round(cx + d.box.w * 0.575));
        const y1 = Math.min(H, Math.round(cy + d.box.h * 0.575));
        const { tensor } = await imageToTensor(jpeg, { ...classifier.preprocess, roi: { x: x0 / W, y: y0 / H, width: (x1 - x0) / W, height: (y1 - y0) / H } });
        const logits = Array.from((await session.run({ input: new ort.Tensor('float32', tensor.data, tensor.dims) })).logits.data);
        const exp = logits.map((v) => Math.exp(v - Math.max(...logits)));
        const best = exp.indexOf(Math.max(...exp));
        assert.equal(d.label, classifier.labels[best]);
        assert.ok(Math.abs(d.score - exp[best] / exp.reduce((a, b) => a + b)) < 1e-3, `score ${d.score}`);
        assert.equal(d.index, best);
        checked++;
      }
      assert.equal(msg.annotations.length, msg.payload.detections.length);
    }
    assert.ok(checked >= 5, `${checked} boxes named`);

    const tensorMsg = nextMessage(helper.getNode('tensor'), 20_000);
    helper.getNode('pre').receive({ payload: frames[Math.floor(frames.length / 2)] });
    const withoutImage = await tensorMsg;
    await nextMessage(helper.getNode('out'), 20_000); // the copy that went on with its image
    delete withoutImage.image;
    const failed = nextMessage(helper.getNode('errors'), 20_000);
    helper.getNode('inf').receive(withoutImage);
    const error = await failed;
    assert.match(error.error.message, /Name boxes with: the boxes are cut from msg\.image .* but msg\.image is not a Buffer/);
  } finally {
    await session.release();
    await helper.unload();
  }
});
