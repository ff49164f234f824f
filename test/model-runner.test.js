// ModelRunner and ModelService without Node-RED, with real onnxruntime-node and the test models of
// test/fixtures/models; and the pure checks they rely on.
const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { ModelRunner, liveWorkerCount, RunnerClosedError } = require('../nodes/lib/model-runner');
const { ModelService } = require('../nodes/ml-model/model-service');
const { checkReplacementInput, checkReplacementOutputs, classifyBatch } = require('../nodes/lib/model-io');
const { checkFinite, firstNonFinite, toTensorValue } = require('../nodes/lib/tensor');
const { MODEL, MODEL_ROW, MODEL_ROW_SIZE, tmpDir, sleep, until } = require('./helpers');

const fixture = (name) => path.join(__dirname, 'fixtures', 'models', name);
const session = { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 0 };
const x = (...values) => ({ x: { type: 'float32', dims: [1, values.length], data: Float32Array.from(values) } });

const unhandled = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));
after(() => {
  assert.deepEqual(unhandled.map(String), [], 'no promise rejection went unhandled');
  assert.equal(liveWorkerCount(), 0, 'every runner stopped its worker');
});

test('a runner closed at any point of a load never leaves a worker, and refuses later loads and runs', async () => {
  // Close after 0..400 ms: before the file is read, while the worker starts, while onnxruntime loads.
  for (let delayMs = 0; delayMs <= 400; delayMs += 25) {
    const runner = new ModelRunner(MODEL, { session });
    const loading = runner.load().then(() => 'loaded', (err) => err);
    await sleep(delayMs);
    await runner.close();
    const outcome = await loading;
    assert.ok(outcome === 'loaded' || outcome instanceof RunnerClosedError, `closed after ${delayMs} ms: ${outcome}`);
    assert.equal(liveWorkerCount(), 0, `no worker after a close ${delayMs} ms into the load`);
    await assert.rejects(runner.load(), RunnerClosedError);
    await assert.rejects(runner.run(x(1, 1, 1)), RunnerClosedError);
    assert.equal(liveWorkerCount(), 0);
  }
});

test('a close during the model check refuses the model and stops the worker', async () => {
  const runner = new ModelRunner(fixture('three-classes.onnx'), { session });
  const loading = runner.load(async () => {
    await runner.close();
  });
  await assert.rejects(loading, RunnerClosedError);
  assert.equal(liveWorkerCount(), 0);
});

test('a check that throws keeps the serving model; the check sees the candidate and the serving model', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'm.onnx');
  fs.copyFileSync(fixture('three-classes.onnx'), file);
  const runner = new ModelRunner(file, { session });
  try {
    await runner.load();
    fs.copyFileSync(fixture('three-classes-reversed.onnx'), file);
    const seen = [];
    await assert.rejects(runner.load((candidate, serving) => {
      seen.push([candidate.outputs[0].shape, serving.outputs[0].shape]);
      throw new Error('not this one');
    }), /not this one/);
    assert.deepEqual(seen, [[[1, 3], [1, 3]]]);
    const { outputs } = await runner.run(x(1, 1, Math.E));
    assert.ok(outputs.scores.data[2] > 0.99, 'the first model (log x) still answers');
    await runner.load();
    assert.ok((await runner.run(x(1, 1, Math.E))).outputs.scores.data[2] < -0.99, 'an accepted model answers (-log x)');
  } finally {
    await runner.close();
  }
});

test('a 1 ms run timeout against the real waste classifier fails every run and keeps one worker', async () => {
  const runner = new ModelRunner(MODEL, { session, runTimeoutMs: 1 });
  const replaced = [];
  runner.on('worker-replaced', (reason) => replaced.push(reason));
  try {
    await runner.load();
    const input = { type: 'float32', dims: [1, ...MODEL_ROW], data: new Float32Array(MODEL_ROW_SIZE) };
    for (let i = 0; i < 3; i++) {
      await assert.rejects(runner.run({ input }), /did not finish within the run timeout \(ml-model setting "Run timeout": 1 ms\)/);
    }
    assert.deepEqual(replaced, Array(3).fill('a run took longer than 1 ms'));
    await until(() => liveWorkerCount() === 1, 5000, 'the replaced workers to exit');
  } finally {
    await runner.close();
  }
  assert.equal(liveWorkerCount(), 0);
});

/** A ModelService of the three-class fixture (copied to its own folder), its log collected. */
function serviceOf(options = {}) {
  const file = path.join(tmpDir(), 'm.onnx');
  fs.copyFileSync(fixture('three-classes.onnx'), file);
  const logged = { info: [], warn: [], error: [] };
  const service = new ModelService({
    modelPath: file, session, runTimeoutMs: 5000, labels: { from: 'list', labels: ['a', 'b', 'c'] }, watch: true, ...options,
    log: { info: (m) => logged.info.push(m), warn: (m) => logged.warn.push(m), error: (m) => logged.error.push(m) },
  });
  return { service, logged, file };
}

