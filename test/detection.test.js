// Object detection: Ultralytics and our metadata, the exact resize geometry, decoding the four output
// layouts, NMS, boxes back in frame pixels, and the annotated JPEG; the pure modules directly, then
// ml-model + ml-preprocess + ml-inference + ml-annotate in a real Node-RED runtime with the small
// models of test/fixtures/make-detection-models.py (the same known boxes in each layout).
const { test, describe, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');
const { parseClassNames, describeModel, readOnnxMetadataProps } = require('../nodes/lib/onnx-metadata');
const { resizeGeometry, validatePreprocessSpec } = require('../nodes/lib/preprocess-spec');
const { imageToTensor } = require('../nodes/lib/preprocess');
const { planDecoding, nonMaxSuppression, toFramePixels, resolveClassFilter, detect, toAnnotations, classColour, DEFAULT_DETECTION } = require('../nodes/lib/detection');
const { overlayFor, overlaySvg, annotateImage } = require('../nodes/lib/annotate');
const { ROOT, node, coreNode, redHelper, loadFlow, nextMessage, until, tmpDir } = require('./helpers');

const FIXTURES = path.join(__dirname, 'fixtures', 'models');
const LAYOUTS = ['yolov8', 'yolov5', 'end2end', 'ssd'];
const BACKGROUND = [32, 32, 32];

/** A plain dark frame of the given size (a different aspect ratio from the 64 x 64 models). */
const frame = (width, height) => sharp({ create: { width, height, channels: 3, background: { r: BACKGROUND[0], g: BACKGROUND[1], b: BACKGROUND[2] } } }).jpeg({ quality: 95 }).toBuffer();

const hex = (colour) => [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16));
const distance = (a, b) => Math.max(...a.map((v, i) => Math.abs(v - b[i])));

async function pixels(jpeg) {
  const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
  return { info, at: (x, y) => Array.from(data.subarray((y * info.width + x) * info.channels, (y * info.width + x) * info.channels + 3)) };
}

// The fixtures' boxes (model input pixels, 64 x 64 letterboxed) after the 0.25 score threshold and
// NMS, and where they must land, worked out by hand:
// - a 320 x 200 frame is scaled by 1/5 to 64 x 40 with 12-pixel grey bars above and below, so
//   frame = (x * 5, (y - 12) * 5), clipped to the image (the dog reaches into the top bar);
// - with ROI {x 0.25, y 0.2, w 0.5, h 0.5} the region is 160 x 100 at (80, 40), scaled by 1/2.5 to
//   64 x 40, bars of 12: frame = (80 + x * 2.5, 40 + (y - 12) * 2.5).
const EXPECTED = [
  { label: 'person', score: 0.9, index: 0, whole: { x: 80, y: 44, w: 160, h: 107 }, roi: { x: 120, y: 62, w: 80, h: 54 } },
  { label: 'car', score: 0.8, index: 1, whole: { x: 20, y: 140, w: 80, h: 60 }, roi: { x: 90, y: 110, w: 40, h: 30 } },
  { label: 'car', score: 0.7, index: 1, whole: { x: 85, y: 45, w: 160, h: 105 }, roi: { x: 123, y: 63, w: 80, h: 52 } },
  { label: 'dog', score: 0.5, index: 2, whole: { x: 250, y: 0, w: 50, h: 40 }, roi: { x: 205, y: 40, w: 25, h: 20 } },
];
const ROI = { x: 0.25, y: 0.2, width: 0.5, height: 0.5 };

function assertDetections(payload, which, what) {
  assert.equal(payload.count, EXPECTED.length, `${what}: count`);
  assert.equal(payload.detections.length, EXPECTED.length, `${what}: ${JSON.stringify(payload.detections)}`);
  payload.detections.forEach((d, i) => {
    const e = EXPECTED[i];
    assert.equal(d.label, e.label, `${what}: detection ${i} label`);
    assert.equal(d.index, e.index, `${what}: detection ${i} class`);
    assert.ok(Math.abs(d.score - e.score) < 1e-5, `${what}: detection ${i} score ${d.score}`);
    for (const k of ['x', 'y', 'w', 'h']) {
      assert.ok(Math.abs(d.box[k] - e[which][k]) <= 1, `${what}: ${e.label} ${e.score} box.${k} is ${d.box[k]}, expected ${e[which][k]} (${JSON.stringify(d.box)})`);
    }
  });
}

