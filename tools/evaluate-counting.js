#!/usr/bin/env node
// How well the conveyor detector and ml-track count: runs belt sequences (tools/train/scenes.py
// sequences: one folder of frames per belt, with truth.json) through the collection's own path
// (sharp pre-processing as the model's metadata says, onnxruntime-node, the detection node's
// decoding, the tracker as ml-track runs it) and compares the counts per class with the truth.
// Usage: npx tsc -p . && node tools/evaluate-counting.js --belts /tmp/belts [--model models/conveyor-detector.onnx] [--json out.json]
// --json also holds `confusion`: for each true class, how the counted items of that class were named.
// Make belts first: /usr/bin/python3 tools/train/scenes.py sequences --data ../shared/datasets/trashnet --split val --out /tmp/belts
// --classifier crops.onnx names each detection's material with a classifier of belt crops
// (tools/train/train_crops.py) instead of the detector: each box cut from the frame by the crop rule in
// the classifier's metadata, all boxes of a frame in one batch.
// --set name=value,... tries other settings than the flow's (scoreThreshold, iouThreshold, minHits,
// maxMissed, maxDistance, line): tune on belts of training photos, never on the validation ones.
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const { root, option } = require('./cli');
const { readOnnxMetadataProps, describeModel } = require(path.join(root, 'nodes/lib/onnx-metadata'));
const { imageToTensor } = require(path.join(root, 'nodes/lib/preprocess'));
const { DEFAULT_DETECTION, detect, planDecoding } = require(path.join(root, 'nodes/lib/detection'));
const { DEFAULT_TRACKER, Tracker } = require(path.join(root, 'nodes/ml-track/tracker'));
const { classify } = require(path.join(root, 'nodes/lib/classification'));
const { applyNames, cropRuleOf, cropTensors } = require(path.join(root, 'nodes/lib/crop-naming'));

/** A second stage as ml-inference's "Name boxes with" runs it: each detection named from its crop. */
async function cropClassifier(modelPath) {
  const bytes = fs.readFileSync(modelPath);
  const props = readOnnxMetadataProps(bytes);
  const { labels, preprocess } = describeModel(props);
  const rule = cropRuleOf(props);
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 });
  return {
    release: () => session.release(),
    async relabel(jpeg, detections, frame) {
      const tensors = await cropTensors(jpeg, detections, frame, preprocess, rule);
      const present = tensors.filter(Boolean);
      if (!present.length) return;
      const size = present[0].data.length;
      const batch = new Float32Array(size * present.length);
      present.forEach((t, i) => batch.set(t.data, i * size));
      const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', batch, [present.length, ...present[0].dims.slice(1)]) });
      const logits = out[session.outputNames[0]].data;
      const k = labels.length;
      let next = 0;
      applyNames(detections, tensors.map((t) => (t ? classify(logits.subarray(next * k, ++next * k), labels, 1) : null)), labels);
    },
  };
}

/** The flow's settings (flows/conveyor-counter.json), so the figures are the shipped flow's. */
function flowSettings() {
  const flow = JSON.parse(fs.readFileSync(path.join(root, 'flows', 'conveyor-counter.json'), 'utf8'));
  const inference = flow.find((n) => n.type === 'ml-inference');
  const track = flow.find((n) => n.type === 'ml-track');
  // "Name boxes with": the classifier of crops the flow ships (its default, `${VAR:-bundled:file}`).
  const namer = flow.find((n) => n.id === inference.namer);
  const bundled = /bundled:([^}]+)\}?$/.exec(String(namer?.path ?? ''));
  return {
    classifierPath: bundled ? path.join(root, 'models', bundled[1]) : undefined,
    detection: { ...DEFAULT_DETECTION, scoreThreshold: inference.scoreThreshold, iouThreshold: inference.iouThreshold, acrossClasses: inference.acrossClasses === true, maxDetections: inference.maxDetections },
    tracker: { ...DEFAULT_TRACKER, mode: track.mode, direction: track.direction, line: track.line, minHits: track.minHits, maxMissed: track.maxMissed, maxDistance: track.maxDistance },
  };
}