test('ModelService: a refused reload warns once, keeps the old labels and model; stop ends the watch and the worker', async () => {
  const { service, logged, file } = serviceOf({ watchIntervalMs: 50, settleMs: 50 });
  service.start();
  // Node-RED keeps the process running; here nothing else would while the file watch waits.
  const keepAlive = setInterval(() => undefined, 1000);
  try {
    const first = await service.ready();
    assert.deepEqual(first.classLabels, ['a', 'b', 'c']);
    const refused = new Promise((resolve) => service.events.once('reload-failed', resolve));
    await sleep(20);
    fs.copyFileSync(fixture('four-classes.onnx'), file);
    assert.match(await refused, /the model outputs 4 classes but 3 labels were given/);
    assert.equal(logged.warn.length, 1);
    const still = await service.ready();
    assert.deepEqual(still.outputs[0].shape, [1, 3]);
    const { outputs } = await service.run(x(1, 1, 5));
    assert.equal(classifyBatch(outputs.scores, still.classLabels, 1)[0].label, 'c');
  } finally {
    await service.stop();
  }
  assert.equal(service.state, 'idle');
  assert.equal(liveWorkerCount(), 0);
  fs.copyFileSync(fixture('three-classes-reversed.onnx'), file);
  await sleep(300);
  assert.equal(liveWorkerCount(), 0, 'a stopped service does not react to the file any more');
  await assert.rejects(service.ready(), /not in use/);
  clearInterval(keepAlive);
});

test('ModelService: a model copied in slowly (scp over a link) is loaded once, whole, after the copy ends', async () => {
  // The default watch: a poll a second.
  const { service, logged, file } = serviceOf();
  const failed = [];
  service.events.on('reload-failed', (why) => failed.push(why));
  service.start();
  const keepAlive = setInterval(() => undefined, 1000);
  try {
    await service.ready();
    await sleep(1100);
    // The new model arrives in 8 pieces over 3.2 s, written in place as cp and scp do.
    const next = fs.readFileSync(fixture('three-classes-reversed.onnx'));
    const fd = fs.openSync(file, 'w');
    for (let i = 0; i < 8; i++) {
      fs.writeSync(fd, next, Math.floor((i * next.length) / 8), Math.floor(((i + 1) * next.length) / 8) - Math.floor((i * next.length) / 8));
      await sleep(400);
    }
    fs.closeSync(fd);
    await until(() => logged.info.some((m) => /^reloaded /.test(m)), 10_000, 'the reload');
    await sleep(1500);
    assert.deepEqual(failed, [], 'no half-copied model was tried');
    assert.equal(logged.info.filter((m) => /^reloaded /.test(m)).length, 1, 'loaded once');
    const { outputs } = await service.run(x(1, 1, 5));
    assert.equal(classifyBatch(outputs.scores, ['a', 'b', 'c'], 1)[0].label, 'a', 'the new model (its classes reversed) runs');
  } finally {
    clearInterval(keepAlive);
    await service.stop();
  }
});

test('a GPU execution provider this device lacks falls back to the CPU with one warning, as the setting promises', async () => {
  // This machine has onnxruntime-node's CPU build only: creating a CUDA or TensorRT session fails here
  // ("Failed to load shared library"), as on ARM devices whose binding has no CUDA at all.
  for (const provider of ['cuda', 'tensorrt']) {
    const { service, logged } = serviceOf({ session: { ...session, executionProviders: [provider, 'cpu'] }, watch: false });
    service.start();
    try {
      const info = await service.ready();
      const { outputs } = await service.run(x(1, 1, 5));
      assert.equal(classifyBatch(outputs.scores, info.classLabels, 1)[0].label, 'c', 'runs on the CPU');
      assert.equal(logged.warn.length, 1);
      assert.match(logged.warn[0], new RegExp(`^the ${provider} execution provider is not available here \\(.+\\): the model runs on the CPU$`));
      assert.deepEqual(logged.error, []);
    } finally {
      await service.stop();
    }
  }
  assert.equal(liveWorkerCount(), 0);
});