describe('pure modules', () => {
  test('Ultralytics names (a Python dict) become labels in class order', () => {
    assert.deepEqual(parseClassNames("{0: 'person', 1: 'bicycle', 2: 'car'}"), ['person', 'bicycle', 'car']);
    assert.deepEqual(parseClassNames(String.raw`{1: "bob's car", 0: 'a\'b\\c', 3: 'x\u00e9'}`), ["a'b\\c", "bob's car", '2', 'xé']);
    assert.deepEqual(parseClassNames('{"0": "cat", "1": "dog"}'), ['cat', 'dog']);
    assert.deepEqual(parseClassNames("['cat', 'dog']"), ['cat', 'dog']);
    assert.throws(() => parseClassNames('{0: person}'), /expected a quoted class name at character 4 of "\{0: person\}"/);
    assert.throws(() => parseClassNames("{0: 'a'"), /expected "," or "\}"/);
  });

  test('an Ultralytics export describes itself: labels, task, imgsz, stride and its letterbox', () => {
    const d = describeModel({ names: "{0: 'person', 1: 'car'}", task: 'detect', imgsz: '[480, 640]', stride: '32', author: 'Ultralytics' });
    assert.deepEqual(d.labels, ['person', 'car']);
    assert.equal(d.task, 'detect');
    assert.deepEqual(d.ultralytics, { task: 'detect', stride: 32, imgsz: [480, 640] });
    assert.deepEqual(d.preprocess, {
      width: 640, height: 480, resize: 'contain', channels: 'RGB', layout: 'NCHW', dtype: 'float32', mean: [0, 0, 0], std: [255, 255, 255], pad: [114, 114, 114],
    });
    assert.deepEqual(d.warnings, []);
    const cls = describeModel({ names: "{0: 'a'}", task: 'classify', imgsz: '224' });
    assert.equal(cls.preprocess.resize, 'cover');
    assert.equal(cls.preprocess.width, 224);
    // Our own keys win over Ultralytics'; bad values are warnings that name the key.
    const ours = describeModel({ labels: '["x"]', names: "{0: 'y'}", imgsz: '640', preprocess: JSON.stringify({ width: 10, height: 10 }), task: 'detect', detection: '{"layout": "ssd", "boxes": "xyxy", "normalized": true}' });
    assert.deepEqual(ours.labels, ['x']);
    assert.equal(ours.preprocess.width, 10);
    assert.deepEqual(ours.detection, { layout: 'ssd', boxes: 'xyxy', normalized: true });
    const bad = describeModel({ detection: '{"layout": "yolo"}', imgsz: 'big', names: '{0: x}', stride: 'wide' });
    assert.match(bad.warnings.join('\n'), /metadata "detection" ignored: "layout" must be one of yolov5, yolov8, end2end, ssd, got "yolo"/);
    assert.match(bad.warnings.join('\n'), /metadata "imgsz" ignored: expected \[height, width\]/);
    assert.match(bad.warnings.join('\n'), /metadata "names" ignored/);
    assert.match(bad.warnings.join('\n'), /metadata "stride" ignored/);
    assert.throws(() => validatePreprocessSpec({ width: 4, height: 4, pad: [0, 300, 0] }), /"pad" must be a colour of three values from 0 to 255/);
  });

  test('the fixture models carry the metadata the runtime tests rely on', () => {
    const v8 = describeModel(readOnnxMetadataProps(fs.readFileSync(path.join(FIXTURES, 'detect-yolov8.onnx'))));
    assert.deepEqual(v8.labels, ['person', 'car', 'dog']);
    assert.equal(v8.preprocess.resize, 'contain');
    assert.deepEqual(v8.preprocess.pad, [114, 114, 114]);
    assert.equal(v8.props.preprocess, undefined, 'only Ultralytics metadata');
  });

  test('resize geometry: letterbox, cover crop, stretch and ROI', () => {
    const spec = (resize, roi) => ({ width: 64, height: 64, resize, roi });
    assert.deepEqual(resizeGeometry(320, 200, spec('contain')), { source: { x: 0, y: 0, width: 320, height: 200 }, target: { x: 0, y: 12, width: 64, height: 40 } });
    assert.deepEqual(resizeGeometry(320, 200, spec('contain', ROI)), { source: { x: 80, y: 40, width: 160, height: 100 }, target: { x: 0, y: 12, width: 64, height: 40 } });
    // 300 x 200: 64 x 42.67 rounds to 43 rows, the odd spare row goes to the bottom bar (as Ultralytics).
    assert.deepEqual(resizeGeometry(300, 200, spec('contain')).target, { x: 0, y: 10, width: 64, height: 43 });
    assert.deepEqual(resizeGeometry(320, 200, spec('cover')), { source: { x: 60, y: 0, width: 200, height: 200 }, target: { x: 0, y: 0, width: 64, height: 64 } });
    assert.deepEqual(resizeGeometry(320, 200, spec('fill')), { source: { x: 0, y: 0, width: 320, height: 200 }, target: { x: 0, y: 0, width: 64, height: 64 } });
  });

  test('the tensor has the letterbox bars exactly where the geometry says, in the pad colour', async () => {
    const s = validatePreprocessSpec({ width: 64, height: 64, resize: 'contain', std: [255, 255, 255], pad: [114, 114, 114] });
    const image = await sharp({ create: { width: 320, height: 200, channels: 3, background: '#ffffff' } }).png().toBuffer();
    const { tensor, geometry } = await imageToTensor(image, s);
    assert.deepEqual(geometry.target, { x: 0, y: 12, width: 64, height: 40 });
    const row = (y) => Array.from(tensor.data.subarray(y * 64, y * 64 + 64));
    for (const y of [0, 11, 52, 63]) assert.ok(row(y).every((v) => Math.abs(v - 114 / 255) < 1e-6), `row ${y} is grey padding`);
    for (const y of [12, 30, 51]) assert.ok(row(y).every((v) => v > 0.99), `row ${y} is the white frame`);
  });

  test('cover cuts the centre out before scaling: nothing of the cut-off sides remains', async () => {
    // 320 x 200: red 60 px left, blue 60 px right, green in between; cover to 64 x 64 keeps x 60..259.
    const side = (colour) => sharp({ create: { width: 60, height: 200, channels: 3, background: colour } }).png().toBuffer();
    const image = await sharp({ create: { width: 320, height: 200, channels: 3, background: '#00ff00' } })
      .composite([{ input: await side('#ff0000'), left: 0, top: 0 }, { input: await side('#0000ff'), left: 260, top: 0 }]).png().toBuffer();
    const s = validatePreprocessSpec({ width: 64, height: 64, resize: 'cover', std: [255, 255, 255] });
    const { tensor, geometry } = await imageToTensor(image, s);
    assert.deepEqual(geometry.source, { x: 60, y: 0, width: 200, height: 200 });
    const plane = 64 * 64;
    for (let i = 0; i < plane; i++) {
      assert.ok(tensor.data[i] < 0.02 && tensor.data[plane + i] > 0.98 && tensor.data[2 * plane + i] < 0.02, `pixel ${i} is green`);
    }
  });

  test('the layout is told from the setting, the metadata, or the output shapes', () => {
    const one = (dims, name = 'output0') => [{ name, dims }];
    assert.equal(planDecoding(one([1, 84, 8400]), 'auto').layout, 'yolov8');
    assert.equal(planDecoding(one([1, 25200, 85]), 'auto').layout, 'yolov5');
    assert.equal(planDecoding(one([1, 300, 6]), 'auto').layout, 'end2end');
    assert.equal(planDecoding(one([1, 16, 8]), 'auto', undefined, 3).layout, 'yolov5', 'labels break the tie of small shapes');
    assert.equal(planDecoding(one([1, 7, 16]), 'auto', undefined, 3).layout, 'yolov8');
    assert.equal(planDecoding(one([1, 300, 6]), 'auto', { layout: 'yolov5' }).layout, 'yolov5', 'metadata before shapes');
    assert.equal(planDecoding(one([1, 300, 6]), 'yolov5', { layout: 'end2end' }).layout, 'yolov5', 'the setting before metadata');
    const ssd = planDecoding([
      { name: 'detection_boxes', dims: [1, 10, 4] }, { name: 'detection_classes', dims: [1, 10] },
      { name: 'detection_scores', dims: [1, 10] }, { name: 'num_detections', dims: [1] },
    ], 'auto');
    assert.deepEqual(ssd, { layout: 'ssd', boxes: 'detection_boxes', scores: 'detection_scores', classes: 'detection_classes', count: 'num_detections' });
    assert.deepEqual(planDecoding([{ name: 'boxes', dims: [1, 10, 4] }, { name: 'scores', dims: [1, 10, 3] }], 'auto'), { layout: 'ssd', boxes: 'boxes', scores: 'scores', count: undefined });
    assert.throws(() => planDecoding(one([1, 6]), 'auto'), /expected a detection output of three dimensions \[batch, a, b\], but the model's outputs are "output0" \[1, 6\]; for a classifier choose the classification output/);
    assert.throws(() => planDecoding(one([1, 4, 4]), 'auto'), /cannot tell the detection layout of output "output0" \[1, 4, 4\]; choose the layout/);
    assert.throws(() => planDecoding(one([1, 84, 8400]), 'ssd'), /layout SSD .*expected a boxes output \[batch, boxes, 4\].*outputs are "output0" \[1, 84, 8400\]/);
    assert.throws(() => planDecoding(one([1, 4, 8400]), 'yolov8'), /does not have layout YOLOv8/);
  });

  test('the class count of the output must match the labels, and the class filter must name them', () => {
    const output = { type: 'float32', dims: [1, 7, 2], data: new Float32Array(14) };
    const plan = planDecoding([{ name: 'output0', dims: output.dims }], 'yolov8');
    assert.throws(() => detect({ outputs: { output0: output }, plan, inputSize: { width: 64, height: 64 }, labels: ['a', 'b'] }, DEFAULT_DETECTION),
      /the model's output "output0" \[1, 7, 2\] holds 3 class scores per box \(layout YOLOv8 .*\) but 2 labels were given/);
    assert.deepEqual([...resolveClassFilter(['Car', '2'], ['person', 'car', 'dog'])], [1, 2]);
    assert.equal(resolveClassFilter([], ['a']), undefined);
    assert.throws(() => resolveClassFilter(['cat'], ['person', 'car']), /Expected classes to hold labels of the model or class numbers but received "cat"; the model's labels are person, car/);
    assert.throws(() => resolveClassFilter(['5'], ['person', 'car']), /received "5"/);
    const nan = { type: 'float32', dims: [1, 7, 2], data: new Float32Array(14).fill(NaN) };
    assert.throws(() => detect({ outputs: { output0: nan }, plan, inputSize: { width: 64, height: 64 } }, DEFAULT_DETECTION), /output "output0" holds NaN at index 0; expected finite numbers/);
  });

  test('NMS keeps the higher-scoring box of an overlapping pair of one class, and both of two classes', () => {
    const box = (x1, score, index) => ({ x1, y1: 0, x2: x1 + 10, y2: 10, score, index });
    const kept = nonMaxSuppression([box(1, 0.6, 0), box(0, 0.9, 0), box(0.5, 0.7, 1), box(30, 0.5, 0)], 0.45, 10);
    assert.deepEqual(kept.map((k) => [k.x1, k.score, k.index]), [[0, 0.9, 0], [0.5, 0.7, 1], [30, 0.5, 0]]);
    assert.equal(nonMaxSuppression([box(1, 0.6, 0), box(0, 0.9, 0)], 1, 10).length, 2, 'IoU threshold 1 keeps every box');
    assert.equal(nonMaxSuppression([box(0, 0.9, 0), box(30, 0.5, 0), box(60, 0.4, 0)], 0.45, 2).length, 2, 'at most max');
    const across = nonMaxSuppression([box(1, 0.6, 0), box(0, 0.9, 0), box(0.5, 0.7, 1), box(30, 0.5, 2)], 0.45, 10, true);
    assert.deepEqual(across.map((k) => [k.x1, k.score, k.index]), [[0, 0.9, 0], [30, 0.5, 2]], 'across classes: one box per object, apart ones kept');
  });

  test('boxes map back through stretch, cover crop and ROI; what lies in the bars is dropped', () => {
    const c = (x1, y1, x2, y2) => ({ x1, y1, x2, y2, score: 1, index: 0 });
    // fill: 320 x 200 stretched to 64 x 64.
    assert.deepEqual(toFramePixels(c(16, 16, 32, 48), resizeGeometry(320, 200, { width: 64, height: 64, resize: 'fill' })), { x: 80, y: 50, w: 80, h: 100 });
    // cover: x 60..259 of 320 x 200 scaled to 64 (factor 200 / 64 = 3.125).
    assert.deepEqual(toFramePixels(c(0, 0, 32, 32), resizeGeometry(320, 200, { width: 64, height: 64, resize: 'cover' })), { x: 60, y: 0, w: 100, h: 100 });
    // fill inside an ROI of 640 x 480: region 320 x 240 at (160, 120) stretched to 64 x 64.
    const roi = { x: 0.25, y: 0.25, width: 0.5, height: 0.5 };
    assert.deepEqual(toFramePixels(c(0, 0, 64, 64), resizeGeometry(640, 480, { width: 64, height: 64, resize: 'fill', roi })), { x: 160, y: 120, w: 320, h: 240 });
    // A box wholly in the letterbox bar is no box.
    assert.equal(toFramePixels(c(0, 0, 64, 10), resizeGeometry(320, 200, { width: 64, height: 64, resize: 'contain' })), undefined);
  });

  test('normalised SSD coordinates are recognised and scaled to the input', () => {
    const outputs = {
      boxes: { type: 'float32', dims: [1, 1, 4], data: Float32Array.from([0.25, 0.5, 0.75, 1]) }, // ymin xmin ymax xmax
      scores: { type: 'float32', dims: [1, 1], data: Float32Array.from([0.9]) },
      classes: { type: 'float32', dims: [1, 1], data: Float32Array.from([1]) },
    };
    const plan = planDecoding(Object.entries(outputs).map(([name, t]) => ({ name, dims: t.dims })), 'auto');
    const [result] = detect({ outputs, plan, inputSize: { width: 100, height: 200 }, labels: ['a', 'b'] }, DEFAULT_DETECTION);
    assert.deepEqual(result.detections, [{ label: 'b', score: result.detections[0].score, index: 1, box: { x: 50, y: 50, w: 50, h: 100 } }]);
    const [asXyxy] = detect({ outputs, plan, inputSize: { width: 100, height: 200 } }, { ...DEFAULT_DETECTION, boxes: 'xyxy' });
    assert.deepEqual(asXyxy.detections[0].box, { x: 25, y: 100, w: 50, h: 100 });
  });

  test('annotations have node-red-node-annotate-image\'s shape', () => {
    const annotations = toAnnotations([{ label: 'person', score: 0.876, index: 0, box: { x: 1, y: 2, w: 3, h: 4 } }]);
    assert.deepEqual(annotations, [{ type: 'rect', bbox: [1, 2, 3, 4], label: 'person 88%', stroke: classColour(0) }]);
  });

  test('the overlay escapes labels and refuses what it cannot draw, naming it', () => {
    const svg = overlaySvg(100, 100, overlayFor({ detections: [{ label: '<b>&"', score: 0.5, index: 3, box: { x: 10, y: 10, w: 20, h: 20 } }] }));
    assert.match(svg, /&lt;b&gt;&amp;&quot; 50%/);
    assert.doesNotMatch(svg, /<b>/);
    const fromAnnotations = overlayFor(undefined, [{ bbox: [1, 2, 3, 4], stroke: 'red" onload="x', label: 'l' }, { type: 'circle', x: 50, y: 50, r: 10 }]);
    assert.equal(fromAnnotations.shapes[0].colour, '#FFC000', 'an unsafe colour is replaced by the default');
    assert.deepEqual(fromAnnotations.shapes[1], { kind: 'circle', x: 40, y: 40, w: 20, h: 20, label: undefined, colour: '#FFC000', lineWidth: undefined });
    assert.deepEqual(overlayFor({ label: 'glass', score: 0.8, topK: [{ index: 1 }] }).caption, { text: 'glass 80%', colour: classColour(1) });
    assert.throws(() => overlayFor('hello', undefined), /Expected msg.payload to hold detections \{detections: \[...\]\} or a classification \{label, score\}, or msg.annotations a list of boxes, but msg.payload is a string \("hello"\)/);
    assert.throws(() => overlayFor({ detections: [{ box: { x: 1 } }] }), /msg.payload.detections\[0\].box must be \{x, y, w, h\}/);
    assert.throws(() => overlayFor(undefined, [{ label: 'no box' }]), /msg.annotations\[0\] must have bbox/);
  });

  test('a classification label is drawn in a banner of its class colour at the top left', async () => {
    const { image } = await annotateImage(await frame(320, 200), overlayFor({ label: 'glass', score: 0.8, index: 1 }));
    const { at } = await pixels(image);
    assert.ok(distance(at(2, 2), hex(classColour(1))) < 40, `banner ${at(2, 2)}`);
    assert.ok(distance(at(300, 150), BACKGROUND) < 10, 'the rest is the frame');
  });
});

describe('in a Node-RED runtime', () => {
  const helper = redHelper();
  const nodes = [node('ml-model'), node('ml-preprocess'), node('ml-inference'), node('ml-annotate'), coreNode('common/25-catch.js')];

  function pipeline(layout, { inferenceExtra = {}, modelExtra = {} } = {}) {
    return [
      { id: 'tab', type: 'tab' },
      { id: 'model', type: 'ml-model', path: path.join(FIXTURES, `detect-${layout}.onnx`), labelSource: 'metadata', provider: 'cpu', watch: false, ...modelExtra },
      { id: 'pre', type: 'ml-preprocess', z: 'tab', model: 'model', settingsFrom: 'model', wires: [['infer']] },
      { id: 'infer', type: 'ml-inference', z: 'tab', model: 'model', output: 'auto', topK: 3, policy: 'latest', queueSize: 1, wires: [['annotate', 'inferred']], ...inferenceExtra },
      { id: 'inferred', type: 'helper', z: 'tab' },
      { id: 'annotate', type: 'ml-annotate', z: 'tab', output: 'annotated', wires: [['out']] },
      { id: 'out', type: 'helper', z: 'tab' },
      { id: 'catch', type: 'catch', z: 'tab', scope: null, uncaught: false, wires: [['errors']] },
      { id: 'errors', type: 'helper', z: 'tab' },
    ];
  }

  async function run(msg) {
    const received = nextMessage(helper.getNode('out'), 20_000);
    helper.getNode('pre').receive(msg);
    return received;
  }

  before(() => new Promise((resolve) => helper.startServer(resolve)));
  afterEach(() => helper.unload());
  after(() => new Promise((resolve) => helper.stopServer(resolve)));

  for (const layout of LAYOUTS) {
    test(`${layout}: boxes land on the frame's pixels, with letterbox and ROI undone, after NMS per class`, async () => {
      await loadFlow(helper, nodes, pipeline(layout));
      const image = await frame(320, 200);
      const whole = await run({ payload: image, frame: { camera: 'cam1' } });
      assert.deepEqual(whole.preprocess.geometry, { source: { x: 0, y: 0, width: 320, height: 200 }, target: { x: 0, y: 12, width: 64, height: 40 } });
      assertDetections(whole.payload, 'whole', `${layout}, whole frame`);
      assert.deepEqual(whole.annotations, toAnnotations(whole.payload.detections), 'msg.annotations for annotate-image');
      assert.ok(whole.image.equals(image), 'the original frame travels on');
      const cropped = await run({ payload: image, roi: ROI });
      assertDetections(cropped.payload, 'roi', `${layout}, ROI`);
    });
  }

  test('the annotated JPEG has the box colour where each box is drawn and nowhere else', async () => {
    await loadFlow(helper, nodes, pipeline('yolov8'));
    const msg = await run({ payload: await frame(320, 200) });
    assert.ok(Buffer.isBuffer(msg.annotated), 'msg.annotated holds the JPEG');
    const { info, at } = await pixels(msg.annotated);
    assert.deepEqual([info.width, info.height], [320, 200]);
    const person = msg.payload.detections[0].box; // {80, 44, 160, 107}, red
    const red = hex(classColour(0));
    const teal = hex(classColour(1));
    assert.ok(distance(at(person.x, person.y + 53), red) < 40, `left edge of the person box ${at(person.x, person.y + 53)}`);
    assert.ok(distance(at(person.x + 60, person.y + person.h), red) < 40, `bottom edge ${at(person.x + 60, person.y + person.h)}`);
    assert.ok(distance(at(85, 97), teal) < 40, `left edge of the car over the person ${at(85, 97)}`);
    for (const [x, y] of [[160, 97], [300, 120], [160, 180], [5, 100]]) assert.ok(distance(at(x, y), BACKGROUND) < 12, `(${x}, ${y}) is untouched: ${at(x, y)}`);
    // Every red pixel belongs to the person's outline or its label just above it.
    const lw = 2;
    let redPixels = 0;
    for (let y = 0; y < info.height; y++) {
      for (let x = 0; x < info.width; x++) {
        if (distance(at(x, y), red) >= 40) continue;
        redPixels++;
        const onOutline = x >= person.x - lw && x <= person.x + person.w + lw && y >= person.y - lw && y <= person.y + person.h + lw
          && (Math.abs(x - person.x) <= lw || Math.abs(x - person.x - person.w) <= lw || Math.abs(y - person.y) <= lw || Math.abs(y - person.y - person.h) <= lw);
        const inLabel = y < person.y && y >= person.y - 20 && x >= person.x - lw && x <= person.x + 100;
        assert.ok(onOutline || inLabel, `red pixel at (${x}, ${y}) is neither on the person box nor its label`);
      }
    }
    assert.ok(redPixels > 2 * (person.w + person.h), `the whole outline is drawn (${redPixels} red pixels)`);
  });

  test('a frame with EXIF orientation gets boxes and drawing in its upright pixels', async () => {
    await loadFlow(helper, nodes, pipeline('end2end'));
    // Stored 200 x 320, orientation 6 (turn 90 degrees clockwise to view): upright it is 320 x 200.
    const stored = await sharp({ create: { width: 200, height: 320, channels: 3, background: { r: 32, g: 32, b: 32 } } }).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    const msg = await run({ payload: stored });
    assert.deepEqual([msg.preprocess.sourceWidth, msg.preprocess.sourceHeight], [320, 200]);
    assertDetections(msg.payload, 'whole', 'EXIF-oriented frame');
    const { info, at } = await pixels(msg.annotated);
    assert.deepEqual([info.width, info.height], [320, 200]);
    assert.ok(distance(at(80, 97), hex(classColour(0))) < 40, `left edge of the person box ${at(80, 97)}`);
  });

  test('with cover from the dialog, boxes come back through the centre crop', async () => {
    const flow = pipeline('yolov8');
    Object.assign(flow.find((n) => n.id === 'pre'), {
      settingsFrom: 'dialog', width: 64, height: 64, resize: 'cover', channels: 'RGB', layout: 'NCHW', dtype: 'float32', mean: '0,0,0', std: '255,255,255',
    });
    await loadFlow(helper, nodes, flow);
    const msg = await run({ payload: await frame(320, 200) });
    // 320 x 200 covered to 64 x 64: x 60..259 is kept and scaled by 64 / 200: frame = (60 + x * 3.125, y * 3.125).
    assert.deepEqual(msg.preprocess.geometry, { source: { x: 60, y: 0, width: 200, height: 200 }, target: { x: 0, y: 0, width: 64, height: 64 } });
    const expected = { person: { x: 110, y: 65, w: 100, h: 67 }, car: { x: 73, y: 125, w: 50, h: 38 } };
    for (const [i, label] of [[0, 'person'], [1, 'car']]) {
      const d = msg.payload.detections[i];
      assert.equal(d.label, label);
      for (const k of ['x', 'y', 'w', 'h']) assert.ok(Math.abs(d.box[k] - expected[label][k]) <= 1, `${label} box.${k} is ${d.box[k]}, expected ${expected[label][k]}`);
    }
  });

  test('threshold, class filter and maximum count are applied', async () => {
    await loadFlow(helper, nodes, pipeline('yolov5', { inferenceExtra: { output: 'detection', scoreThreshold: '0.75' } }));
    assert.deepEqual((await run({ payload: await frame(320, 200) })).payload.detections.map((d) => d.score.toFixed(2)), ['0.90', '0.80']);
    await helper.unload();
    await loadFlow(helper, nodes, pipeline('yolov5', { inferenceExtra: { classes: 'car, 2' } }));
    assert.deepEqual((await run({ payload: await frame(320, 200) })).payload.detections.map((d) => d.label), ['car', 'car', 'dog']);
    await helper.unload();
    await loadFlow(helper, nodes, pipeline('yolov5', { inferenceExtra: { maxDetections: 1 } }));
    assert.deepEqual((await run({ payload: await frame(320, 200) })).payload.detections.map((d) => d.label), ['person']);
  });

  test('settings and labels that do not fit fail with errors naming them', async () => {
    await loadFlow(helper, nodes, pipeline('yolov8', { inferenceExtra: { classes: 'cat' } }));
    const caught = nextMessage(helper.getNode('errors'), 20_000);
    helper.getNode('pre').receive({ payload: await frame(320, 200) });
    assert.match((await caught).error.message, /Expected classes to hold labels of the model or class numbers but received "cat"; the model's labels are person, car, dog/);
    await helper.unload();
    await loadFlow(helper, nodes, pipeline('yolov8', { inferenceExtra: { iouThreshold: '1.5' } }));
    const refused = nextMessage(helper.getNode('errors'), 20_000);
    helper.getNode('pre').receive({ payload: await frame(320, 200) });
    assert.match((await refused).error.message, /Expected iouThreshold to be a number from 0 to 1 but received "1.5"/);
    await helper.unload();
    await loadFlow(helper, nodes, pipeline('yolov8', { modelExtra: { labelSource: 'list', labels: 'a,b' } }));
    const mismatch = nextMessage(helper.getNode('errors'), 20_000);
    helper.getNode('pre').receive({ payload: await frame(320, 200) });
    assert.match((await mismatch).error.message, /holds 3 class scores per box .* but 2 labels were given/);
  });

  test('frames that run as one batch each get their own boxes, in their own frame pixels', async () => {
    await loadFlow(helper, nodes, pipeline('yolov8', { inferenceExtra: { queueSize: 16, maxBatch: 8 } }));
    // Tensors as ml-preprocess makes them (whole frame and ROI alternately), sent in a burst.
    const inferNode = helper.getNode('infer');
    const image = await frame(320, 200);
    const spec = describeModel(readOnnxMetadataProps(fs.readFileSync(path.join(FIXTURES, 'detect-yolov8.onnx')))).preprocess;
    const prepared = [];
    for (let seq = 0; seq < 8; seq++) {
      const { tensor, geometry } = await imageToTensor(image, seq % 2 ? { ...spec, roi: ROI } : spec);
      prepared.push({ tensor, preprocess: { width: 64, height: 64, sourceWidth: 320, sourceHeight: 200, geometry }, seq });
    }
    const got = [];
    helper.getNode('inferred').on('input', (m) => got.push(m));
    for (const p of prepared) inferNode.receive({ payload: p.tensor, preprocess: p.preprocess, frame: { camera: 'cam1', seq: p.seq } });
    await until(() => got.length === prepared.length, 20_000, 'every frame of the burst');
    assert.ok(got.some((m) => m.inference.batch > 1), 'the burst ran in batches');
    for (const m of got) assertDetections(m.payload, m.frame.seq % 2 ? 'roi' : 'whole', `frame ${m.frame.seq} (batch of ${m.inference.batch})`);
  });

  test('auto keeps classifying a classifier, with the same output as before and no annotations', async () => {
    const flow = [
      { id: 'tab', type: 'tab' },
      { id: 'model', type: 'ml-model', path: path.join(FIXTURES, 'three-classes.onnx'), labelSource: 'metadata', provider: 'cpu', watch: false },
      { id: 'infer', type: 'ml-inference', z: 'tab', model: 'model', output: 'auto', topK: 2, wires: [['out']] },
      { id: 'out', type: 'helper', z: 'tab' },
    ];
    await loadFlow(helper, nodes, flow);
    const received = nextMessage(helper.getNode('out'), 20_000);
    helper.getNode('infer').receive({ payload: { type: 'float32', dims: [1, 3], data: [1, 1, 5] } });
    const msg = await received;
    assert.deepEqual(Object.keys(msg.payload).sort(), ['label', 'score', 'topK']);
    assert.equal(msg.payload.label, 'c');
    assert.equal(msg.annotations, undefined);
  });

  test('the example flow detects on the test pattern and saves annotated frames', async () => {
    const out = tmpDir('gg-ml-detect-');
    const saved = { ...process.env };
    Object.assign(process.env, { DETECT_MODEL: path.join(FIXTURES, 'detect-yolov8.onnx'), DETECT_OUTPUT_DIR: out });
    delete process.env.DETECT_SOURCE;
    try {
      const flow = JSON.parse(fs.readFileSync(path.join(ROOT, 'flows', 'detection-demo.json'), 'utf8'));
      const all = [...nodes, node('ml-camera'), coreNode('function/15-change.js'), coreNode('storage/10-file.js'), coreNode('common/21-debug.js'), coreNode('common/90-comment.js')];
      flow.push({ id: 'demo-errors', type: 'helper', z: 'detect-tab' });
      flow.find((n) => n.id === 'detect-catch').wires = [['detect-errors', 'demo-errors']];
      await loadFlow(helper, all, flow);
      const errors = [];
      helper.getNode('demo-errors').on('input', (m) => errors.push(m.error.message));
      const file = path.join(out, 'cam1-latest.jpg');
      await until(() => fs.existsSync(file) && fs.statSync(file).size > 0, 20_000, 'an annotated frame on disk');
      await new Promise((r) => setTimeout(r, 200)); // let the write finish
      const meta = await sharp(fs.readFileSync(file)).metadata();
      assert.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 640, 480]);
      assert.deepEqual(errors, []);
    } finally {
      process.env = saved;
    }
  });
});
