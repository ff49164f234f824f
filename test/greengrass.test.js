// Greengrass publishing: the disk spool, MQTT with mutual TLS through a broker outage and a Node-RED
// restart (a real mosquitto), and Greengrass IPC against a test nucleus speaking eventstream RPC.
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const net = require('net');
const path = require('path');
const { loggedBy, node, coreNode, redHelper, loadFlow, tmpDir, startMosquitto, makeCertificates, freePort, collect, nextMessage, sleep, until } = require('./helpers');
const { DiskSpool } = require('../nodes/greengrass-connection/spool');
const { toAwsMlInferenceMessage } = require('../nodes/greengrass-publish/publish-format');
const { chooseTransport } = require('../nodes/greengrass-connection/ipc-transport');
const { FakeNucleusIpc } = require('./fixtures/ipc-server');

const helper = redHelper();
const nodes = [node('greengrass-connection'), node('greengrass-publish'), coreNode('common/25-catch.js')];

before(() => new Promise((resolve) => helper.startServer(resolve)));
afterEach(() => helper.unload());
after(() => new Promise((resolve) => helper.stopServer(resolve)));

test('results can be sent in the format of AWS Greengrass ML inference components', () => {
  const m = toAwsMlInferenceMessage({ label: 'glass', score: 0.9, topK: [{ label: 'glass', score: 0.9 }, { label: 'plastic', score: 0.07 }], capturedAt: '2026-11-26T01:02:03.456Z' });
  assert.deepEqual(m, {
    timestamp: '2026-11-26 01:02:03.456000',
    'inference-type': 'image-classification',
    'inference-description': 'Top 2 predictions',
    'inference-results': [{ Label: 'glass', Score: '0.9' }, { Label: 'plastic', Score: '0.07' }],
  });
  assert.throws(() => toAwsMlInferenceMessage('x'), /needs msg.payload to be a classification/);
});

test('auto picks IPC inside a Greengrass component and MQTT elsewhere', () => {
  assert.equal(chooseTransport('auto', { AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: '/s', SVCUID: 't' }), 'ipc');
  assert.equal(chooseTransport('', {}), 'mqtt');
  assert.equal(chooseTransport('mqtt', { AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: '/s', SVCUID: 't' }), 'mqtt');
  assert.throws(() => chooseTransport('carrier-pigeon'), /not one of auto, ipc, mqtt/);
});