test('checkReplacementInput: same type, rank and fixed sizes; no free size may become fixed', () => {
  const serving = { name: 'input', type: 'float32', shape: ['batch', 3, 160, 120] };
  checkReplacementInput({ name: 'input', type: 'float32', shape: ['n', 3, 160, 120] }, serving);
  checkReplacementInput({ name: 'input', type: 'float32', shape: ['n', 3, 'h', 'w'] }, serving);
  assert.throws(() => checkReplacementInput({ name: 'input', type: 'uint8', shape: ['n', 3, 160, 120] }, serving), /element type uint8 instead of float32/);
  assert.throws(() => checkReplacementInput({ name: 'input', type: 'float32', shape: ['n', 3, 224, 224] }, serving), /dimension 2 is 224 instead of 160/);
  assert.throws(() => checkReplacementInput({ name: 'input', type: 'float32', shape: [1, 3, 160, 120] }, serving), /dimension 0 is 1 instead of batch/);
  assert.throws(() => checkReplacementInput({ name: 'input', type: 'float32', shape: [3, 160, 120] }, serving), /3 dimensions instead of 4/);
  assert.throws(() => checkReplacementInput({ name: 'images', type: 'float32', shape: ['n', 3, 160, 120] }, serving), /named "images" instead of "input" \(redeploy to switch to it\)/);
  checkReplacementOutputs([{ name: 'logits' }], [{ name: 'logits' }]);
  assert.throws(() => checkReplacementOutputs([{ name: 'output0' }], [{ name: 'logits' }]), /its outputs "output0" are not the serving model's "logits" \(redeploy to switch to it\)/);
});

test('non-finite values are found in inputs and outputs, integer tensors never hold one', () => {
  assert.equal(firstNonFinite(Float32Array.from([1, 2])), undefined);
  assert.deepEqual(firstNonFinite(Float64Array.from([1, Infinity, NaN])), { index: 1, value: Infinity });
  assert.equal(firstNonFinite(Uint8Array.from([255])), undefined);
  assert.throws(() => checkFinite({ type: 'float32', dims: [2], data: Float32Array.from([0, NaN]) }), /^Error: Expected finite tensor values but received NaN at index 1 of msg.payload.data$/);
  assert.throws(() => classifyBatch({ type: 'float32', dims: [2, 2], data: Float32Array.from([0, 1, NaN, 0]) }, ['p', 'q'], 1, 'logits'),
    /the model's output "logits" holds NaN at index 2 \(class "p"\); expected finite scores/);
});

test('plain-array tensor data is checked value by value instead of silently converted', () => {
  assert.throws(() => toTensorValue({ type: 'uint8', dims: [2], data: [1, 300] }), /msg.payload.data\[1\] must be a whole number from 0 to 255 for tensor type uint8, got 300/);
  assert.throws(() => toTensorValue({ type: 'int32', dims: [1], data: [1.5] }), /msg.payload.data\[0\] must be a whole number/);
  assert.throws(() => toTensorValue({ type: 'float32', dims: [2], data: [1, '2'] }), /msg.payload.data\[1\] must be a number \(tensor type float32\), got string "2"/);
  assert.throws(() => toTensorValue({ type: 'float32', dims: [1], data: 'abc' }), /msg.payload.data must be a typed array or an array of numbers, got string/);
  assert.deepEqual(Array.from(toTensorValue({ type: 'int64', dims: [2], data: [1, -2] }).data), [1n, -2n]);
});

test('a batch given as rows runs as one tensor of those rows, on the data pipe and inside the IPC message alike', async () => {
  const { wireFeeds } = require('../nodes/lib/model-runner');
  const rows = [0, 1, 2].map((k) => Float32Array.from({ length: MODEL_ROW_SIZE }, (_, i) => Math.sin(i * (k + 1)) * 2));
  // A row that is a view into a larger buffer sends its own bytes only.
  const padded = new Float32Array(rows[1].length + 10);
  padded.set(rows[1], 5);
  const batch = { type: 'float32', dims: [3, ...MODEL_ROW], rows: [rows[0], padded.subarray(5, 5 + rows[1].length), rows[2]] };
  const runner = new ModelRunner(MODEL, { session });
  try {
    await runner.load();
    const alone = [];
    for (const data of rows) alone.push((await runner.run({ input: { type: 'float32', dims: [1, ...MODEL_ROW], data } })).outputs);
    const together = (await runner.run({ input: batch })).outputs;
    const name = Object.keys(together)[0];
    assert.deepEqual(together[name].dims, [3, alone[0][name].dims[1]]);
    const width = alone[0][name].data.length;
    rows.forEach((_, r) => {
      Array.from(alone[r][name].data).forEach((v, i) => assert.ok(Math.abs(v - together[name].data[r * width + i]) < 1e-4, `row ${r} value ${i}`));
    });
  } finally {
    await runner.close();
  }
  // Without a data pipe (Windows) the rows are joined into one typed array of their type.
  const { wire, piped } = wireFeeds({ input: batch }, false);
  assert.deepEqual(piped, []);
  assert.ok(wire.input.data instanceof Float32Array);
  assert.deepEqual(Array.from(wire.input.data.subarray(rows[0].length, rows[0].length + 4)), Array.from(rows[1].subarray(0, 4)));
  assert.equal(wire.input.data.length, 3 * rows[0].length);
  const piping = wireFeeds({ input: batch }, true);
  assert.deepEqual(piping.wire.input, { type: 'float32', dims: [3, ...MODEL_ROW], piped: 3 * rows[0].byteLength });
  assert.equal(piping.piped[0].length, 3);
});
