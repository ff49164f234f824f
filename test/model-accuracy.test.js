// The shipped waste classifier: its self-description, and its accuracy on validation photos it never
// trained on, pre-processed with sharp exactly as its metadata says.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const ort = require('onnxruntime-node');
const { MODEL, validationPhotos } = require('./helpers');
const { readOnnxMetadataProps, describeModel } = require('../nodes/lib/onnx-metadata');
const { imageToTensor } = require('../nodes/lib/preprocess');
const { classify } = require('../nodes/lib/classification');

const CLASSES = ['cardboard', 'glass', 'metal', 'paper', 'plastic', 'trash'];
const MIN_ACCURACY = 0.90;

test('the model describes itself: labels, pre-processing, dynamic batch, size on disk', async () => {
  const bytes = fs.readFileSync(MODEL);
  assert.ok(bytes.length <= 10 * 1024 * 1024, `model is ${(bytes.length / 1e6).toFixed(2)} MB`);
  const props = readOnnxMetadataProps(bytes);
  assert.deepEqual(JSON.parse(props.labels), CLASSES);
  const pre = JSON.parse(props.preprocess);
  assert.deepEqual(Object.keys(pre).sort(), ['channels', 'dtype', 'height', 'layout', 'mean', 'resize', 'std', 'width']);
  assert.ok(['cover', 'contain', 'fill'].includes(pre.resize));
  assert.ok(['RGB', 'BGR'].includes(pre.channels));
  assert.ok(['NCHW', 'NHWC'].includes(pre.layout));
  assert.ok(['float32', 'uint8'].includes(pre.dtype));
  assert.equal(pre.mean.length, 3);
  assert.equal(pre.std.length, 3);

  const session = await ort.InferenceSession.create(bytes);
  try {
    assert.equal(session.inputNames.length, 1);
    assert.equal(session.outputNames.length, 1);
    const input = session.inputMetadata[0];
    const output = session.outputMetadata[0];
    assert.equal(input.type, pre.dtype);
    assert.equal(typeof input.shape[0], 'string', 'batch dimension is dynamic');
    assert.deepEqual(input.shape.slice(1), pre.layout === 'NCHW' ? [3, pre.height, pre.width] : [pre.height, pre.width, 3]);
    assert.equal(typeof output.shape[0], 'string');
    assert.equal(output.shape[1], CLASSES.length);
    // several cameras' frames in one batch
    const dims = [3, ...input.shape.slice(1)];
    const size = dims.reduce((a, b) => a * b, 1);
    const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', new Float32Array(size), dims) });
    assert.deepEqual(out[session.outputNames[0]].dims, [3, CLASSES.length]);
  } finally {
    await session.release();
  }
});

test(`top-1 accuracy on the validation photos is at least ${MIN_ACCURACY * 100} %`, async () => {
  const bytes = fs.readFileSync(MODEL);
  const { labels, preprocess } = describeModel(readOnnxMetadataProps(bytes));
  const session = await ort.InferenceSession.create(bytes);
  const photos = validationPhotos();
  assert.ok(photos.length >= 400, `${photos.length} validation photos`);
  let right = 0;
  const perClass = Object.fromEntries(CLASSES.map((c) => [c, { right: 0, total: 0 }]));
  try {
    for (const { file, label } of photos) {
      const { tensor } = await imageToTensor(fs.readFileSync(file), preprocess);
      const out = await session.run({ [session.inputNames[0]]: new ort.Tensor(tensor.type, tensor.data, tensor.dims) });
      const predicted = classify(out[session.outputNames[0]].data, labels, 1).label;
      perClass[label].total++;
      if (predicted === label) {
        right++;
        perClass[label].right++;
      }
    }
  } finally {
    await session.release();
  }
  const accuracy = right / photos.length;
  console.log(`# validation accuracy ${(accuracy * 100).toFixed(1)} % (${right}/${photos.length}); ` +
    Object.entries(perClass).map(([c, v]) => `${c} ${v.right}/${v.total}`).join(', '));
  assert.ok(accuracy >= MIN_ACCURACY, `accuracy ${(accuracy * 100).toFixed(1)} %`);
});

test('the model card states what the shipped model scores through the pipeline (node tools/model-card.js regenerates it)', async () => {
  const { evaluateClassifier } = require('../tools/evaluate');
  const { validationPart, statedPart } = require('../tools/model-card');
  const card = fs.readFileSync(require('path').join(__dirname, '..', 'models', 'README.md'), 'utf8');
  const measured = await evaluateClassifier(MODEL);
  const stated = statedPart(card, 'validation');
  const [, right, total] = /\*\*[\d.]+ % \((\d+)\/(\d+)\)\*\*/.exec(stated ?? '') ?? [];
  assert.equal(Number(total), measured.photos, 'the card is about the same validation photos');
  // Within one photo: the closest call among the 414 is a logit gap of 0.005, which another CPU's
  // kernels or a sharp upgrade may tip; more than that means the card was not regenerated.
  assert.ok(Math.abs(Number(right) - measured.correct) <= 1, `the card states ${right}/${total}, the model scores ${measured.correct}/${measured.photos}:\n${validationPart(measured)}`);
});