function flow(connection, publish = {}) {
  return [
    { id: 'tab', type: 'tab' },
    { id: 'conn', type: 'greengrass-connection', clientId: 'sorter-core', keepalive: 5, ...connection },
    { id: 'pub', type: 'greengrass-publish', z: 'tab', connection: 'conn', topic: 'recycling/{{frame.camera}}/result', qos: 1, ...publish, wires: [['sent']] },
    { id: 'sent', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ];
}

function tlsBroker(certs, port, dir) {
  return startMosquitto({
    port, dir,
    listener: (p) => [`listener ${p} 127.0.0.1`, `cafile ${certs.ca}`, `certfile ${certs.serverCert}`, `keyfile ${certs.serverKey}`,
      'require_certificate true', 'use_identity_as_username true', 'allow_anonymous false'].join('\n'),
  });
}

async function tlsSubscriber(broker, certs) {
  // A persistent session, so results published while it reconnects after the broker restart wait for it.
  return collect(`mqtts://127.0.0.1:${broker.port}`, ['recycling/#'], 5, {
    ca: fs.readFileSync(certs.ca), cert: fs.readFileSync(certs.clientCert), key: fs.readFileSync(certs.clientKey),
    clientId: 'dashboard', clean: false, properties: { sessionExpiryInterval: 3600 }, reconnectPeriod: 200, rejectUnauthorized: true,
  });
}

test('MQTT with mutual TLS: the broker stops under steady traffic and returns; every result arrives once, in order', async () => {
  const certs = makeCertificates(tmpDir('gg-certs-'));
  const port = await freePort();
  let broker = await tlsBroker(certs, port);
  const sub = await tlsSubscriber(broker, certs);
  const spoolDir = tmpDir('gg-spool-');
  try {
    await loadFlow(helper, nodes, flow({ transport: 'mqtt', url: `mqtts://127.0.0.1:${port}`, caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey, spoolDir }));
    const conn = helper.getNode('conn');
    await until(() => conn.state === 'connected', 10_000, 'the TLS connection');
    const errors = [];
    helper.getNode('errors').on('input', (m) => errors.push(m.error.message));
    const total = 60;
    const send = (n) => helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
    for (let n = 1; n <= total; n++) {
      if (n === 21) {
        // Stop the broker only once nothing is in flight, so a lost PUBACK cannot make a duplicate.
        await until(() => conn.queued === 0 && sub.messages.length === 20, 10_000, 'the first results');
        await broker.close();
      }
      if (n === 41) {
        broker = await tlsBroker(certs, port, broker.dir);
      }
      send(n);
      await sleep(50);
    }
    await until(() => sub.messages.length >= total, 30_000, `all ${total} results (have ${sub.messages.length})`);
    await sleep(300);
    const received = sub.messages.map((m) => JSON.parse(m.payload).n);
    assert.deepEqual(received, Array.from({ length: total }, (_, i) => i + 1), 'every result once, in order');
    assert.ok(errors.some((e) => /results are queued on disk and will be delivered in order/.test(e)), 'the outage was reported once to Catch');
    assert.equal(errors.length, 1);
    assert.equal(conn.queued, 0);
  } finally {
    await sub.close();
    await helper.unload();
    await broker.close();
  }
});

test('results spooled while the broker is down survive a Node-RED restart and go out in order', async () => {
  const certs = makeCertificates(tmpDir('gg-certs-'));
  const port = await freePort();
  const spoolDir = tmpDir('gg-spool-');
  const settings = { transport: 'mqtt', url: `mqtts://127.0.0.1:${port}`, caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey, spoolDir };
  await loadFlow(helper, nodes, flow(settings));
  for (let n = 1; n <= 10; n++) {
    const accepted = nextMessage(helper.getNode('sent'));
    helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
    await accepted;
  }
  assert.equal(helper.getNode('conn').queued, 10);
  await helper.unload(); // Node-RED stops with ten results on disk
  const left = new DiskSpool(spoolDir, { maxMessages: 100, maxBytes: 1e9 });
  await left.open();
  assert.equal(left.length, 10, 'ten results on disk');
  await left.close();

  const broker = await tlsBroker(certs, port);
  const sub = await tlsSubscriber(broker, certs);
  try {
    await loadFlow(helper, nodes, flow(settings));
    await until(() => sub.messages.length >= 10, 20_000, 'the spooled results');
    assert.deepEqual(sub.messages.map((m) => JSON.parse(m.payload).n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await until(() => helper.getNode('conn').queued === 0, 5000, 'an empty spool');
  } finally {
    await sub.close();
    await helper.unload();
    assert.deepEqual(fs.readdirSync(spoolDir).filter((f) => f.endsWith('.log')), [], 'no segment left once all went out');
    await broker.close();
  }
});

test('certificate files that appear only after the start (provisioning) are picked up: results spooled meanwhile go out', async () => {
  const certs = makeCertificates(tmpDir('gg-certs-'));
  const port = await freePort();
  const broker = await tlsBroker(certs, port);
  const sub = await tlsSubscriber(broker, certs);
  const provisioned = tmpDir('gg-provisioned-'); // empty until the "provisioning script" runs
  const at = (f) => path.join(provisioned, path.basename(f));
  try {
    await loadFlow(helper, nodes, flow({ transport: 'mqtt', url: `mqtts://127.0.0.1:${port}`, caFile: at(certs.ca), certFile: at(certs.clientCert), keyFile: at(certs.clientKey), spoolDir: tmpDir('gg-spool-') }));
    const conn = helper.getNode('conn');
    await until(() => conn.state === 'disconnected', 5000, 'a connection failure, not a dead connection');
    assert.match(conn.lastError, /cannot set up TLS for mqtts:\/\/127\.0\.0\.1:\d+: .* \(check the certificate, key and CA file paths\)/);
    for (let n = 1; n <= 3; n++) {
      const accepted = nextMessage(helper.getNode('sent'));
      helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
      await accepted;
    }
    assert.equal(conn.queued, 3, 'accepted into the spool while TLS cannot be set up');
    for (const f of [certs.ca, certs.clientCert, certs.clientKey]) fs.copyFileSync(f, at(f));
    await until(() => sub.messages.length >= 3, 20_000, 'the spooled results once the files are there');
    assert.deepEqual(sub.messages.map((m) => JSON.parse(m.payload).n), [1, 2, 3]);
    assert.equal(conn.state, 'connected');
  } finally {
    await sub.close();
    await helper.unload();
    await broker.close();
  }
});

test('certificate files with a plain mqtt:// broker URL are warned about: they would not be used', async () => {
  const port = await freePort();
  await loadFlow(helper, nodes, flow({ transport: 'mqtt', url: `mqtt://127.0.0.1:${port}`, certFile: 'device.pem.crt', keyFile: 'private.pem.key', spool: false }));
  assert.deepEqual(loggedBy(helper, 'conn', 'WARN'), [`the CA, certificate and key files are not used: the broker URL mqtt://127.0.0.1:${port} is plain TCP; use mqtts:// for TLS`]);
});

test('a spool folder held by another process is taken into use once that process lets go', async () => {
  const os = require('os');
  const broker = await startMosquitto();
  const spoolDir = tmpDir('gg-spool-');
  const lock = path.join(spoolDir, 'spool.lock');
  const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  // Another Node-RED on this machine (this test's parent process stands in for it) holds the folder.
  fs.writeFileSync(lock, JSON.stringify({ pid: process.ppid, host: os.hostname(), boot: bootId, since: 'earlier' }));
  const logged = (level, pattern) => loggedBy(helper, 'conn', level).filter((text) => pattern.test(text));
  try {
    await loadFlow(helper, nodes, flow({ transport: 'mqtt', url: broker.url, spoolDir }));
    const conn = helper.getNode('conn');
    await until(() => conn.state === 'connected', 10_000, 'the connection');
    const sent = nextMessage(helper.getNode('sent'));
    helper.getNode('pub').receive({ payload: { n: 1 }, frame: { camera: 'belt1' } });
    await sent;
    assert.equal(logged('ERROR', /the spool folder cannot be used: .* in use by process \d+ .* and it is tried again/).length, 1);
    // The other process ends and removes its lock: the next retry (2 s, then 4 s, ...) takes the folder.
    await sleep(2500);
    assert.equal(logged('ERROR', /the spool folder cannot be used/).length, 1, 'said once, not at every retry');
    fs.rmSync(lock);
    await until(() => logged('INFO', /the spool folder .* is in use now/).length === 1, 10_000, 'the spool taken into use');
    assert.equal(JSON.parse(fs.readFileSync(lock, 'utf8')).pid, process.pid);
  } finally {
    await helper.unload();
    await broker.close();
  }
  assert.ok(!fs.existsSync(lock), 'released at close');
});

/**
 * A TCP proxy that delays both directions (a broker far away, as AWS IoT Core is from a plant) and
 * reads the MQTT fixed headers going through (MQTT 5.0 section 2.1: packet type in the high nibble of
 * the first byte, then the remaining length as a variable byte integer), to count the QoS 1 PUBLISH
 * packets the client has sent that the broker has not acknowledged with a PUBACK yet.
 */
function slowLinkProxy(brokerPort, delayMs) {
  const stats = { publishes: 0, inFlight: 0, mostInFlight: 0 };
  const packets = (onPacket) => {
    let pending = Buffer.alloc(0);
    return (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        let length = 0;
        let multiplier = 1;
        let i = 1;
        for (; i < pending.length && i <= 4; i++) {
          length += (pending[i] & 0x7f) * multiplier;
          multiplier *= 128;
          if (!(pending[i] & 0x80)) break;
        }
        if (i >= pending.length || pending.length < i + 1 + length) return;
        onPacket(pending[0]);
        pending = pending.subarray(i + 1 + length);
      }
    };
  };
  const server = net.createServer((client) => {
    const broker = net.connect(brokerPort, '127.0.0.1');
    const toBroker = packets((first) => {
      if (first >> 4 === 3 && ((first >> 1) & 3) === 1) {
        stats.publishes++;
        stats.mostInFlight = Math.max(stats.mostInFlight, ++stats.inFlight);
      }
    });
    const toClient = packets((first) => { if (first >> 4 === 4) stats.inFlight--; });
    client.on('data', (d) => { toBroker(d); setTimeout(() => broker.write(d), delayMs); });
    broker.on('data', (d) => setTimeout(() => { toClient(d); client.write(d); }, delayMs));
    client.on('error', () => broker.destroy());
    broker.on('error', () => client.destroy());
    client.on('close', () => broker.destroy());
    broker.on('close', () => client.destroy());
  });
  return { stats, server };
}

async function closeSlowLink(proxy, sub, broker) {
  await helper.unload();
  proxy.server.close();
  await sub.close();
  await broker.close();
}

test('a broker far away: spooled results go out many at a time, not one per round trip, in order and each once', async () => {
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#']);
  const proxyPort = await freePort();
  const proxy = slowLinkProxy(broker.port, 40); // 80 ms round trip
  try {
    // The proxy is not listening yet: the link is down, and 60 results wait in the spool.
    await loadFlow(helper, nodes, flow({ transport: 'mqtt', url: `mqtt://127.0.0.1:${proxyPort}`, spoolDir: tmpDir('gg-spool-') }));
    for (let n = 1; n <= 60; n++) {
      const accepted = nextMessage(helper.getNode('sent'));
      helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
      await accepted;
    }
    assert.equal(helper.getNode('conn').queued, 60);
    await new Promise((resolve) => proxy.server.listen(proxyPort, '127.0.0.1', resolve));
    await sub.waitFor(60, 30_000);
    assert.deepEqual(sub.messages.map((m) => JSON.parse(m.payload).n), Array.from({ length: 60 }, (_, i) => i + 1));
    assert.equal(proxy.stats.publishes, 60, 'each result crossed the link once');
    // One at a time, 60 results would take 60 round trips; mosquitto announces a receive maximum of 20.
    assert.ok(proxy.stats.mostInFlight > 1 && proxy.stats.mostInFlight <= 64, `${proxy.stats.mostInFlight} in flight at most`);
    await until(() => helper.getNode('conn').queued === 0, 5000, 'an empty spool');
  } finally {
    await closeSlowLink(proxy, sub, broker);
  }
});

test('the tab disabled while results are in flight, then enabled: the connection stops and starts again and every result arrives', async () => {
  // aws-iot-device-sdk-v2's MQTT 5 client, stopped with a QoS 1 publish whose PUBACK has not come,
  // never settles that publish: the spool's drain pass waited on it for ever and nothing went out
  // after the tab came back (the failure test/redeploy.test.js caught). The slow link keeps publishes in flight.
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#']);
  const proxyPort = await freePort();
  const proxy = slowLinkProxy(broker.port, 40);
  await new Promise((resolve) => proxy.server.listen(proxyPort, '127.0.0.1', resolve));
  const spoolDir = tmpDir('gg-spool-');
  const tabbed = (disabled) => flow({ transport: 'mqtt', url: `mqtt://127.0.0.1:${proxyPort}`, spoolDir })
    .map((n) => (n.type === 'tab' ? { ...n, disabled } : n));
  const send = async (from, to) => {
    for (let n = from; n <= to; n++) {
      const accepted = nextMessage(helper.getNode('sent'));
      helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
      await accepted;
    }
  };
  try {
    await loadFlow(helper, nodes, tabbed(false));
    await until(() => helper.getNode('conn').state === 'connected', 10_000, 'the connection');
    for (let round = 0; round < 3; round++) {
      const first = round * 40 + 1;
      await send(first, first + 19);
      // The publish node goes with its tab (removed, for Node-RED), the connection stops with results in flight.
      await helper.setFlows(tabbed(true), 'flows');
      assert.equal(helper.getNode('conn').state, 'stopped');
      await helper.setFlows(tabbed(false), 'flows');
      await send(first + 20, first + 39);
      await until(() => new Set(sub.messages.map((m) => JSON.parse(m.payload).n)).size === first + 39, 10_000,
        `results 1-${first + 39} after the tab came back (round ${round + 1})`);
    }
    await until(() => helper.getNode('conn').queued === 0, 5000, 'an empty spool');
  } finally {
    await closeSlowLink(proxy, sub, broker);
  }
});

test('a message the broker refuses (ACL) is set aside after three tries, reported by its own node, and the rest keep flowing', async () => {
  // mosquitto answers a QoS 1 PUBLISH that its ACL denies with PUBACK reason 0x87 (not authorized)
  // to MQTT 5 clients; without a dead letter it would block every later result forever.
  const dir = tmpDir('gg-acl-');
  // `topic` lines cover anonymous clients (the subscriber); `pattern` lines every client, including
  // the SDK's, which sends a user name.
  fs.writeFileSync(path.join(dir, 'acl'), 'topic readwrite recycling/#\npattern readwrite recycling/#\n');
  const broker = await startMosquitto({ dir, listener: (p) => `listener ${p} 127.0.0.1\nallow_anonymous true\nacl_file ${path.join(dir, 'acl')}` });
  const sub = await collect(broker.url, ['recycling/#']);
  const spoolDir = tmpDir('gg-spool-');
  try {
    await loadFlow(helper, nodes, [
      ...flow({ transport: 'mqtt', url: broker.url, spoolDir }),
      { id: 'forbidden', type: 'greengrass-publish', z: 'tab', connection: 'conn', topic: 'plant/secrets', qos: 1 },
    ]);
    const conn = helper.getNode('conn');
    await until(() => conn.state === 'connected', 10_000, 'the connection');
    const caught = [];
    helper.getNode('errors').on('input', (m) => caught.push(m));
    helper.getNode('pub').receive({ payload: { n: 1 }, frame: { camera: 'belt1' } });
    helper.getNode('forbidden').receive({ payload: { n: 2 } });
    for (let n = 3; n <= 6; n++) helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
    await until(() => sub.messages.length >= 5, 15_000, 'the allowed results');
    assert.deepEqual(sub.messages.map((m) => JSON.parse(m.payload).n), [1, 3, 4, 5, 6]);
    await until(() => caught.length >= 1, 5000, 'the report of the refused message');
    assert.equal(caught.length, 1);
    assert.equal(caught[0].error.source.id, 'forbidden', 'reported by the node that published it');
    assert.match(caught[0].error.message, /gave up on a message to plant\/secrets after repeated refusals: .*(not authori[sz]ed|0x87|135)/i);
    const letters = fs.readdirSync(path.join(spoolDir, 'dead-letter'));
    assert.equal(letters.length, 1);
    const letter = JSON.parse(fs.readFileSync(path.join(spoolDir, 'dead-letter', letters[0]), 'utf8'));
    assert.equal(letter.topic, 'plant/secrets');
    assert.deepEqual(JSON.parse(letter.payload), { n: 2 });
    assert.equal(conn.spoolCounters().deadLettered, 1);
    assert.equal(conn.queued, 0);
  } finally {
    await sub.close();
    await helper.unload();
    await broker.close();
  }
});

test('IPC: as a component, results go to local pub/sub and IoT Core through the nucleus with the token', async () => {
  const socketPath = path.join(tmpDir('gg-ipc-'), 'ipc.socket');
  const nucleus = new FakeNucleusIpc(socketPath, 'component-token-1', { accessControl: {
    'aws.greengrass.ipc.pubsub': { p: { operations: ['aws.greengrass#PublishToTopic'], resources: ['recycling/*/result'] } },
    'aws.greengrass.ipc.mqttproxy': { m: { operations: ['aws.greengrass#PublishToIoTCore'], resources: ['recycling/+/ml'] } },
  } });
  await nucleus.listen();
  Object.assign(process.env, { AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: socketPath, SVCUID: 'component-token-1' });
  try {
    await loadFlow(helper, [...nodes], [
      ...flow({ transport: 'auto', url: 'mqtt://127.0.0.1:1' }),
      { id: 'cloud', type: 'greengrass-publish', z: 'tab', connection: 'conn', topic: 'recycling/{{frame.camera}}/ml', qos: 1, destination: 'iotcore', format: 'aws-ml', wires: [[]] },
    ]);
    const conn = helper.getNode('conn');
    assert.equal(conn.transportName, 'ipc');
    await until(() => conn.state === 'connected', 10_000, 'the IPC connection');
    const result = { label: 'metal', score: 0.88, topK: [{ label: 'metal', score: 0.88, index: 2 }], bin: 'containers' };
    helper.getNode('pub').receive({ payload: result, frame: { camera: 'belt2' } });
    helper.getNode('pub').receive({ payload: Buffer.from([0xca, 0xfe]), frame: { camera: 'belt2' } });
    helper.getNode('cloud').receive({ payload: result, frame: { camera: 'belt2' } });
    await until(() => nucleus.received.length >= 3, 10_000, 'three IPC publishes');
    const [json, binary, cloud] = nucleus.received;
    assert.deepEqual(json, { operation: 'PublishToTopic', request: { topic: 'recycling/belt2/result', publishMessage: { jsonMessage: { message: result } } } });
    assert.deepEqual(binary.request.publishMessage, { binaryMessage: { message: Buffer.from([0xca, 0xfe]).toString('base64') } });
    assert.equal(cloud.operation, 'PublishToIoTCore');
    assert.equal(cloud.request.topicName, 'recycling/belt2/ml');
    assert.equal(cloud.request.qos, '1');
    const sentToCloud = JSON.parse(Buffer.from(cloud.request.payload, 'base64').toString());
    assert.deepEqual(sentToCloud['inference-results'], [{ Label: 'metal', Score: '0.88' }]);
    assert.equal(nucleus.connections, 1);
  } finally {
    delete process.env.AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT;
    delete process.env.SVCUID;
    await helper.unload();
    await nucleus.close();
  }
});

test('IPC: a wrong token is refused, results wait in the spool, and go out once the nucleus accepts', async () => {
  const socketPath = path.join(tmpDir('gg-ipc-'), 'ipc.socket');
  const nucleus = new FakeNucleusIpc(socketPath, 'the-right-token', { accessControl: {
    'aws.greengrass.ipc.pubsub': { p: { operations: ['aws.greengrass#PublishToTopic'], resources: ['recycling/*'] } },
  } });
  await nucleus.listen();
  Object.assign(process.env, { AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: socketPath, SVCUID: 'a-stale-token' });
  try {
    await loadFlow(helper, nodes, flow({ transport: 'ipc' }));
    const caught = nextMessage(helper.getNode('errors'), 10_000);
    await until(() => nucleus.connections >= 1, 10_000, 'a connection attempt');
    helper.getNode('pub').receive({ payload: { n: 1 }, frame: { camera: 'c' } });
    assert.match((await caught).error.message, /not connected to Greengrass IPC .*results are queued on disk/);
    assert.equal(nucleus.received.length, 0);
    nucleus.token = 'a-stale-token'; // the nucleus now accepts it (as after a redeployment)
    await until(() => nucleus.received.length === 1, 20_000, 'the queued result');
    assert.deepEqual(nucleus.received[0].request.publishMessage.jsonMessage.message, { n: 1 });
  } finally {
    delete process.env.AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT;
    delete process.env.SVCUID;
    await helper.unload();
    await nucleus.close();
  }
});

// ---- The test nucleus refuses what the real nucleus refuses (see test/fixtures/ipc-server.js for the
// nucleus source each rule comes from), and the client sets permanent refusals aside.

const { crc32 } = require('zlib');
const { IpcTransport } = require('../nodes/greengrass-connection/ipc-transport');
const { RefusedError } = require('../nodes/greengrass-connection/spool');
const { encodeMessage, decodeHeaders } = require('./fixtures/ipc-server');

const POLICY = {
  'aws.greengrass.ipc.pubsub': { p: { operations: ['aws.greengrass#PublishToTopic'], resources: ['recycling/*/result'] } },
  'aws.greengrass.ipc.mqttproxy': { m: { operations: ['aws.greengrass#PublishToIoTCore'], resources: ['recycling/+/ml', 'deep/#'] } },
};

/** A bare eventstream RPC client: sends what the SDK would never send (a JSON number as QoS, a JSON array as message). */
async function rawRequest(socketPath, token, operation, request) {
  const socket = net.connect(socketPath);
  const frames = [];
  let buffer = Buffer.alloc(0);
  let wake = () => undefined;
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (buffer.length >= 12 && buffer.length >= buffer.readUInt32BE(0)) {
      const total = buffer.readUInt32BE(0);
      const frame = buffer.subarray(0, total);
      buffer = buffer.subarray(total);
      assert.equal(crc32(frame.subarray(0, total - 4)), frame.readUInt32BE(total - 4));
      const headersLength = frame.readUInt32BE(4);
      frames.push({ headers: decodeHeaders(frame.subarray(12, 12 + headersLength)), payload: frame.subarray(12 + headersLength, total - 4).toString() });
      wake();
    }
  });
  const next = async () => {
    const deadline = Date.now() + 5000;
    while (!frames.length) {
      if (Date.now() > deadline) throw new Error('no answer from the test nucleus');
      await new Promise((resolve) => { wake = resolve; setTimeout(resolve, 50); });
    }
    return frames.shift();
  };
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(encodeMessage({ ':message-type': 4, ':message-flags': 0, ':stream-id': 0, ':version': '0.1.0' }, Buffer.from(JSON.stringify({ authToken: token }))));
  assert.equal((await next()).headers[':message-flags'] & 1, 1, 'connection accepted');
  socket.write(encodeMessage({
    ':message-type': 0, ':message-flags': 0, ':stream-id': 1, operation: `aws.greengrass#${operation}`,
    ':content-type': 'application/json', 'service-model-type': `aws.greengrass#${operation}Request`,
  }, Buffer.from(JSON.stringify(request))));
  const answer = await next();
  socket.destroy();
  return answer;
}