/** The true box ({box: [x0, y0, x1, y1], label}) a counted {x, y, w, h} box overlaps most (IoU > 0.3). */
function bestMatch(box, truthBoxes) {
  let best;
  let bestIou = 0.3;
  for (const t of truthBoxes) {
    const [x0, y0, x1, y1] = t.box;
    const w = Math.min(x1, box.x + box.w) - Math.max(x0, box.x);
    const h = Math.min(y1, box.y + box.h) - Math.max(y0, box.y);
    if (w <= 0 || h <= 0) continue;
    const iou = (w * h) / ((x1 - x0) * (y1 - y0) + box.w * box.h - w * h);
    if (iou > bestIou) [best, bestIou] = [t, iou];
  }
  return best;
}

/**
 * Counts every belt under `beltsDir` and compares with its truth.json. Returns per-belt and total
 * counts per label, the true ones, and relative errors.
 */
async function countBelts({ modelPath = path.join(root, 'models', 'conveyor-detector.onnx'), beltsDir, frameMs = 1000, overrides = {}, classifierPath }) {
  const bytes = fs.readFileSync(modelPath);
  const meta = describeModel(readOnnxMetadataProps(bytes));
  const { detection, tracker: trackerOptions, classifierPath: flowClassifier } = flowSettings();
  // The flow's own second stage unless another (or none: '') is asked for.
  classifierPath = classifierPath ?? flowClassifier;
  for (const [name, value] of Object.entries(overrides)) {
    if (name in detection) detection[name] = value;
    else if (name in trackerOptions) trackerOptions[name] = value;
    else throw new Error(`--set ${name}: not a setting of ml-inference's decoding or of ml-track (${[...Object.keys(detection), ...Object.keys(trackerOptions)].join(', ')})`);
  }
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 });
  const classifier = classifierPath ? await cropClassifier(classifierPath) : undefined;
  const belts = fs.readdirSync(beltsDir).filter((d) => fs.existsSync(path.join(beltsDir, d, 'truth.json'))).sort();
  const counted = {};
  const truth = {};
  const perBelt = [];
  let frames = 0;
  let detections = 0;
  let matched = 0;
  let labelledRight = 0;
  /** confusion[true label][counted label]: the counted items that overlap a true item. */
  const confusion = {};
  const started = Date.now();
  try {
    for (const belt of belts) {
      const dir = path.join(beltsDir, belt);
      const beltTruth = JSON.parse(fs.readFileSync(path.join(dir, 'truth.json'), 'utf8'));
      const tracker = new Tracker(trackerOptions);
      const beltCounts = {};
      const files = fs.readdirSync(dir).filter((f) => f.endsWith('.jpg')).sort();
      for (const [i, file] of files.entries()) {
        const jpeg = fs.readFileSync(path.join(dir, file));
        const { tensor, geometry, sourceWidth, sourceHeight } = await imageToTensor(jpeg, meta.preprocess);
        const outputs = await session.run({ [session.inputNames[0]]: new ort.Tensor(tensor.type, tensor.data, tensor.dims) });
        const plain = Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name, { data: t.data, dims: t.dims, type: t.type }]));
        const plan = planDecoding(Object.entries(plain).map(([name, t]) => ({ name, dims: t.dims })), detection.layout, meta.detection, meta.labels.length);
        const [result] = detect({
          outputs: plain, plan, inputSize: { width: tensor.dims[3], height: tensor.dims[2] }, geometry, labels: meta.labels, meta: meta.detection,
        }, detection);
        detections += result.detections.length;
        if (classifier) await classifier.relabel(jpeg, result.detections, { width: sourceWidth, height: sourceHeight });
        const at = i * frameMs;
        const update = tracker.update({
          camera: belt, seq: i + 1, capturedAt: new Date(at).toISOString(), at, width: sourceWidth, height: sourceHeight, detections: result.detections,
        });
        for (const item of update.counted) {
          beltCounts[item.label] = (beltCounts[item.label] ?? 0) + 1;
          // Which item on the belt it was: the true box it overlaps most in the frame it was counted in.
          const truthBox = bestMatch(item.box, beltTruth.frames[i] ?? []);
          if (truthBox) {
            matched++;
            const trueLabel = beltTruth.labels[truthBox.label];
            if (trueLabel === item.label) labelledRight++;
            confusion[trueLabel] ??= {};
            confusion[trueLabel][item.label] = (confusion[trueLabel][item.label] ?? 0) + 1;
          }
        }
        frames++;
      }
      for (const [label, n] of Object.entries(beltCounts)) counted[label] = (counted[label] ?? 0) + n;
      for (const [label, n] of Object.entries(beltTruth.counts)) truth[label] = (truth[label] ?? 0) + n;
      perBelt.push({ belt, frames: files.length, truth: beltTruth.counts, counted: beltCounts });
    }
  } finally {
    await session.release();
    await classifier?.release();
  }
  const labels = meta.labels;
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  const relError = (got, want) => (want === 0 ? (got === 0 ? 0 : Infinity) : (got - want) / want);
  const perClass = Object.fromEntries(labels.map((l) => [l, { truth: truth[l] ?? 0, counted: counted[l] ?? 0, error: relError(counted[l] ?? 0, truth[l] ?? 0) }]));
  return {
    model: path.relative(root, modelPath),
    classifier: classifierPath ? path.relative(root, classifierPath) : undefined,
    belts: perBelt.length,
    frames,
    detectionsPerFrame: detections / Math.max(1, frames),
    msPerFrame: (Date.now() - started) / Math.max(1, frames),
    total: { truth: sum(truth), counted: sum(counted), error: relError(sum(counted), sum(truth)) },
    /** Of the counted items that overlap a true item, the share whose label is that item's class. */
    itemLabelAccuracy: labelledRight / Math.max(1, matched),
    perClass,
    confusion,
    perBelt,
  };
}

