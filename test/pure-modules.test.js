// The pure modules: classification maths, routing rules, the frame queue, topics, ONNX metadata.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const { softmax, isProbabilityVector, topK, classify } = require('../nodes/lib/classification');
const { classifyBatch, checkInputFits } = require('../nodes/lib/model-io');
const { FairQueue } = require('../nodes/lib/frame-queue');
const { groupForBatches, stackRows, outputsOfRow, hasDynamicBatch } = require('../nodes/lib/batching');
const { Router, validateRules } = require('../nodes/ml-route/routing');
const { renderTopic, encodePayload } = require('../nodes/greengrass-publish/publish-format');
const { checkTopic, checkOutgoing } = require('../nodes/greengrass-connection/outgoing');
const { readOnnxMetadataProps, describeModel } = require('../nodes/lib/onnx-metadata');
const { toTensorValue } = require('../nodes/lib/tensor');
const { parseBrokerUrl, parseProtocol } = require('../nodes/greengrass-connection/mqtt-transport');
const { MODEL } = require('./helpers');

test('softmax is stable for large logits and sums to one', () => {
  const p = softmax([1000, 1001, 1002]);
  assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  assert.ok(Math.abs(p[2] - 0.6652409557748219) < 1e-12);
  assert.ok(p[2] > p[1] && p[1] > p[0]);
});

test('probabilities are recognised and not softmaxed twice', () => {
  assert.equal(isProbabilityVector([0.2, 0.3, 0.5]), true);
  assert.equal(isProbabilityVector([2, -1, 0.5]), false);
  const r = classify([0.1, 0.7, 0.2], ['a', 'b', 'c'], 2);
  assert.equal(r.label, 'b');
  assert.equal(r.score, Float64Array.from([0.7])[0]);
  assert.deepEqual(r.topK.map((p) => p.index), [1, 2]);
});

test('logits get softmax and top-k is sorted with indices', () => {
  const r = classify([2, 0, 1], ['x', 'y', 'z'], 3);
  assert.equal(r.label, 'x');
  assert.deepEqual(r.topK.map((p) => p.label), ['x', 'z', 'y']);
  assert.ok(Math.abs(r.topK.reduce((a, p) => a + p.score, 0) - 1) < 1e-9);
  assert.deepEqual(topK([0.1, 0.5], undefined, 5).map((p) => p.label), ['1', '0']);
});

test('labels that do not match the outputs are an error naming both counts', () => {
  assert.throws(() => classify([1, 2, 3], ['a', 'b'], 1), /outputs 3 classes but 2 labels/);
});

test('classifyBatch gives one result per batch row', () => {
  const rows = classifyBatch({ type: 'float32', dims: [2, 3], data: Float32Array.from([5, 0, 0, 0, 0, 5]) }, ['a', 'b', 'c'], 1);
  assert.deepEqual(rows.map((r) => r.label), ['a', 'c']);
});

test('checkInputFits explains shape and type mismatches', () => {
  const input = { name: 'input', type: 'float32', shape: ['batch', 3, 120, 160] };
  checkInputFits({ type: 'float32', dims: [4, 3, 120, 160], data: new Float32Array(0) }, input);
  assert.throws(() => checkInputFits({ type: 'float32', dims: [1, 3, 100, 100] }, input), /does not fit the model input "input" float32 \[batch, 3, 120, 160\]: dimension 2 must be 120/);
  assert.throws(() => checkInputFits({ type: 'uint8', dims: [1, 3, 120, 160] }, input), /wrong element type/);
  assert.throws(() => checkInputFits({ type: 'float32', dims: [3, 120, 160] }, input), /wrong number of dimensions/);
});