test('IPC: the test nucleus refuses as the nucleus does (policy matching, wildcards, IoT Core limits), and each refusal is a RefusedError', async () => {
  const socketPath = path.join(tmpDir('gg-ipc-'), 'ipc.socket');
  const nucleus = new FakeNucleusIpc(socketPath, 'tok', { accessControl: POLICY });
  await nucleus.listen();
  const transport = new IpcTransport(socketPath, 'tok');
  try {
    transport.start();
    await until(() => transport.state === 'connected', 10_000, 'the IPC connection');
    const refusal = async (message, model) => {
      const err = await transport.publish(message).then(() => undefined, (e) => e);
      assert.ok(err instanceof RefusedError, `${message.topic}: ${err?.message ?? 'accepted'} should be a refusal`);
      assert.equal(nucleus.refused.at(-1).error, model, message.topic);
      return err;
    };
    // Local pub/sub: `*` matches across levels (the nucleus's standard lookup); + and # are plain characters there.
    await transport.publish({ topic: 'recycling/a/b/result', payload: '{"n":1}', qos: 1 });
    assert.match((await refusal({ topic: 'plant/a/result', payload: '{}', qos: 1 }, 'UnauthorizedError')).message, /not authori[sz]ed.*accessControl/i);
    await refusal({ topic: 'recycling/x+/result', payload: '{}', qos: 1 }, 'InvalidArgumentsError');
    // JSON that is not an object goes as bytes: the nucleus's JsonMessage.message is a map.
    await transport.publish({ topic: 'recycling/a/result', payload: '[1,2]', qos: 1 });
    assert.deepEqual(nucleus.received.at(-1).request.publishMessage, { binaryMessage: { message: Buffer.from('[1,2]').toString('base64') } });
    // IoT Core: MQTT-style matching, QoS as a string, the topic and size limits.
    await transport.publish({ topic: 'recycling/belt/ml', payload: 'x', qos: 1, destination: 'iotcore' });
    assert.equal(nucleus.received.at(-1).request.qos, '1');
    await transport.publish({ topic: 'recycling/belt/ml', payload: 'x', qos: 0, destination: 'iotcore' });
    assert.equal(nucleus.received.at(-1).request.qos, '0');
    await refusal({ topic: 'recycling/a/b/ml', payload: 'x', qos: 1, destination: 'iotcore' }, 'UnauthorizedError');
    await refusal({ topic: 'deep/1/2/3/4/5/6/7/8', payload: 'x', qos: 1, destination: 'iotcore' }, 'ServiceError');
    await transport.publish({ topic: 'deep/1/2/3/4/5/6/7', payload: 'x', qos: 1, destination: 'iotcore' });
    await refusal({ topic: `deep/${'t'.repeat(252)}`, payload: 'x', qos: 1, destination: 'iotcore' }, 'ServiceError');
    await refusal({ topic: 'recycling/belt/ml', payload: Buffer.alloc(128 * 1024 + 1), qos: 1, destination: 'iotcore' }, 'ServiceError');
    await transport.publish({ topic: 'recycling/belt/ml', payload: Buffer.alloc(128 * 1024), qos: 1, destination: 'iotcore' });
    assert.equal(transport.state, 'connected', 'refusals do not drop the connection');

    // What the SDK never sends, the nucleus refuses too, in its own shapes.
    const numericQos = await rawRequest(socketPath, 'tok', 'PublishToIoTCore', { topicName: 'recycling/b/ml', payload: 'eA==', qos: 1 });
    assert.equal(numericQos.headers[':message-type'], 1);
    assert.equal(numericQos.headers['service-model-type'], 'aws.greengrass#InvalidArgumentsError');
    const noQos = await rawRequest(socketPath, 'tok', 'PublishToIoTCore', { topicName: 'recycling/b/ml', payload: 'eA==' });
    assert.match(JSON.parse(noQos.payload).message, /QoS is required/);
    const array = await rawRequest(socketPath, 'tok', 'PublishToTopic', { topic: 'recycling/b/result', publishMessage: { jsonMessage: { message: [1, 2] } } });
    assert.equal(array.headers[':message-type'], 1, 'an ApplicationError');
    assert.equal(array.headers['service-model-type'], undefined, 'that names no model type');
    assert.equal(array.payload, 'InternalServerError');
    const unknown = await rawRequest(socketPath, 'tok', 'PublishToTopic', { topic: 'other', publishMessage: { jsonMessage: { message: {} } } });
    assert.equal(unknown.headers['service-model-type'], 'aws.greengrass#UnauthorizedError');
    const none = new FakeNucleusIpc(path.join(path.dirname(socketPath), 'none.socket'), 'tok');
    await none.listen();
    const noPolicy = await rawRequest(none.socketPath, 'tok', 'PublishToTopic', { topic: 'recycling/b/result', publishMessage: { jsonMessage: { message: {} } } });
    assert.equal(noPolicy.headers['service-model-type'], 'aws.greengrass#UnauthorizedError', 'no accessControl refuses everything');
    await none.close();
  } finally {
    await transport.stop();
    await nucleus.close();
  }
});