function printReport(r) {
  const pct = (e) => `${e >= 0 ? '+' : ''}${(100 * e).toFixed(1)} %`;
  console.log(`${r.model}${r.classifier ? ` named by ${r.classifier}` : ''}: ${r.belts} belts, ${r.frames} frames, ${r.detectionsPerFrame.toFixed(2)} detections a frame, ${r.msPerFrame.toFixed(1)} ms a frame`);
  console.log(`  label of counted items right: ${(100 * r.itemLabelAccuracy).toFixed(1)} %`);
  console.log(`  total      counted ${String(r.total.counted).padStart(4)} of ${String(r.total.truth).padStart(4)}  ${pct(r.total.error)}`);
  for (const [label, c] of Object.entries(r.perClass)) {
    console.log(`  ${label.padEnd(10)} counted ${String(c.counted).padStart(4)} of ${String(c.truth).padStart(4)}  ${pct(c.error)}`);
  }
}

module.exports = { countBelts, printReport, flowSettings };

if (require.main === module) {
  const beltsDir = option('belts', '');
  if (!beltsDir) {
    console.error('usage: node tools/evaluate-counting.js --belts <folder of belt sequences> [--model file.onnx] [--json out.json]');
    process.exit(2);
  }
  const overrides = Object.fromEntries(String(option('set', '')).split(',').filter(Boolean).map((pair) => {
    const [name, value] = pair.split('=');
    return [name.trim(), Number.isFinite(Number(value)) ? Number(value) : value === 'true' ? true : value === 'false' ? false : value];
  }));
  countBelts({ modelPath: path.resolve(option('model', path.join(root, 'models', 'conveyor-detector.onnx'))), beltsDir: path.resolve(beltsDir), overrides, classifierPath: option('classifier') === undefined ? undefined : option('classifier') && path.resolve(option('classifier')) })
    .then((r) => {
      printReport(r);
      const json = option('json', '');
      if (json) fs.writeFileSync(json, JSON.stringify(r, null, 2) + '\n');
    })
    .catch((err) => {
      console.error(err);
      process.exit(1);
    });
}