test('toTensorValue accepts JSON round-trips and rejects images', () => {
  const t = toTensorValue({ type: 'float32', dims: [1, 2], data: [0.5, 1.5] });
  assert.ok(t.data instanceof Float32Array);
  assert.throws(() => toTensorValue(Buffer.from('jpeg')), /Buffer \(an image\? pass it through ml-preprocess first\)/);
  assert.throws(() => toTensorValue({ type: 'float32', dims: [1, 3], data: [1, 2] }), /needs 3 values but its data has 2/);
  assert.throws(() => toTensorValue({ type: 'complex', dims: [1], data: [1] }), /tensor type must be one of/);
});

test('the frame queue keeps each camera\'s newest frame, never drops another camera\'s, and serves cameras in turn', () => {
  const q = new FairQueue('latest', 1);
  assert.equal(q.offer('a', 'a1'), undefined);
  assert.equal(q.offer('a', 'a2'), 'a1', 'a newer frame of the same camera replaces the older');
  assert.equal(q.offer('b', 'b1'), undefined, 'another camera\'s only frame stays');
  assert.equal(q.offer('a', 'a3'), 'a2');
  assert.equal(q.dropped('a'), 2);
  assert.equal(q.dropped('b'), 0);
  assert.deepEqual(q.take(8), ['a3', 'b1']);
  // Round-robin: a flooding camera with a deep lane still lets every other camera through each round.
  const deep = new FairQueue('latest', 10);
  for (let i = 1; i <= 5; i++) deep.offer('flood', `f${i}`);
  deep.offer('slow1', 's1');
  deep.offer('slow2', 's2');
  assert.deepEqual(deep.take(3), ['f1', 's1', 's2']);
  assert.deepEqual(deep.take(2), ['f2', 'f3']);
  const keepOld = new FairQueue('oldest', 2);
  keepOld.offer('', 1);
  keepOld.offer('', 2);
  assert.equal(keepOld.offer('', 3), 3, 'keep the oldest: the new arrival is dropped');
  assert.deepEqual(keepOld.drain(), [1, 2]);
  assert.throws(() => new FairQueue('latest', 0), /Expected a queue size per camera of at least 1 but received 0/);
});

test('batches: one-row tensors of one shape stack, outputs split back per row', () => {
  const row = (v) => ({ type: 'float32', dims: [1, 2], data: Float32Array.from([v, v + 0.5]) });
  const groups = groupForBatches([row(1), row(2), { type: 'float32', dims: [1, 3], data: new Float32Array(3) }, row(3)], (t) => t, 8);
  assert.deepEqual(groups.map((g) => g.length), [2, 1, 1], 'a tensor of another shape starts a new run');
  assert.deepEqual(groupForBatches([row(1), row(2), row(3)], (t) => t, 2).map((g) => g.length), [2, 1], 'at most max rows per run');
  const stacked = stackRows([row(1), row(2)]);
  assert.deepEqual(stacked.dims, [2, 2]);
  assert.deepEqual(Array.from(stacked.data), [1, 1.5, 2, 2.5]);
  const outputs = { logits: { type: 'float32', dims: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }, shared: { type: 'float32', dims: [4], data: new Float32Array(4) } };
  const second = outputsOfRow(outputs, 1, 2);
  assert.deepEqual(second.logits.dims, [1, 3]);
  assert.deepEqual(Array.from(second.logits.data), [4, 5, 6]);
  assert.equal(second.shared, outputs.shared, 'an output without the batch dimension is shared');
  assert.ok(hasDynamicBatch({ name: 'input', shape: ['batch', 3, 160, 120] }));
  assert.ok(!hasDynamicBatch({ name: 'input', shape: [1, 3, 160, 120] }));
});

