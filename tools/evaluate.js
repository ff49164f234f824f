#!/usr/bin/env node
// Accuracy of a classifier on the validation photos through the collection's own pipeline (sharp
// pre-processing as the model's metadata says, onnxruntime-node, the nodes' classification), the
// same path test/model-accuracy.test.js measures. Prints accuracy, per-class precision/recall and
// the confusion matrix; --json writes them (and, with --logits, every photo's logits) to a file.
// Usage: npx tsc -p . && node tools/evaluate.js [--model models/waste-classifier.onnx] [--json out.json] [--logits]
// tools/model-card.js uses evaluateClassifier() for the model card's figures.
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const { root, defaultDataset, option, flag } = require('./cli');
const { readOnnxMetadataProps, describeModel } = require(path.join(root, 'nodes/lib/onnx-metadata'));
const { imageToTensor } = require(path.join(root, 'nodes/lib/preprocess'));
const { classify } = require(path.join(root, 'nodes/lib/classification'));

const modelPath = path.resolve(option('model', path.join(root, 'models', 'waste-classifier.onnx')));
const dataset = path.resolve(option('data', defaultDataset));
const splitFile = path.resolve(option('split', path.join(root, 'tools', 'train', 'split', 'val.txt')));
const jsonOut = option('json', '');
const keepLogits = flag('logits');

/** Accuracy, per-class precision/recall and the confusion matrix of a classifier on one split. */
async function evaluateClassifier(modelPath, { dataset = defaultDataset, splitFile = path.join(root, 'tools', 'train', 'split', 'val.txt'), keepLogits = false } = {}) {
  const bytes = fs.readFileSync(modelPath);
  const { labels, preprocess } = describeModel(readOnnxMetadataProps(bytes));
  const photos = fs.readFileSync(splitFile, 'utf8').split('\n').filter((l) => l && !l.startsWith('#'))
    .map((rel) => ({ rel, label: rel.split('/')[0] }));
  const session = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all' });
  const k = labels.length;
  const matrix = labels.map(() => new Array(k).fill(0));
  const logits = [];
  try {
    for (const { rel, label } of photos) {
      const { tensor } = await imageToTensor(fs.readFileSync(path.join(dataset, rel)), preprocess);
      const out = await session.run({ [session.inputNames[0]]: new ort.Tensor(tensor.type, tensor.data, tensor.dims) });
      const values = out[session.outputNames[0]].data;
      const predicted = classify(values, labels, 1).label;
      matrix[labels.indexOf(label)][labels.indexOf(predicted)]++;
      if (keepLogits) logits.push({ photo: rel, logits: Array.from(values) });
    }
  } finally {
    await session.release();
  }
  const right = labels.reduce((s, _, i) => s + matrix[i][i], 0);
  const round = (x) => Math.round(x * 1e4) / 1e4;
  const perClass = Object.fromEntries(labels.map((c, i) => {
    const predictedAs = matrix.reduce((s, row) => s + row[i], 0);
    const support = matrix[i].reduce((a, b) => a + b, 0);
    return [c, { precision: round(matrix[i][i] / Math.max(predictedAs, 1)), recall: round(matrix[i][i] / Math.max(support, 1)), support }];
  }));
  return {
    model: path.relative(root, modelPath),
    bytes: bytes.length,
    photos: photos.length,
    correct: right,
    accuracy: round(right / photos.length),
    per_class: perClass,
    confusion_matrix: { rows_true_cols_predicted: labels, matrix },
    ...(keepLogits ? { logits } : {}),
  };
}

async function main() {
  const result = await evaluateClassifier(modelPath, { dataset, splitFile, keepLogits });
  const labels = result.confusion_matrix.rows_true_cols_predicted;
  const { matrix } = result.confusion_matrix;
  const perClass = result.per_class;
  console.log(`${result.model}: ${(100 * result.accuracy).toFixed(1)} % (${result.correct}/${result.photos}), ${(result.bytes / 1e6).toFixed(2)} MB`);
  for (const [c, v] of Object.entries(perClass)) console.log(`  ${c.padEnd(10)} precision ${v.precision.toFixed(2)} recall ${v.recall.toFixed(2)} (${v.support})`);
  console.log(`  confusion (rows true, columns predicted, ${labels.join(' ')}):`);
  for (const [i, row] of matrix.entries()) console.log(`  ${labels[i].padEnd(10)} ${row.map((n) => String(n).padStart(4)).join('')}`);
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(result, null, 2) + '\n');
}

module.exports = { evaluateClassifier };

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