test('IPC: a topic the policy does not grant is set aside after repeated refusals, and later results still go out', async () => {
  const socketPath = path.join(tmpDir('gg-ipc-'), 'ipc.socket');
  const nucleus = new FakeNucleusIpc(socketPath, 'tok', { accessControl: POLICY });
  await nucleus.listen();
  const spoolDir = tmpDir('gg-spool-');
  Object.assign(process.env, { AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT: socketPath, SVCUID: 'tok' });
  try {
    await loadFlow(helper, nodes, [
      ...flow({ transport: 'ipc', spoolDir }),
      { id: 'forbidden', type: 'greengrass-publish', z: 'tab', connection: 'conn', topic: 'plant/secrets', qos: 1 },
    ]);
    const conn = helper.getNode('conn');
    await until(() => conn.state === 'connected', 10_000, 'the IPC connection');
    const caught = [];
    helper.getNode('errors').on('input', (m) => caught.push(m));
    helper.getNode('pub').receive({ payload: { n: 1 }, frame: { camera: 'belt1' } });
    helper.getNode('forbidden').receive({ payload: { n: 2 } });
    for (let n = 3; n <= 4; n++) helper.getNode('pub').receive({ payload: { n }, frame: { camera: 'belt1' } });
    await until(() => nucleus.received.length >= 3, 15_000, 'the allowed results');
    assert.deepEqual(nucleus.received.map((r) => r.request.publishMessage.jsonMessage.message.n), [1, 3, 4]);
    await until(() => caught.length >= 1, 5000, 'the report of the refused message');
    assert.equal(caught[0].error.source.id, 'forbidden');
    assert.match(caught[0].error.message, /plant\/secrets.*not authori[sz]ed/i);
    assert.equal(nucleus.refused.filter((r) => r.request.topic === 'plant/secrets').length, 3, 'three tries, then set aside');
    assert.equal(fs.readdirSync(path.join(spoolDir, 'dead-letter')).length, 1);
  } finally {
    delete process.env.AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT;
    delete process.env.SVCUID;
    await helper.unload();
    await nucleus.close();
  }
});

test('IPC: a refused token is reported to the process (the component launcher exits on it) and retried elsewhere', async () => {
  const socketPath = path.join(tmpDir('gg-ipc-'), 'ipc.socket');
  const nucleus = new FakeNucleusIpc(socketPath, 'the-right-token', { accessControl: POLICY });
  await nucleus.listen();
  const transport = new IpcTransport(socketPath, 'a-stale-token');
  const rejected = [];
  transport.on('rejected', (reason) => rejected.push(reason));
  try {
    transport.start();
    await until(() => rejected.length >= 1, 10_000, 'the refusal');
    assert.match(rejected[0], /refused the component's IPC token/);
    assert.match(transport.lastError, /refused the component's IPC token/);
  } finally {
    await transport.stop();
    await nucleus.close();
  }
});