test('Router applies per-rule thresholds and sends the rest to uncertain', () => {
  const rules = validateRules([
    { name: 'containers', labels: 'glass,metal,plastic', threshold: 0.6 },
    { name: 'fibre', labels: ['paper', 'cardboard'], threshold: 0.8 },
  ]);
  const r = new Router({ rules, uncertainName: 'review', consecutive: 1 });
  assert.deepEqual([r.decide('metal', 0.61).output, r.decide('metal', 0.61).bin], [0, 'containers']);
  assert.equal(r.decide('paper', 0.7).output, 2);
  assert.equal(r.decide('paper', 0.7).reason, 'below-threshold');
  assert.equal(r.decide('paper', 0.9).output, 1);
  assert.equal(r.decide('trash', 0.99).reason, 'no-rule');
  assert.throws(() => validateRules([{ labels: 'a', threshold: 2 }]), /threshold must be between 0 and 1/);
  assert.throws(() => validateRules([]), /at least one routing rule/);
});

test('Router with agreement waits for N consecutive frames per camera', () => {
  const r = new Router({ rules: validateRules([{ name: 'c', labels: 'glass,metal', threshold: 0.5 }]), uncertainName: 'review', consecutive: 3 });
  assert.equal(r.decide('glass', 0.9, 'cam1').output, null);
  assert.equal(r.decide('glass', 0.9, 'cam2').output, null); // other camera keeps its own history
  assert.equal(r.decide('glass', 0.9, 'cam1').output, null);
  assert.equal(r.decide('glass', 0.9, 'cam1').output, 0);
  assert.equal(r.decide('metal', 0.9, 'cam1').agreeing, 1); // a new class restarts the count
  assert.equal(r.decide('metal', 0.2, 'cam1').output, 1); // uncertain goes out at once and breaks the run
  assert.equal(r.decide('metal', 0.9, 'cam1').agreeing, 1);
});

test('topic templates fill message fields and cannot add levels or wildcards', () => {
  assert.equal(renderTopic('recycling/{{frame.camera}}/result', { frame: { camera: 'cam1' } }), 'recycling/cam1/result');
  assert.equal(renderTopic('r/{{msg.frame.camera}}', { frame: { camera: 'a/b+#' } }), 'r/a_b__');
  assert.equal(renderTopic('r/{{frame.camera}}', { frame: { camera: 'nul\u0000' } }), 'r/nul_');
  assert.throws(() => renderTopic('r/{{frame.camera}}', {}), /needs msg.frame.camera, which is missing/);
});

test('what brokers and the nucleus refuse is refused before a message is accepted', () => {
  assert.equal(checkTopic('recycling/belt1/result'), 'recycling/belt1/result');
  assert.throws(() => checkTopic('r/+/x'), /wildcard/);
  assert.throws(() => checkTopic(''), /no topic/);
  assert.throws(() => checkTopic(42), /expected the topic to be a string but received number/);
  assert.throws(() => checkTopic('a\u0000b'), /NUL character/);
  assert.throws(() => checkTopic('$aws/things/x/shadow/update'), /starts with \$.*allow \$ topics/);
  assert.equal(checkTopic('$aws/things/x/shadow/update', { allowReserved: true }), '$aws/things/x/shadow/update');
  assert.throws(() => checkTopic('x'.repeat(65_536)), /65536 bytes long; MQTT allows at most 65535/);
  // AWS IoT Core quotas: topic at most 256 bytes and 7 slashes, payload at most 128 KB.
  assert.throws(() => checkTopic('a/'.repeat(8) + 'b', { iotCore: true }), /has 8 slashes; AWS IoT Core takes at most 7/);
  assert.throws(() => checkTopic('t'.repeat(257), { iotCore: true }), /257 bytes long; AWS IoT Core takes at most 256/);
  assert.doesNotThrow(() => checkOutgoing({ topic: 't', payload: 'x'.repeat(128 * 1024) }, { iotCore: true }));
  assert.throws(() => checkOutgoing({ topic: 't', payload: Buffer.alloc(128 * 1024 + 1) }, { iotCore: true }), /131073 bytes; AWS IoT Core takes at most 131072/);
  assert.throws(() => checkOutgoing({ topic: 't', payload: 'xx' }, { maxPayloadBytes: 1 }), /2 bytes; the broker takes at most 1 bytes on t/);
});

