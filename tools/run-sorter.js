#!/usr/bin/env node
// `npm start`: runs Node-RED 4 from this project's dependencies with this collection and the
// recycling-sort flow, or the flow SORTER_FLOW names (conveyor-counter). With MQTT_URL unset it also
// runs an MQTT broker on 127.0.0.1:1883 and prints each result, item and count the flow publishes,
// so the whole pipeline is visible with no camera and no AWS.
const { spawn } = require('child_process');
const fs = require('fs');
const net = require('net');
const path = require('path');

const root = path.resolve(__dirname, '..');
const settings = require('./sorter-settings');
const { chosenFlow } = require('./sorter-flows');
const userDir = settings.userDir;

function prepareUserDir(flow) {
  // Node-RED finds the collection in the user directory's node_modules, as after a palette install.
  const modules = path.join(userDir, 'node_modules');
  fs.mkdirSync(modules, { recursive: true });
  const link = path.join(modules, 'node-red-contrib-greengrass-ml');
  try {
    if (fs.realpathSync(link) !== root) fs.rmSync(link, { recursive: true, force: true });
  } catch {
    /* no link yet */
  }
  if (!fs.existsSync(link)) fs.symlinkSync(root, link, 'dir');
  // Each flow has its own copy there (see sorter-flows.js): an edited one is kept, never overwritten.
  const flows = path.join(userDir, flow.flowFile);
  if (!fs.existsSync(flows)) {
    fs.copyFileSync(flow.source, flows);
    console.log(`[sorter] flow copied to ${flows} (delete it to start again from flows/${flow.name}.json)`);
  } else {
    console.log(`[sorter] flow ${flow.name}: ${flows}`);
  }
}

async function startBroker(port) {
  const { Aedes } = await import('aedes');
  const broker = await Aedes.createBroker();
  const server = net.createServer(broker.handle);
  await new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot start the MQTT broker on 127.0.0.1:${port}: ${err.message} (set MQTT_URL to use another broker)`)));
    server.listen(port, '127.0.0.1', resolve);
  });
  const prefix = `${(process.env.SORTER_TOPIC_PREFIX || 'recycling').trim()}/`;
  const score = (s) => (typeof s === 'number' ? s.toFixed(2) : '?');
  const time = (iso) => String(iso).slice(11, 19);
  broker.on('publish', (packet, client) => {
    if (!client || !packet.topic.startsWith(prefix)) return;
    try {
      const r = JSON.parse(packet.payload.toString());
      if (packet.topic.endsWith('/result')) {
        console.log(`[sorter] ${packet.topic}  #${r.seq} ${r.label} ${score(r.score)} -> ${r.bin}  (${r.origin})`);
      } else if (packet.topic.endsWith('/item')) {
        console.log(`[sorter] ${packet.topic}  track ${r.track} ${r.label} ${score(r.score)}  (frame ${r.frameSeq})`);
      } else if (packet.topic.endsWith('/counts')) {
        const counts = Object.entries(r.counts || {}).map(([label, n]) => `${label} ${n}`).join(' · ') || 'nothing counted';
        console.log(`[sorter] ${packet.topic}  ${time(r.from)}-${time(r.to)}  ${counts}`);
      }
    } catch {
      /* not ours */
    }
  });
  console.log(`[sorter] MQTT broker on mqtt://127.0.0.1:${port} (subscribe to ${prefix}# to watch what the flow publishes)`);
  return { close: () => new Promise((resolve) => server.close(() => broker.close(resolve))) };
}

/** What the camera node will capture from, without credentials. */
function cameras(env) {
  const { parseCameraList, describeCameras } = require(path.join(root, 'nodes', 'ml-camera', 'camera-list.js'));
  const { redactUrl } = require(path.join(root, 'nodes', 'ml-camera', 'sources.js'));
  if (!(env.SORTER_CAMERAS || '').trim()) return `source: ${env.SORTER_SOURCE ? redactUrl(env.SORTER_SOURCE) : 'test pattern'}`;
  try {
    return `cameras: ${describeCameras(parseCameraList(env.SORTER_CAMERAS))}`;
  } catch (err) {
    return `SORTER_CAMERAS is refused: ${err.message}`; // the camera node says so too, and stays stopped
  }
}

async function main() {
  prepareUserDir(chosenFlow(process.env));
  const env = { ...process.env };
  let broker;
  if (!env.MQTT_URL) {
    const port = Number(env.SORTER_BROKER_PORT) || 1883;
    broker = await startBroker(port);
    env.MQTT_URL = `mqtt://127.0.0.1:${port}`;
    env.MQTT_PROTOCOL = env.MQTT_PROTOCOL || '3.1.1'; // the embedded broker (aedes) speaks MQTT 3.1.1
  }
  if (!env.SORTER_REVIEW_DIR) env.SORTER_REVIEW_DIR = path.join(userDir, 'review');
  console.log(`[sorter] ${cameras(env)}; editor: http://localhost:${settings.uiPort}`);
  const red = spawn(process.execPath, [require.resolve('node-red/red.js'), '--settings', path.join(__dirname, 'sorter-settings.js')], {
    env,
    stdio: 'inherit',
  });
  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    red.kill(signal);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  red.on('exit', async (code) => {
    if (broker) await broker.close();
    process.exit(code ?? 0);
  });
}

main().catch((err) => {
  console.error(`[sorter] ${err.message}`);
  process.exit(1);
});
