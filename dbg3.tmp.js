const { MqttTransport } = require('./nodes/greengrass-connection/mqtt-transport');
(async () => {
  const { Aedes } = await import('aedes');
  const broker = await Aedes.createBroker();
  const server = require('net').createServer(broker.handle);
  await new Promise(r => server.listen(18831, '127.0.0.1', r));
  console.log('listening', server.address());
  broker.on('publish', (p, c) => c && console.log('broker got', p.topic, p.payload.toString()));
  const t = new MqttTransport({ url: 'mqtt://127.0.0.1:18831', clientId: 'x1', protocol: process.argv[2] });
  t.on('state', (s, e) => console.log('state', s, e));
  t.start();
  await new Promise(r => setTimeout(r, 1500));
  try { await t.publish('a/b', 'hi', 1); console.log('published'); } catch (e) { console.log('pub err', e.message); }
  await t.stop(); server.close(); broker.close();
})();