test('payload encoding: JSON, typed arrays as arrays, buffers as bytes', () => {
  assert.equal(encodePayload({ a: Float32Array.from([1, 2]) }), '{"a":[1,2]}');
  assert.ok(Buffer.isBuffer(encodePayload(Buffer.from('x'))));
  assert.throws(() => encodePayload(undefined), /msg.payload is missing/);
});

test('broker URLs and protocol versions are checked', () => {
  assert.deepEqual(parseBrokerUrl('mqtts://example.com'), { host: 'example.com', port: 8883, tls: true });
  assert.deepEqual(parseBrokerUrl(''), { host: '127.0.0.1', port: 1883, tls: false });
  assert.throws(() => parseBrokerUrl('http://x'), /scheme "http" is not supported/);
  assert.throws(() => parseBrokerUrl('mqtt://u:p@x'), /credentials/);
  assert.equal(parseProtocol('3.1.1'), 'mqtt311');
  assert.equal(parseProtocol(''), 'mqtt5');
  assert.throws(() => parseProtocol('4'), /expected 5 or 3.1.1/);
});

test('ONNX metadata is read from the shipped model and garbage is rejected', () => {
  const props = readOnnxMetadataProps(fs.readFileSync(MODEL));
  const d = describeModel(props);
  assert.deepEqual(d.labels, ['cardboard', 'glass', 'metal', 'paper', 'plastic', 'trash']);
  assert.equal(d.preprocess.layout, 'NCHW');
  assert.throws(() => readOnnxMetadataProps(Buffer.from('this is not a model at all')), /not a valid ONNX model/);
  assert.throws(() => readOnnxMetadataProps(Buffer.alloc(0)), /empty/);
  const bad = describeModel({ labels: '{"a":1}', preprocess: '{"width":-1}' });
  assert.equal(bad.labels, undefined);
  assert.equal(bad.warnings.length, 2);
});

test('topic templates take ${NAME} and ${NAME:-default} from the environment', () => {
  const msg = { frame: { camera: 'c1' } };
  assert.equal(renderTopic('${PREFIX:-recycling}/{{frame.camera}}/result', msg, {}), 'recycling/c1/result');
  assert.equal(renderTopic('${PREFIX:-recycling}/{{frame.camera}}/result', msg, { PREFIX: 'plant7' }), 'plant7/c1/result');
  assert.throws(() => renderTopic('${PREFIX}/x', msg, {}), /needs the environment variable PREFIX/);
});

test('rules without a threshold (or with an unset ${ENV}) take the default', () => {
  const rules = validateRules([{ name: 'a', labels: 'x', threshold: '${SORTER_MIN_SCORE}' }, { name: 'b', labels: 'y', threshold: '' }, { name: 'c', labels: 'z', threshold: '0.9' }], 0.55);
  assert.deepEqual(rules.map((r) => r.threshold), [0.55, 0.55, 0.9]);
});

test('settings take ${NAME:-default}: the variable when set and not empty, else the default', () => {
  const { textSetting, numberSetting } = require('../nodes/lib/red-types');
  assert.equal(textSetting('${SORTER_DIVERT_TTL_S:-10}', {}), '10');
  assert.equal(textSetting('${SORTER_DIVERT_TTL_S:-10}', { SORTER_DIVERT_TTL_S: '' }), '10');
  assert.equal(textSetting('${SORTER_DIVERT_TTL_S:-10}', { SORTER_DIVERT_TTL_S: ' 3 ' }), '3');
  assert.equal(textSetting('${UNSET_AND_NO_DEFAULT}', {}), '');
  assert.equal(textSetting('plain'), 'plain');
  assert.equal(numberSetting('${GG_ML_TEST_UNSET_VARIABLE:-7}', 0), 7);
});

