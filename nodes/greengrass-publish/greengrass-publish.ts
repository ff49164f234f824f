/** greengrass-publish: sends msg.payload as JSON (or raw bytes) through a greengrass-connection. */
import { errorMessage, Node, NodeAPI, NodeDef } from '../lib/red-types';
import type { GreengrassConnectionNode } from '../greengrass-connection/greengrass-connection';
import { encodePayload, renderTopic } from './publish-format';

module.exports = function (RED: NodeAPI) {
  function GreengrassPublish(this: Node, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const connection = RED.nodes.getNode(String(config.connection || '')) as GreengrassConnectionNode | null;
    const template = String(config.topic ?? '').trim();
    const qos: 0 | 1 = Number(config.qos) === 0 ? 0 : 1;
    let published = 0;

    function onState(state: string, error?: string) {
      if (state === 'connected') node.status({ fill: 'green', shape: 'dot', text: published ? `connected · ${published} sent` : 'connected' });
      else if (state === 'connecting') node.status({ fill: 'yellow', shape: 'ring', text: 'connecting' });
      else if (state === 'disconnected') node.status({ fill: 'red', shape: 'ring', text: `disconnected${error ? `: ${error.slice(0, 50)}` : ''}` });
      else if (state === 'error') node.status({ fill: 'red', shape: 'ring', text: (error ?? 'error').slice(0, 60) });
    }

    if (!connection) {
      node.status({ fill: 'red', shape: 'ring', text: 'no connection selected' });
    } else {
      connection.events.on('state', onState);
      connection.register(node);
      onState(connection.state, connection.lastError);
    }

    node.on('input', async (msg, send, done) => {
      try {
        if (!connection) throw new Error('no greengrass-connection config node is selected');
        const topic = renderTopic(template || String(msg.topic ?? ''), msg);
        await connection.publish(topic, encodePayload(msg.payload), qos);
        published++;
        onState('connected');
        send(msg);
        done();
      } catch (err) {
        done(new Error(`publish failed: ${errorMessage(err)}`));
      }
    });

    node.on('close', (_removed: boolean, done: () => void) => {
      if (!connection) return done();
      connection.events.off('state', onState);
      connection.deregister(node, done);
    });
  }

  RED.nodes.registerType('greengrass-publish', GreengrassPublish);
};
