// ml-route outputs, and greengrass-publish against real brokers: mosquitto (MQTT 5) and aedes (MQTT 3.1.1).
const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { node, coreNode, redHelper, loadFlow, startAedes, startMosquitto, freePort, collect, nextMessage, sleep } = require('./helpers');

const helper = redHelper();
const nodes = [node('ml-route'), node('greengrass-connection'), node('greengrass-publish'), coreNode('common/25-catch.js')];

before(() => new Promise((resolve) => helper.startServer(resolve)));
afterEach(() => helper.unload());
after(() => new Promise((resolve) => helper.stopServer(resolve)));

test('ml-route sends each prediction to its bin output or to uncertain', async () => {
  await loadFlow(helper, nodes, [
    { id: 'tab', type: 'tab' },
    { id: 'route', type: 'ml-route', z: 'tab', outputs: 3, uncertainName: 'review', consecutive: 1,
      rules: [{ name: 'containers', labels: 'glass,metal,plastic', threshold: 0.6 }, { name: 'fibre', labels: 'paper,cardboard', threshold: 0.6 }],
      wires: [['containers'], ['fibre'], ['review']] },
    { id: 'containers', type: 'helper', z: 'tab' },
    { id: 'fibre', type: 'helper', z: 'tab' },
    { id: 'review', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ]);
  const route = helper.getNode('route');
  const send = async (helperId, payload) => {
    const got = nextMessage(helper.getNode(helperId));
    route.receive({ payload, frame: { camera: 'cam1' } });
    return got;
  };
  const metal = await send('containers', { label: 'metal', score: 0.9 });
  assert.equal(metal.payload.bin, 'containers');
  assert.equal(metal.route.reason, 'matched');
  assert.equal((await send('fibre', { label: 'cardboard', score: 0.7 })).payload.bin, 'fibre');
  const unsure = await send('review', { label: 'paper', score: 0.4 });
  assert.equal(unsure.payload.bin, 'review');
  assert.equal(unsure.route.reason, 'below-threshold');
  assert.equal((await send('review', { label: 'trash', score: 0.99 })).route.reason, 'no-rule');
  const caught = nextMessage(helper.getNode('errors'));
  route.receive({ payload: 'glass' });
  assert.match((await caught).error.message, /msg.payload must be a classification \{label, score\} from ml-inference/);
});

function publishFlow(url, protocol, extra = {}, credentials) {
  return loadFlow(helper, nodes, [
    { id: 'tab', type: 'tab' },
    { id: 'conn', type: 'greengrass-connection', url, protocol, clientId: '', keepalive: 30, ...extra },
    { id: 'pub', type: 'greengrass-publish', z: 'tab', connection: 'conn', topic: 'recycling/{{frame.camera}}/result', qos: 1, wires: [['sent']] },
    { id: 'pub2', type: 'greengrass-publish', z: 'tab', connection: 'conn', topic: '', qos: 0, wires: [['sent']] },
    { id: 'sent', type: 'helper', z: 'tab' },
    { id: 'catch', type: 'catch', z: 'tab', scope: null, wires: [['errors']] },
    { id: 'errors', type: 'helper', z: 'tab' },
  ], credentials ? { conn: credentials } : {});
}

async function connected(id = 'conn', timeoutMs = 10_000) {
  const conn = helper.getNode(id);
  const deadline = Date.now() + timeoutMs;
  while (conn.state !== 'connected') {
    if (Date.now() > deadline) throw new Error(`not connected: ${conn.state} ${conn.lastError}`);
    await sleep(20);
  }
}

test('results are published as JSON over MQTT 5 to a real mosquitto, topic from the template', async () => {
  const broker = await startMosquitto();
  const sub = await collect(broker.url, ['recycling/#', 'raw/#']);
  try {
    await publishFlow(broker.url, '5');
    await connected();
    const sent = nextMessage(helper.getNode('sent'));
    helper.getNode('pub').receive({ payload: { label: 'glass', score: 0.91, scores: Float32Array.from([0.5, 0.25]) }, frame: { camera: 'cam7' } });
    await sent;
    helper.getNode('pub2').receive({ topic: 'raw/bytes', payload: Buffer.from([1, 2, 3]) });
    const [json, raw] = await sub.waitFor(2);
    assert.equal(json.topic, 'recycling/cam7/result');
    assert.deepEqual(JSON.parse(json.payload), { label: 'glass', score: 0.91, scores: [0.5, 0.25] });
    assert.equal(raw.topic, 'raw/bytes');
    assert.deepEqual(Buffer.from(raw.payload, 'binary'), Buffer.from([1, 2, 3]));
  } finally {
    await sub.close();
    await helper.unload();
    await broker.close();
  }
});

test('MQTT 3.1.1 brokers work too, and publish nodes share one client that leaves with them', async () => {
  const broker = await startAedes();
  const seen = [];
  broker.broker.on('publish', (p, client) => client && seen.push(p.topic));
  try {
    await publishFlow(broker.url, '3.1.1');
    await connected();
    assert.equal(broker.broker.connectedClients, 1, 'two publish nodes, one connection');
    const sent = nextMessage(helper.getNode('sent'));
    helper.getNode('pub').receive({ payload: { ok: true }, frame: { camera: 'cam1' } });
    await sent;
    const until = Date.now() + 5000;
    while (seen.length < 1 && Date.now() < until) await sleep(20);
    assert.deepEqual(seen, ['recycling/cam1/result']);
    await helper.unload();
    const deadline = Date.now() + 5000;
    while (broker.broker.connectedClients > 0 && Date.now() < deadline) await sleep(20);
    assert.equal(broker.broker.connectedClients, 0, 'closing the flow disconnects');
  } finally {
    await broker.close();
  }
});

test('without the spool, a broker that refuses the credentials, or is not there, gives a catchable error that says why', async () => {
  const broker = await startAedes(undefined, {
    authenticate: (client, username, password, callback) => {
      const ok = username === 'sorter' && password?.toString() === 'right';
      callback(ok ? null : Object.assign(new Error('bad credentials'), { returnCode: 4 }), ok);
    },
  });
  try {
    await publishFlow(broker.url, '3.1.1', { spool: false }, { username: 'sorter', password: 'right' });
    await connected();
    await helper.unload();
    await publishFlow(broker.url, '3.1.1', { spool: false }, { username: 'sorter', password: 'wrong' });
    await sleep(1000);
    const caught = nextMessage(helper.getNode('errors'));
    helper.getNode('pub').receive({ payload: {}, frame: { camera: 'c' } });
    assert.match((await caught).error.message, /publish failed: not connected to mqtt:\/\/127.0.0.1:\d+/);
  } finally {
    await helper.unload();
    await broker.close();
  }

  const nobody = `mqtt://127.0.0.1:${await freePort()}`;
  await publishFlow(nobody, '5', { spool: false });
  await sleep(1000);
  const caught = nextMessage(helper.getNode('errors'));
  helper.getNode('pub').receive({ payload: { label: 'x' }, frame: { camera: 'c' } });
  assert.match((await caught).error.message, /publish failed: not connected to mqtt:\/\/127.0.0.1:\d+: .*(refused).*nothing listens at that host and port/i);
  const missing = nextMessage(helper.getNode('errors'));
  helper.getNode('pub').receive({ payload: { label: 'x' } });
  assert.match((await missing).error.message, /needs msg.frame.camera, which is missing/);
});

test('invalid connection settings are reported instead of crashing', async () => {
  await publishFlow('http://127.0.0.1:1883', '5');
  const caught = nextMessage(helper.getNode('errors'));
  helper.getNode('pub').receive({ payload: {}, frame: { camera: 'c' } });
  assert.match((await caught).error.message, /connection settings are invalid: broker URL scheme "http" is not supported/);
});
