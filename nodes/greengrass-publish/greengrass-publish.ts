/** greengrass-publish: sends msg.payload through a greengrass-connection (IPC or MQTT, spooled). */
import { showError, StatusThrottle, statusText } from '../lib/node-status';
import { frameOf } from '../lib/messages';
import { describeReceived, errorMessage, Node, NodeAPI, NodeDef, NodeStatus, numberSetting } from '../lib/red-types';
import type { DeadLetter, GreengrassConnectionNode } from '../greengrass-connection/greengrass-connection';
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
    const allowReserved = config.allowReserved === true || config.allowReserved === 'true';
    let settingError: string | undefined;
    let expirySeconds = 0;
    try {
      expirySeconds = numberSetting(config.expiry, 0, { min: 0, max: 4_294_967_295 });
    } catch (err) {
      settingError = `Expires after: ${errorMessage(err)} (seconds; empty or 0: never)`;
    }
    let published = 0;
    let warnedOutage = false;
    const statusThrottle = new StatusThrottle(node);

    /** Per message and per change of the queue: throttled. A change of the connection's state shows at once. */
    const showStatusSoon = () => statusThrottle.update(currentStatus);
    const showStatus = () => statusThrottle.now(currentStatus());

    function currentStatus(): NodeStatus {
      if (!connection) return { fill: 'red', shape: 'ring', text: 'no connection selected' };
      if (settingError) return { fill: 'red', shape: 'ring', text: statusText(settingError) };
      const { state, lastError, queued } = connection;
      const via = connection.transportName === 'ipc' ? 'IPC' : 'MQTT';
      const counters = connection.spoolCounters();
      const losses = counters
        ? [counters.expired && `${counters.expired} expired`, counters.deadLettered && `${counters.deadLettered} refused`, counters.dropped && `${counters.dropped} dropped`]
          .filter(Boolean).join(' · ')
        : '';
      const extra = `${queued ? ` · ${queued} queued` : ''}${losses ? ` · ${losses}` : ''}`;
      if (state === 'connected') {
        warnedOutage = false;
        return { fill: queued ? 'yellow' : 'green', shape: 'dot', text: `${via} connected · ${published} sent${extra}` };
      }
      if (state === 'connecting') return { fill: 'yellow', shape: 'ring', text: `connecting${extra}` };
      if (state === 'disconnected') return { fill: 'red', shape: 'ring', text: statusText(`disconnected${extra}${lastError ? `: ${lastError}` : ''}`) };
      if (state === 'error') return { fill: 'red', shape: 'ring', text: statusText(lastError ?? 'error') };
      return { fill: 'grey', shape: 'ring', text: 'stopped' };
    }

    /** A message the server refused for good, set aside by the spool: one report, to Catch. */
    function reportDeadLetter(letter: DeadLetter, anyone: boolean): boolean {
      if (letter.publisher !== node.id && !anyone) return false;
      node.error(`gave up on a message to ${letter.topic} after repeated refusals: ${letter.reason}; it is kept in ${letter.file}`, {
        topic: letter.topic, payload: letter,
      });
      showStatus();
      return true;
    }

    if (!connection) {
      showError(node, 'no connection selected');
    } else {
      connection.events.on('state', showStatus);
      connection.events.on('queue', showStatusSoon);
      connection.events.on('deadletter', reportDeadLetter);
      connection.register(node);
      showStatus();
    }

    node.on('input', async (msg, send, done) => {
      try {
        if (!connection) throw new Error('no greengrass-connection config node is selected');
        if (settingError) throw new Error(settingError);
        if (!template && msg.topic !== undefined && msg.topic !== null && typeof msg.topic !== 'string') {
          // String() would publish an object to "[object Object]".
          throw new Error(`Expected msg.topic to be a string but received ${describeReceived(msg.topic)}`);
        }
        const topic = renderTopic(template || (msg.topic ?? ''), msg);
        const body = awsFormat ? toAwsMlInferenceMessage(msg.payload, frameOf(msg)) : msg.payload;
        const outcome = await connection.publish({
          topic, payload: encodePayload(body), qos, destination, allowReserved, publisher: node.id,
          expiresAt: expirySeconds > 0 ? Date.now() + expirySeconds * 1000 : undefined,
        });
        published++;
        if (outcome === 'queued' && connection.state !== 'connected' && !warnedOutage) {
          // Once per outage, so a Catch node can alert someone; the result itself is safe in the spool.
          warnedOutage = true;
          node.error(`not connected to ${connection.description}${connection.lastError ? ` (${connection.lastError})` : ''}: results are queued on disk and will be delivered in order`, msg);
        }
        showStatusSoon();
        send(msg);
        done();
      } catch (err) {
        done(new Error(`publish failed: ${errorMessage(err)}`));
      }
    });

    node.on('close', (removed: boolean, done: () => void) => {
      if (!connection) return done();
      statusThrottle.stop();
      connection.events.off('state', showStatus);
      connection.events.off('queue', showStatusSoon);
      connection.events.off('deadletter', reportDeadLetter);
      connection.deregister(node, done, removed);
    });
  }

  RED.nodes.registerType('greengrass-publish', GreengrassPublish);
};
