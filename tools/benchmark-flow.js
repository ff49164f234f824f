#!/usr/bin/env node
// Flow-level benchmark: the real sorter flow in a plain Node-RED runtime (no test helper, whose send
// spy keeps every message), N folder cameras over the shared photos at 1 frame/s, a real mosquitto.
// Prints results / frames captured, capture-to-delivery latency, event-loop delay, CPU per frame next
// to the raw floor (sharp + onnxruntime on the same photos, one at a time, measured in the same run)
// and RSS; then a saturation run. Each camera count runs in a fresh process.
// With --routed each count runs a second time on the flow cut after ml-route (its outputs wired to
// one junction, no publishing, no broker traffic): the CPU of camera -> routed result alone.
// --cpu-profile <dir> (with --one) writes a .cpuprofile of the main thread over the measured seconds.
//
//   npm run benchmark -- --cameras 1,10,50,100 --seconds 20 [--saturate] [--routed]
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { monitorEventLoopDelay } = require('perf_hooks');

const { root, defaultDataset, option, flag, percentile, startMosquitto } = require('./cli');
const dataset = option('data', defaultDataset);
const TICKS_PER_SECOND = 100;


function photos(limit) {
  const found = [];
  for (const c of fs.readdirSync(dataset).sort()) {
    const dir = path.join(dataset, c);
    if (fs.statSync(dir).isDirectory()) for (const f of fs.readdirSync(dir).sort()) found.push(path.join(dir, f));
  }
  // Interleave classes so that every camera sees a mix.
  return found.filter((_, i) => i % Math.max(1, Math.floor(found.length / limit)) === 0).slice(0, limit);
}

/** CPU ms used so far by this process and its children (the inference worker), mosquitto excepted. */
function cpuMs(excludePids) {
  const { main, children } = cpuSplit(excludePids);
  return main + children;
}

function cpuSplit(excludePids) {
  const own = process.cpuUsage();
  const main = (own.user + own.system) / 1000;
  let ms = 0;
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) !== process.pid || excludePids.has(Number(pid))) continue;
      ms += ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
    } catch {
      /* gone */
    }
  }
  return { main, children: ms };
}

function rssMb(pid = process.pid) {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
  } catch {
    return NaN;
  }
}

/** The floor: decode + resize + normalise with sharp, then one onnxruntime run, one frame at a time. */
async function measureFloor(files) {
  const ort = require('onnxruntime-node');
  const { imageToTensor } = require(path.join(root, 'nodes/lib/preprocess'));
  const { readOnnxMetadataProps, describeModel } = require(path.join(root, 'nodes/lib/onnx-metadata'));
  const bytes = fs.readFileSync(path.join(root, 'models', 'waste-classifier.onnx'));
  const { preprocess } = describeModel(readOnnxMetadataProps(bytes));
  // The same session options the ml-model worker uses by default.
  const session = await ort.InferenceSession.create(bytes, {
    graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
  });
  const images = files.map((f) => fs.readFileSync(f));
  const once = async (image) => {
    const { tensor } = await imageToTensor(image, preprocess);
    await session.run({ [session.inputNames[0]]: new ort.Tensor(tensor.type, tensor.data, tensor.dims) });
  };
  for (const image of images.slice(0, 5)) await once(image);
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  for (const image of images) await once(image);
  const wallMs = (performance.now() - started) / images.length;
  const used = process.cpuUsage(cpu0);
  await session.release();
  return { cpuMs: (used.user + used.system) / 1000 / images.length, wallMs };
}

const SINK = 'bench-routed';

/**
 * The sample flow with its one camera replaced by `cameras` folder cameras (what dragging N camera
 * nodes gives). `routedOnly` cuts it after ml-route: every route output goes to one junction, and
 * what published (the change, publish, file nodes and the broker connection) is left out.
 */