test('the decode limiter runs at most its slots at once and lets a camera\'s newer frame replace its waiting one', async () => {
  const { Limiter, SupersededError } = require('../nodes/lib/limiter');
  const limiter = new Limiter(1);
  const order = [];
  let release;
  const first = limiter.run(() => new Promise((r) => { release = r; order.push('a1'); }), 'a');
  const older = limiter.run(async () => order.push('b1'), 'b');
  const newer = limiter.run(async () => order.push('b2'), 'b');
  const anonymous = [limiter.run(async () => order.push('x1')), limiter.run(async () => order.push('x2'))];
  await assert.rejects(older, (err) => err instanceof SupersededError && /a newer frame of b replaced this one/.test(err.message));
  release();
  await Promise.all([first, newer, ...anonymous]);
  assert.deepEqual(order, ['a1', 'b2', 'x1', 'x2'], 'one at a time, in arrival order; frames without a camera are never skipped');
});

test('the decode limiter keeps one waiting frame per camera and queuer: a camera feeding two branches starves neither', async () => {
  const { Limiter, SupersededError } = require('../nodes/lib/limiter');
  const limiter = new Limiter(1);
  const order = [];
  let release;
  const busy = limiter.run(() => new Promise((r) => { release = r; }), 'other');
  // Node-RED delivers each frame of cam1 to branch A, then to branch B.
  const a1 = limiter.run(async () => order.push('A1'), 'cam1', 'preprocess-A');
  const b1 = limiter.run(async () => order.push('B1'), 'cam1', 'preprocess-B');
  const a2 = limiter.run(async () => order.push('A2'), 'cam1', 'preprocess-A');
  const b2 = limiter.run(async () => order.push('B2'), 'cam1', 'preprocess-B');
  await assert.rejects(a1, SupersededError);
  await assert.rejects(b1, SupersededError);
  release();
  await Promise.all([busy, a2, b2]);
  assert.deepEqual(order, ['A2', 'B2'], 'each branch decodes the newest frame of cam1; neither replaces the other\'s');
});

test('model paths: empty is the bundled classifier, bundled:<file> a model in the package\'s models folder, relative ones the user directory\'s', () => {
  const { resolveModelPath, BUNDLED_MODEL, PACKAGE_ROOT } = require('../nodes/ml-model/model-config');
  const path = require('path');
  assert.equal(resolveModelPath('', '/data'), BUNDLED_MODEL);
  assert.equal(resolveModelPath('bundled:conveyor-detector.onnx', '/data'), path.join(PACKAGE_ROOT, 'models', 'conveyor-detector.onnx'));
  assert.equal(resolveModelPath('bundled:../../etc/passwd', '/data'), path.join(PACKAGE_ROOT, 'models', 'passwd'), 'never outside models/');
  assert.equal(resolveModelPath('yolov8n.onnx', '/data'), '/data/yolov8n.onnx');
});

test('a gated limiter starts a camera\'s decode only while the gate is open for it, keeping its newest frame meanwhile', async () => {
  const { Limiter, HoldGate, SupersededError } = require('../nodes/lib/limiter');
  const gate = new HoldGate();
  const limiter = new Limiter(2, gate);
  const order = [];
  // Two consumers of camera a (two ml-inference nodes), both without room.
  const consumers = [gate.consume('a'), gate.consume('a')];
  const release = gate.hold('a');
  const releaseAgain = gate.hold('a');
  const olderA = limiter.run(async () => order.push('a1'), 'a');
  const b = limiter.run(async () => order.push('b1'), 'b');
  const newerA = limiter.run(async () => order.push('a2'), 'a');
  await assert.rejects(olderA, SupersededError);
  await b;
  assert.deepEqual(order, ['b1'], 'another camera is not held up by a closed lane');
  assert.deepEqual(gate.closedLanes, ['a']);
  release();
  release(); // idempotent
  await newerA;
  assert.deepEqual(order, ['b1', 'a2'], 'open as soon as one of its consumers has room');
  // The other consumer still has no room; once it is the only consumer, the lane is closed again.
  consumers[0]();
  assert.deepEqual(gate.closedLanes, ['a']);
  const waiting = limiter.run(async () => order.push('a3'), 'a');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, ['b1', 'a2']);
  releaseAgain();
  await waiting;
  assert.deepEqual(order, ['b1', 'a2', 'a3']);
  consumers[1]();
  assert.deepEqual(gate.closedLanes, []);
  // Frames without a camera, and cameras nobody consumes, never wait for the gate.
  gate.hold('');
  gate.hold('nobody');
  await limiter.run(async () => order.push('x'));
  await limiter.run(async () => order.push('n'), 'nobody');
  assert.deepEqual(order, ['b1', 'a2', 'a3', 'x', 'n']);
});

