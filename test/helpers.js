// Shared test fixtures: paths, the Node-RED test helper, real MQTT brokers and dataset samples.
const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const DATASET = path.resolve(ROOT, '..', 'shared', 'datasets', 'trashnet');
const MODEL = path.join(ROOT, 'models', 'waste-classifier.onnx');
const SPLIT_DIR = path.join(ROOT, 'tools', 'train', 'split');
/** One input row of the shipped classifier, [channels, height, width] as its metadata says, and its length. */
const MODEL_ROW = (() => {
  const { readOnnxMetadataProps } = require(path.join(ROOT, 'nodes', 'lib', 'onnx-metadata'));
  const { width, height } = JSON.parse(readOnnxMetadataProps(fs.readFileSync(MODEL)).preprocess);
  return [3, height, width];
})();
const MODEL_ROW_SIZE = MODEL_ROW.reduce((a, b) => a * b, 1);

const node = (name) => require(path.join(ROOT, 'nodes', name, `${name}.js`));
const coreNode = (file) => require(path.join(ROOT, 'node_modules', '@node-red', 'nodes', 'core', file));

let helperInitialised = false;
function redHelper() {
  const helper = require('node-red-node-test-helper');
  if (!helperInitialised) {
    helper.init(require.resolve('node-red'), { userDir: fs.mkdtempSync(path.join(os.tmpdir(), 'gg-ml-user-')) });
    helperInitialised = true;
  }
  return helper;
}

/**
 * Loads a test flow. Node-RED treats nodes without x/y as config nodes, so flow nodes get a
 * position here, and helper nodes get empty wires.
 */
function loadFlow(helper, nodes, flow, credentials = {}) {
  const configTypes = new Set(['tab', 'ml-model', 'greengrass-connection']);
  const placed = flow.map((n) => (configTypes.has(n.type) ? n : { x: 100, y: 100, wires: [], ...n }));
  return new Promise((resolve) => helper.load(nodes, placed, credentials, resolve));
}

function tmpDir(prefix = 'gg-ml-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Validation photos (never trained on): [{file, label}] spread evenly across the classes. */
function validationPhotos(perClass = Infinity) {
  const lines = fs.readFileSync(path.join(SPLIT_DIR, 'val.txt'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
  const byClass = new Map();
  for (const rel of lines) {
    const label = rel.split('/')[0];
    if (!byClass.has(label)) byClass.set(label, []);
    if (byClass.get(label).length < perClass) byClass.get(label).push({ file: path.join(DATASET, rel), label });
  }
  return [...byClass.values()].flat();
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Servers a test starts die with the test process, even when a failed test never closes them. */
function killOnExit(child) {
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  child.once('exit', () => process.removeListener('exit', kill));
  return child;
}

/** In-process MQTT 3.1.1 broker (aedes) on loopback. */
async function startAedes(port, options = {}) {
  const { Aedes } = await import('aedes');
  const broker = await Aedes.createBroker(options);
  const server = net.createServer(broker.handle);
  port = port ?? (await freePort());
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    broker,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => broker.close(() => resolve()));
    }),
  };
}

function mosquittoPath() {
  for (const p of ['/usr/sbin/mosquitto', '/usr/bin/mosquitto']) if (fs.existsSync(p)) return p;
  return null;
}