function sorterFlow(cameras, intervalMs, sources, routedOnly = false) {
  let flow = JSON.parse(fs.readFileSync(path.join(root, 'flows', 'recycling-sorter.json'), 'utf8'));
  const template = flow.find((n) => n.id === 'camera');
  if (routedOnly) {
    const route = flow.find((n) => n.type === 'ml-route');
    const dropped = new Set(flow.filter((n) => ['greengrass-publish', 'greengrass-connection', 'change', 'file'].includes(n.type)).map((n) => n.id));
    flow = flow.filter((n) => !dropped.has(n.id)).map((n) => (n.wires ? { ...n, wires: n.wires.map((w) => w.filter((id) => !dropped.has(id))) } : n));
    flow.find((n) => n.id === route.id).wires = route.wires.map(() => [SINK]);
    flow.push({ id: SINK, type: 'junction', z: route.z, x: route.x + 200, y: route.y, wires: [[]] });
  }
  const others = flow.filter((n) => n.id !== 'camera').map((n) => (n.type === 'greengrass-connection' && flag('no-spool') ? { ...n, spool: false } : n));
  const clones = Array.from({ length: cameras }, (_, i) => ({
    ...template, id: `camera-${i + 1}`, name: `belt${i + 1}`, cameraId: `belt${i + 1}`, source: sources[i % sources.length], interval: String(intervalMs), y: template.y + i,
    wires: routedOnly ? [template.wires[0], []] : template.wires,
  }));
  return [...others, ...clones];
}

/** Starts the inspector's sampling profiler; the returned function stops it and writes the profile. */
async function startProfile(dir) {
  const inspector = require('inspector');
  const session = new inspector.Session();
  session.connect();
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (err, r) => (err ? reject(err) : resolve(r))));
  await post('Profiler.enable');
  await post('Profiler.start');
  return async (name) => {
    const { profile } = await post('Profiler.stop');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `${name}.cpuprofile`);
    fs.writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
    return file;
  };
}

async function runOne(cameras, seconds, intervalMs, routedOnly = false) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'flow-bench-'));
  const files = photos(240);
  // Each camera plays its own folder of 24 photos (links to the shared ones), looping.
  const sources = [];
  for (let i = 0; i < 10; i++) {
    const dir = path.join(work, 'photos', String(i));
    fs.mkdirSync(dir, { recursive: true });
    files.slice(i * 24, (i + 1) * 24).forEach((f, k) => fs.symlinkSync(f, path.join(dir, `${String(k).padStart(3, '0')}${path.extname(f)}`)));
    sources.push(dir);
  }
  const floor = await measureFloor(files.slice(0, 80));

  const broker = await startMosquitto(work, 100000);
  const mqtt = require('mqtt');
  const sub = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: `bench-${process.pid}` });
  let measuring = false;
  const latencies = [];
  let results = 0;
  const perCamera = new Map();
  sub.on('message', (_topic, payload) => {
    if (!measuring) return;
    const r = JSON.parse(payload.toString());
    results++;
    perCamera.set(r.camera, (perCamera.get(r.camera) ?? 0) + 1);
    latencies.push(Date.now() - Date.parse(r.capturedAt));
  });
  await sub.subscribeAsync('recycling/+/result', { qos: 1 });

  const userDir = path.join(work, 'user');
  fs.mkdirSync(path.join(userDir, 'node_modules'), { recursive: true });
  fs.symlinkSync(root, path.join(userDir, 'node_modules', 'node-red-contrib-greengrass-ml'), 'dir');
  fs.writeFileSync(path.join(userDir, 'flows.json'), JSON.stringify(sorterFlow(cameras, intervalMs, sources, routedOnly)));
  Object.assign(process.env, {
    MQTT_URL: broker.url, SORTER_REVIEW_DIR: path.join(work, 'review'), SORTER_SPOOL_DIR: path.join(work, 'spool'),
  });
  const RED = require('node-red');
  RED.init(require('http').createServer(), {
    userDir, flowFile: 'flows.json', httpAdminRoot: false, httpNodeRoot: false, credentialSecret: false,
    logging: { console: { level: 'warn', metrics: false, audit: false } }, telemetry: { enabled: false },
  });
  let captured = 0;
  // Counts frames as the cameras send them (Node-RED's messaging hooks see every delivery).
  RED.hooks.add('onReceive.bench', (event) => {
    if (!measuring) return;
    if (event.destination.node?.type === 'ml-preprocess') captured++;
    else if (event.destination.id === SINK) {
      // The routed-only flow: a result is a message leaving ml-route.
      const frame = event.msg.frame;
      results++;
      perCamera.set(frame.camera, (perCamera.get(frame.camera) ?? 0) + 1);
      latencies.push(Date.now() - Date.parse(frame.capturedAt));
    }
  });
  await RED.start();
  await new Promise((r) => setTimeout(r, 4000)); // the model loads, the cameras start, the broker connects

  // Sampling every 10 ms: a 1 ms sampler alone costs tens of ms of CPU per second, which would count as the flow's.
  const delay = monitorEventLoopDelay({ resolution: 10 });
  const exclude = new Set([broker.pid]);
  const rssStart = rssMb();
  const cpuStart = cpuSplit(exclude);
  const profileDir = option('cpu-profile');
  const stopProfile = profileDir ? await startProfile(profileDir) : undefined;
  const ownStart = process.cpuUsage();
  measuring = true;
  delay.enable();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  delay.disable();
  const cpuEnd = cpuSplit(exclude);
  const ownUsage = process.cpuUsage(ownStart);
  if (stopProfile) process.stderr.write(`profile: ${await stopProfile(`flow-${cameras}-${intervalMs}${routedOnly ? '-routed' : ''}`)}\n`);
  const cpuUsed = cpuEnd.main + cpuEnd.children - cpuStart.main - cpuStart.children;
  const workerCpu = cpuEnd.children - cpuStart.children;
  const rssEnd = rssMb();
  await new Promise((r) => setTimeout(r, 1500)); // results of the last frames still on their way are not counted
  await RED.stop();
  await sub.endAsync();
  broker.close();
  fs.rmSync(work, { recursive: true, force: true });
  const starved = Array.from({ length: cameras }, (_, i) => `belt${i + 1}`).filter((c) => !perCamera.get(c));
  return {
    cameras, seconds, intervalMs, routedOnly, captured, results,
    p50: percentile(latencies, 50), p99: percentile(latencies, 99),
    // The histogram holds the time between samples: what is over the sampling period is the delay.
    loopP99: Math.max(0, delay.percentile(99) / 1e6 - 10),
    cpuPerFrame: cpuUsed / Math.max(1, results), workerCpuPerFrame: workerCpu / Math.max(1, results), mainUserPerFrame: ownUsage.user / 1000 / Math.max(1, results), mainSystemPerFrame: ownUsage.system / 1000 / Math.max(1, results), floorCpu: floor.cpuMs, floorWall: floor.wallMs,
    throughput: results / seconds, rssStart, rssEnd, starved: starved.length,
  };
}

