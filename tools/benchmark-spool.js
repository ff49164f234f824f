#!/usr/bin/env node
// Benchmark of the disk spool on this machine's disk: how many messages per second it accepts with
// every one on disk before it counts (group commit), next to the floor of one fdatasync per message
// measured in the same run; and how fast a backlog drains to a local mosquitto with QoS 1.
// Usage: npm run benchmark:spool [-- --messages 20000 --backlog 100000 --dir /var/tmp]
const fs = require('fs');
const os = require('os');
const path = require('path');

const { root, option, startMosquitto } = require('./cli');
const { DiskSpool, SpoolDrainer } = require(path.join(root, 'nodes/greengrass-connection/spool'));
const { MqttTransport } = require(path.join(root, 'nodes/greengrass-connection/mqtt-transport'));

const messages = Number(option('messages', 20_000));
const backlog = Number(option('backlog', 100_000));
const baseDir = option('dir', os.tmpdir());

// A result as the sorter flow publishes it (about 420 bytes).
const result = (n) => JSON.stringify({
  id: `belt1-${1764200000000 + n}-${n}`, camera: 'belt1', seq: n, capturedAt: new Date(1764200000000 + n).toISOString(),
  origin: '/data/photos/plastic/plastic123.jpg', label: 'plastic', score: 0.93,
  topK: [{ label: 'plastic', score: 0.93, index: 4 }, { label: 'glass', score: 0.04, index: 1 }, { label: 'metal', score: 0.02, index: 2 }],
  bin: 'containers', reason: 'score 0.93 >= 0.6', inferenceMs: 3.1, model: 'waste-classifier.onnx',
});
const message = (n) => ({ topic: 'recycling/belt1/result', payload: result(n), qos: 1, at: Date.now() });
const rate = (count, ms) => Math.round((count / ms) * 1000);

/** The floor: what one fdatasync per message allows on this disk. */
async function fsyncFloor(dir, count) {
  const handle = await fs.promises.open(path.join(dir, 'floor.log'), 'w');
  const record = Buffer.from(result(1));
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    await handle.write(record, 0, record.length, i * record.length);
    await handle.datasync();
  }
  const ms = performance.now() - started;
  await handle.close();
  return rate(count, ms);
}

/** `producers` writers, each pushing its next message as soon as the previous one is on disk. */
async function accepted(dir, count, producers) {
  const spool = new DiskSpool(dir, { maxMessages: 10_000_000, maxBytes: 10e9 });
  await spool.open();
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: producers }, async () => {
    while (next < count) await spool.push(message(++next));
  }));
  const ms = performance.now() - started;
  await spool.close();
  return rate(count, ms);
}

async function drain(dir, count) {
  const spool = new DiskSpool(dir, { maxMessages: 10_000_000, maxBytes: 10e9 });
  await spool.open();
  const fillStarted = performance.now();
  const pushes = [];
  for (let n = 1; n <= count; n++) pushes.push(spool.push(message(n)));
  await Promise.all(pushes);
  const fillMs = performance.now() - fillStarted;
  const broker = await startMosquitto(dir);
  const transport = new MqttTransport({ url: broker.url, protocol: 'mqtt5', clientId: `spool-bench-${process.pid}`, keepAliveSeconds: 30 });
  const started = performance.now();
  let drainMs = 0;
  await new Promise((resolve, reject) => {
    const drainer = new SpoolDrainer(spool, (m) => transport.publish({ ...m, qos: 1 }), () => transport.state === 'connected', {
      onChange: () => {
        if (spool.length === 0 && !drainMs) {
          drainMs = performance.now() - started;
          drainer.stop();
          resolve();
        }
      },
      onWarning: (text) => reject(new Error(text)),
    });
    transport.on('state', (state) => { if (state === 'connected') drainer.kick(); });
    drainer.start();
    transport.start();
  });
  await transport.stop();
  broker.close();
  await spool.close();
  return { fillRate: rate(count, fillMs), drainMs, drainRate: rate(count, drainMs) };
}

async function main() {
  const dir = fs.mkdtempSync(path.join(baseDir, 'spool-bench-'));
  try {
    console.log(`spool benchmark in ${dir} (${os.cpus().length} cores, Node ${process.version})`);
    const floor = await fsyncFloor(dir, 300);
    console.log(`floor, one fdatasync per message:       ${floor} messages/s`);
    for (const producers of [1, 16, 256]) {
      const r = await accepted(fs.mkdtempSync(path.join(dir, 'a-')), producers === 1 ? Math.min(messages, 2000) : messages, producers);
      console.log(`spool, ${String(producers).padStart(3)} concurrent publishers:         ${r} accepted messages/s (${(r / floor).toFixed(1)}x the floor)`);
    }
    const d = await drain(fs.mkdtempSync(path.join(dir, 'd-')), backlog);
    console.log(`backlog of ${backlog} results: spooled at ${d.fillRate} messages/s; drained to mosquitto (QoS 1, in order) in ${(d.drainMs / 1000).toFixed(1)} s = ${d.drainRate} messages/s`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// The SDK's native client keeps the process alive after it stopped (see the README's known limits).
main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