/** A real mosquitto (MQTT 5) on loopback; `extraConfig` lines are appended (TLS listeners etc.). */
async function startMosquitto({ port, listener, dir } = {}) {
  const binary = mosquittoPath();
  if (!binary) throw new Error('mosquitto is not installed: apt-get install mosquitto (.ci/run does this)');
  port = port ?? (await freePort());
  dir = dir ?? tmpDir('gg-ml-mosq-');
  const conf = path.join(dir, 'mosquitto.conf');
  // `listener` replaces the plain listener (e.g. TLS); a given dir keeps sessions across restarts.
  // As root, mosquitto would switch to its own user, who cannot read the test's private folders.
  const user = process.getuid?.() === 0 ? 'user root\n' : '';
  fs.writeFileSync(conf, user + (listener
    ? `${listener(port)}\npersistence true\npersistence_location ${dir}/\nautosave_interval 1\n`
    : `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`));
  const child = killOnExit(spawn(binary, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] }));
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const deadline = Date.now() + 5000;
  for (;;) {
    const open = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (open) break;
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`mosquitto did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    dir,
    url: `mqtt://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    }),
  };
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function makeCertificates(dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=test-ca', '-keyout', 'ca.key', '-out', 'ca.crt');
  for (const [name, subject, ext] of [['server', '/CN=127.0.0.1', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], ['client', '/CN=sorter-core', 'extendedKeyUsage=clientAuth']]) {
    run('req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    fs.writeFileSync(path.join(dir, `${name}.ext`), `${ext}\n`);
    run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`);
  }
  const file = (n) => path.join(dir, n);
  return { ca: file('ca.crt'), serverCert: file('server.crt'), serverKey: file('server.key'), clientCert: file('client.crt'), clientKey: file('client.key') };
}

/** Subscribes with the `mqtt` package (an independent client) and collects messages. */
async function collect(url, topics, protocolVersion = 5, options = {}) {
  const mqtt = require('mqtt');
  const client = await mqtt.connectAsync(url, { protocolVersion, clientId: `test-sub-${process.pid}-${Date.now()}`, ...options });
  const messages = [];
  client.on('message', (topic, payload) => messages.push({ topic, payload: payload.toString() }));
  await client.subscribeAsync(topics, { qos: 1 });
  return {
    messages,
    async waitFor(count, timeoutMs = 20_000, filter = () => true) {
      const deadline = Date.now() + timeoutMs;
      while (messages.filter(filter).length < count) {
        if (Date.now() > deadline) throw new Error(`timed out with ${messages.filter(filter).length} of ${count} messages`);
        await new Promise((r) => setTimeout(r, 25));
      }
      return messages.filter(filter);
    },
    close: () => client.endAsync(),
  };
}

/** Resolves with the next message a helper node receives. */
function nextMessage(helperNode, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no message arrived')), timeoutMs);
    helperNode.once('input', (msg) => {
      clearTimeout(timer);
      resolve(msg);
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls until predicate() is true, failing after timeoutMs with what was awaited. */
async function until(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/**
 * A Node-RED user directory with this collection installed (linked, as `npm start` does) and
 * `flow` as its flows.json.
 */
function nodeRedUserDir(work, flow) {
  const userDir = path.join(work, 'user');
  fs.mkdirSync(path.join(userDir, 'node_modules'), { recursive: true });
  fs.symlinkSync(ROOT, path.join(userDir, 'node_modules', 'node-red-contrib-greengrass-ml'), 'dir');
  fs.writeFileSync(path.join(userDir, 'flows.json'), JSON.stringify(flow));
  return userDir;
}

/** A real Node-RED process (not the test helper): `log` collects its output, `exited` waits for it. */
function startNodeRed(userDir, port, env = {}) {
  const red = killOnExit(spawn(process.execPath, [require.resolve('node-red/red.js'), '--userDir', userDir, '--port', String(port), 'flows.json'], {
    env: { ...process.env, ...env },
  }));
  const proc = {
    red,
    log: '',
    base: `http://127.0.0.1:${port}`,
    exited: () => new Promise((resolve) => (red.exitCode !== null || red.signalCode ? resolve() : red.once('exit', resolve))),
  };
  red.stdout.on('data', (d) => { proc.log += d; });
  red.stderr.on('data', (d) => { proc.log += d; });
  return proc;
}

/** Deploys through the admin API as the editor does: `edit` changes the current flows, `type` is the deployment type. */
async function deployFlows(base, type, edit) {
  const current = await (await fetch(`${base}/flows`, { headers: { 'Node-RED-API-Version': 'v2' } })).json();
  const answer = await fetch(`${base}/flows`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Node-RED-API-Version': 'v2', 'Node-RED-Deployment-Type': type },
    body: JSON.stringify({ flows: edit(current.flows), rev: current.rev }),
  });
  if (!answer.ok) throw new Error(`a "${type}" deploy answered ${answer.status}: ${await answer.text()}`);
}

/** An MJPEG camera on loopback (no authentication) sending `frames` in turn; close() drops it like a pulled cable. */
async function mjpegCamera(port, frames, everyMs = 100) {
  const http = require('http');
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'multipart/x-mixed-replace; boundary=frame' });
    let n = 0;
    const timer = setInterval(() => {
      const jpeg = frames[n++ % frames.length];
      res.write(`--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ${jpeg.length}\r\n\r\n`);
      res.write(jpeg);
      res.write('\r\n');
    }, everyMs);
    res.on('close', () => clearInterval(timer));
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${port}/video.mjpg`,
    sockets,
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(resolve); }),
  };
}

/** Closes what the Node-RED editor shows a new user first (update notifications, the welcome tour), as a user would. */
async function closeFirstRunPrompts(page) {
  for (let i = 0; i < 20; i++) {
    // The tour animates and replaces its popover: a click that finds it gone is tried again next round.
    const notifications = page.getByText('No, do not enable notifications');
    if (await notifications.isVisible()) await notifications.click({ timeout: 2000 }).catch(() => undefined);
    const tour = page.locator('.red-ui-tourGuide-popover button:has(i.fa-times)');
    if (await tour.isVisible()) await tour.click({ timeout: 2000 }).catch(() => undefined);
    if (!(await page.locator('.red-ui-shade:visible, .red-ui-tourGuide-shade:visible').count()) && i > 3) break;
    await page.waitForTimeout(250);
  }
}

/** The node types flows/recycling-sorter.json uses: the collection's and Node-RED's core ones. */
function sorterFlowNodes() {
  return [
    node('ml-camera'), node('ml-preprocess'), node('ml-model'), node('ml-inference'), node('ml-route'),
    node('greengrass-connection'), node('greengrass-publish'),
    coreNode('function/15-change.js'), coreNode('storage/10-file.js'), coreNode('common/25-catch.js'),
    coreNode('common/21-debug.js'), coreNode('common/90-comment.js'),
  ];
}

/** What node `id` logged at `level` ('INFO', 'WARN', 'ERROR') in the test helper's runtime, as text. */
function loggedBy(helper, id, level) {
  const spy = helper.log();
  return spy.args.map((a) => a[0]).filter((e) => e && e.id === id && e.level === spy[level]).map((e) => String(e.msg));
}

module.exports = {
  loggedBy, ROOT, DATASET, MODEL, MODEL_ROW, MODEL_ROW_SIZE, SPLIT_DIR, node, coreNode, redHelper, loadFlow, tmpDir, validationPhotos, freePort,
  startAedes, startMosquitto, makeCertificates, mosquittoPath, collect, nextMessage, sleep, until, killOnExit,
  nodeRedUserDir, startNodeRed, deployFlows, mjpegCamera, closeFirstRunPrompts, sorterFlowNodes,
};