function format(r) {
  const ratio = (r.cpuPerFrame / r.floorCpu).toFixed(2);
  const what = `${r.intervalMs < 1000 ? `${r.cameras} (saturation, ${r.intervalMs} ms)` : r.cameras}${r.routedOnly ? ', camera -> routed' : ''}`;
  return `| ${what} | ${r.captured} | ${r.results} (${((100 * r.results) / Math.max(1, r.captured)).toFixed(1)} %) | ${r.p50.toFixed(0)} / ${r.p99.toFixed(0)} ms | ${r.loopP99.toFixed(1)} ms | ${r.cpuPerFrame.toFixed(1)} ms = ${ratio}x floor ${r.floorCpu.toFixed(1)} ms | ${r.throughput.toFixed(1)}/s = ${((r.throughput * r.floorWall) / 10).toFixed(0)} % of floor ${(1000 / r.floorWall).toFixed(0)}/s | ${r.rssStart.toFixed(0)} -> ${r.rssEnd.toFixed(0)} MB | ${r.starved} |`;
}

async function main() {
  if (flag('one')) {
    const r = await runOne(Number(option('cameras', 1)), Number(option('seconds', 20)), Number(option('interval', 1000)), flag('routed'));
    process.stdout.write(`${JSON.stringify(r)}\n`);
    process.exit(0);
  }
  const counts = String(option('cameras', '1,10,50,100')).split(',').map(Number);
  const seconds = Number(option('seconds', 20));
  const runs = counts.flatMap((n) => [{ cameras: n, interval: 1000 }, ...(flag('routed') ? [{ cameras: n, interval: 1000, routed: true }] : [])]);
  if (flag('saturate')) runs.push({ cameras: 20, interval: 50 });
  console.log(`sorter flow benchmark: ${os.cpus().length} x ${os.cpus()[0].model}, Node ${process.version}, ${seconds} s per run`);
  console.log('| cameras | frames captured | results | capture -> delivered p50 / p99 | event loop p99 | CPU per frame (vs floor) | throughput | RSS start -> end | starved cameras |');
  console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const run of runs) {
    const out = execFileSync(process.execPath, [__filename, '--one', '--cameras', String(run.cameras), '--seconds', String(seconds), '--interval', String(run.interval), '--data', dataset, ...(run.routed ? ['--routed'] : [])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    console.log(format(JSON.parse(out.trim().split('\n').pop())));
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