test('ModelRoom: a camera waits while its lane is full, and every camera of the node waits while two batches are already queued', () => {
  const { HoldGate, ModelRoom } = require('../nodes/lib/limiter');
  const gate = new HoldGate();
  const room = new ModelRoom(gate, 4, 1);
  const lanes = new Map();
  const length = (c) => lanes.get(c) ?? 0;
  const offer = (c) => { lanes.set(c, length(c) + 1); room.update(c, length, [...lanes.values()].reduce((a, b) => a + b, 0)); };
  const take = (c) => { lanes.set(c, length(c) - 1); room.update(c, length, [...lanes.values()].reduce((a, b) => a + b, 0)); };
  offer('a');
  assert.deepEqual(gate.closedLanes, ['a'], 'a full lane (one frame per camera) holds that camera only');
  offer('b');
  offer('c');
  take('a');
  assert.deepEqual(gate.closedLanes.sort(), ['b', 'c']);
  offer('a');
  offer('d');
  assert.deepEqual(gate.closedLanes.sort(), ['a', 'b', 'c', 'd'], 'four waiting: every camera this node has seen waits');
  take('a');
  assert.deepEqual(gate.closedLanes.sort(), ['b', 'c', 'd'], 'below two batches again: only full lanes wait');
  assert.ok(gate.isOpen('other'), 'a camera the node never had is not held');
  room.update('', length, 3); // frames without a camera are never held
  assert.ok(gate.isOpen(''));
  // A second node consuming camera b, with room: b's frames are decoded again (the first node drops them).
  const other = new ModelRoom(gate, 4, 1);
  other.update('b', () => 0, 0);
  assert.ok(gate.isOpen('b'));
  room.releaseAll();
  other.releaseAll();
  assert.deepEqual(gate.closedLanes, []);
});

test('a shared resource survives a deploy that redeploys one user and deletes the other, whichever closes first', async () => {
  const { EventEmitter } = require('events');
  const { shareAmongUsers } = require('../nodes/lib/shared-resource');
  const { sleep } = require('./helpers');
  const config = Object.assign(new EventEmitter(), { id: 'model', error: (m) => assert.fail(m) });
  const calls = [];
  shareAmongUsers(config, () => calls.push('start'), async () => { calls.push('stop'); }, 100);
  const [a, b] = [{ id: 'preprocess' }, { id: 'inference' }];
  const leave = (user, removed) => new Promise((resolve) => config.deregister(user, resolve, removed));
  config.register(a);
  config.register(b);
  // A "modified nodes" deploy: the edited node closes (not removed) before the deleted one.
  await leave(a, false);
  await leave(b, true);
  config.register(a);
  await sleep(150);
  assert.deepEqual(calls, ['start'], 'not stopped and started again');
  // The redeployed user does not come back (moved to another config node): stopped after the grace period.
  await leave(a, false);
  await sleep(150);
  assert.deepEqual(calls, ['start', 'stop']);
  // The last user deleted with nobody returning: stopped at once.
  config.register(a);
  await leave(a, true);
  assert.deepEqual(calls, ['start', 'stop', 'start', 'stop']);
});
