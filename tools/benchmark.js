#!/usr/bin/env node
// Benchmark of the shipped waste classifier on this machine: size on disk, single-image inference
// latency with onnxruntime-node (the model card's figures), sharp pre-processing time, and the
// ml-model worker pipeline's throughput and memory. Usage: npm run benchmark [-- --runs 500]
// With --cameras it runs the sorter flow benchmark instead (tools/benchmark-flow.js).
const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require('onnxruntime-node');

const { root, defaultDataset, option, flag, percentile } = require('./cli');
const { readOnnxMetadataProps, describeModel } = require(path.join(root, 'nodes/lib/onnx-metadata'));
const { imageToTensor } = require(path.join(root, 'nodes/lib/preprocess'));
const { ModelRunner } = require(path.join(root, 'nodes/lib/model-runner'));

const modelPath = option('model', path.join(root, 'models', 'waste-classifier.onnx'));
const runs = Number(option('runs', 300));
const dataset = option('data', defaultDataset);

const summary = (s) => `mean ${s.mean.toFixed(2)} ms, p50 ${s.p50.toFixed(2)} ms, p95 ${s.p95.toFixed(2)} ms, max ${s.max.toFixed(2)} ms`;
const stats = (values) => ({ n: values.length, mean: values.reduce((a, b) => a + b, 0) / values.length, p50: percentile(values, 50), p95: percentile(values, 95), max: Math.max(...values) });

function samplePhotos(n) {
  const photos = [];
  if (!fs.existsSync(dataset)) return photos;
  for (const c of fs.readdirSync(dataset).sort()) {
    const dir = path.join(dataset, c);
    if (!fs.statSync(dir).isDirectory()) continue;
    for (const f of fs.readdirSync(dir).sort().slice(0, Math.ceil(n / 6))) photos.push(path.join(dir, f));
  }
  return photos.slice(0, n);
}

/** Tensors of sample photos pre-processed as `preprocess` says, and the pre-processing times (after 5 warm-up photos). */
async function preprocessSample(preprocess, n) {
  const tensors = [];
  const times = [];
  let source = '';
  for (const file of samplePhotos(n)) {
    const r = await imageToTensor(fs.readFileSync(file), preprocess);
    times.push(r.ms);
    tensors.push(r.tensor);
    source = `${r.sourceWidth} x ${r.sourceHeight}`;
  }
  if (!tensors.length) tensors.push({ type: 'float32', dims: [1, 3, preprocess.height, preprocess.width], data: new Float32Array(3 * preprocess.height * preprocess.width) });
  return { tensors, times: { ...stats(times.slice(5)), source } };
}

/** Single-image inference latency (ms) with `threads` intra-op threads, after 20 warm-up runs. */
async function inferenceLatency(bytes, tensors, threads, runs) {
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  try {
    const feed = (t) => ({ [session.inputNames[0]]: new ort.Tensor(t.type, t.data, t.dims) });
    for (let i = 0; i < 20; i++) await session.run(feed(tensors[i % tensors.length]));
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t0 = process.hrtime.bigint();
      await session.run(feed(tensors[i % tensors.length]));
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return stats(times);
  } finally {
    await session.release();
  }
}

async function main() {
  const bytes = fs.readFileSync(modelPath);
  const { preprocess, labels } = describeModel(readOnnxMetadataProps(bytes));
  console.log(`machine: ${os.cpus().length} x ${os.cpus()[0].model}, Node ${process.version}, onnxruntime-node ${require('onnxruntime-node/package.json').version}`);
  console.log(`model: ${path.relative(root, modelPath)}, ${(bytes.length / 1e6).toFixed(2)} MB (${(bytes.length / 1048576).toFixed(2)} MiB), input ${preprocess.width}x${preprocess.height} ${preprocess.layout}, ${labels.length} classes`);

  const pre = await preprocessSample(preprocess, 60);
  const { tensors } = pre;
  if (pre.times.n) console.log(`sharp pre-processing of ${pre.times.n} ${pre.times.source} JPEG photos: ${summary(pre.times)}`);
  for (const threads of [1, 2]) {
    console.log(`inference, batch 1, ${threads} thread(s), ${runs} runs: ${summary(await inferenceLatency(bytes, tensors, threads, runs))}`);
  }

  // The path the nodes take: worker process, the tensor sent over IPC, classification afterwards.
  const rssBefore = process.memoryUsage().rss;
  const runner = new ModelRunner(modelPath, { session: { executionProviders: ['cpu'], intraOpNumThreads: 0, interOpNumThreads: 0 } });
  await runner.load();
  const t0 = Date.now();
  let frames = 0;
  const roundTrips = [];
  while (Date.now() - t0 < 5000) {
    const src = tensors[frames % tensors.length];
    const copy = { type: src.type, dims: src.dims, data: src.data.slice() };
    const s = process.hrtime.bigint();
    await runner.run({ input: copy });
    roundTrips.push(Number(process.hrtime.bigint() - s) / 1e6);
    frames++;
  }
  const seconds = (Date.now() - t0) / 1000;
  const rss = process.memoryUsage().rss;
  console.log(`worker pipeline (ml-model): ${(frames / seconds).toFixed(0)} inferences/s for ${seconds.toFixed(0)} s, round trip ${summary(stats(roundTrips))}`);
  console.log(`memory: process RSS ${(rss / 1048576).toFixed(0)} MiB with the model loaded in its worker (+${((rss - rssBefore) / 1048576).toFixed(0)} MiB for the worker and session)`);
  await runner.close();
}

module.exports = { inferenceLatency, preprocessSample };

if (require.main === module) {
  if (flag('cameras')) {
    require('./benchmark-flow'); // the flow-level benchmark: npm run benchmark -- --cameras 1,10,50,100
  } else {
    main().catch((err) => {
      console.error(err);
      process.exit(1);
    });
  }
}
