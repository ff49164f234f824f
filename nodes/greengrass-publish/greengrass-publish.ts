/** greengrass-publish: sends msg.payload through a greengrass-connection (IPC or MQTT, spooled). */
import { errorMessage, Node, NodeAPI, NodeDef } from '../lib/red-types';
import type { GreengrassConnectionNode } from '../greengrass-connection/greengrass-connection';
import { encodePayload, renderTopic, toAwsMlInferenceMessage } from './publish-format';

module.exports = function (RED: NodeAPI) {
  function GreengrassPublish(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const connection = RED.nodes.getNode(String(config.connection || '')) as GreengrassConnectionNode | null;
    const template = String(config.topic ?? '').trim();
    const qos: 0 | 1 = Number(config.qos) === 0 ? 0 : 1;
    const destination = config.destination === 'iotcore' ? 'iotcore' : 'local';
    const awsFormat = config.format === 'aws-ml';
    let published = 0;
    let warnedOutage = false;

    function showStatus() {
      if (!connection) return;
      const { state, lastError, queued } = connection;
      const via = connection.transportName === 'ipc' ? 'IPC' : 'MQTT';
      if (state === 'connected') {
        warnedOutage = false;
        node.status({ fill: queued ? 'yellow' : 'green', shape: 'dot', text: `${via} connected · ${published} sent${queued ? ` · ${queued} queued` : ''}` });
      } else if (state === 'connecting') {
        node.status({ fill: 'yellow', shape: 'ring', text: `connecting${queued ? ` · ${queued} queued` : ''}` });
      } else if (state === 'disconnected') {
        node.status({ fill: 'red', shape: 'ring', text: `${queued ? `${queued} queued · ` : ''}disconnected${lastError ? `: ${lastError}` : ''}`.slice(0, 80) });
      } else if (state === 'error') {
        node.status({ fill: 'red', shape: 'ring', text: (lastError ?? 'error').slice(0, 60) });
      }
    }

    if (!connection) {
      node.status({ fill: 'red', shape: 'ring', text: 'no connection selected' });
    } else {
      connection.events.on('state', showStatus);
      connection.events.on('queue', showStatus);
      connection.register(node);
      showStatus();
    }

    node.on('input', async (msg, send, done) => {
      try {
        if (!connection) throw new Error('no greengrass-connection config node is selected');
        const topic = renderTopic(template || String(msg.topic ?? ''), msg);
        const body = awsFormat ? toAwsMlInferenceMessage(msg.payload) : msg.payload;
        const outcome = await connection.publish(topic, encodePayload(body), qos, destination);
        published++;
        if (outcome === 'queued' && connection.state !== 'connected' && !warnedOutage) {
          // Once per outage, so a Catch node can alert someone; the result itself is safe in the spool.
          warnedOutage = true;
          node.error(`not connected to ${connection.description}${connection.lastError ? ` (${connection.lastError})` : ''}: results are queued on disk and will be delivered in order`, msg);
        }
        showStatus();
        send(msg);
        done();
      } catch (err) {
        done(new Error(`publish failed: ${errorMessage(err)}`));
      }
    });

    node.on('close', (_removed: boolean, done: () => void) => {
      if (!connection) return done();
      connection.events.off('state', showStatus);
      connection.events.off('queue', showStatus);
      connection.deregister(node, done);
    });
  }

  RED.nodes.registerType('greengrass-publish', GreengrassPublish);
};
