/**
 * greengrass-connection config node: one transport shared by every greengrass-publish node:
 * Greengrass IPC (local pub/sub and IoT Core through the nucleus), MQTT 5 / 3.1.1, or auto (IPC when
 * running as a Greengrass component, MQTT otherwise); and a disk spool so no result is lost while the
 * link is down. Started when the first user registers, stopped when the last one leaves.
 */
import { EventEmitter } from 'events';
import * as path from 'path';
import { shareAmongUsers, SharedResourceNode } from '../lib/shared-resource';
import { errorMessage, Node, NodeAPI, NodeDef, numberSetting, textSetting } from '../lib/red-types';
import { chooseTransport, IpcDestination, IpcTransport } from './ipc-transport';
import { ConnectionState, DEFAULT_BROKER_URL, MqttTransport, parseProtocol } from './mqtt-transport';
import { DiskSpool, SpoolDrainer } from './spool';

export type Outcome = 'sent' | 'queued';

export interface GreengrassConnectionNode extends SharedResourceNode {
  readonly events: EventEmitter;
  readonly description: string;
  readonly transportName: 'ipc' | 'mqtt';
  state: ConnectionState | 'error';
  lastError?: string;
  /** Results waiting in the spool. */
  queued: number;
  /** Sends now, or (with the spool) stores durably and sends in order when the link is up. */
  publish(topic: string, payload: Buffer | string, qos: 0 | 1, destination?: IpcDestination): Promise<Outcome>;
}

type Transport = MqttTransport | IpcTransport;

module.exports = function (RED: NodeAPI) {
  function GreengrassConnection(this: GreengrassConnectionNode, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const events = new EventEmitter();
    events.setMaxListeners(0);
    const userDir = RED.settings.userDir || process.cwd();
    const resolveFile = (f: unknown) => {
      const value = textSetting(f);
      return value ? path.resolve(userDir, value) : undefined;
    };
    const url = textSetting(config.url) || DEFAULT_BROKER_URL;
    let transport: Transport | undefined;
    let transportName: 'ipc' | 'mqtt' = 'mqtt';
    let configError: string | undefined;
    let spool: DiskSpool | undefined;
    let drainer: SpoolDrainer | undefined;
    let spoolReady: Promise<void> | undefined;
    try {
      transportName = chooseTransport(textSetting(config.transport));
      transport = transportName === 'ipc'
        ? new IpcTransport()
        : new MqttTransport({
          url,
          protocol: parseProtocol(textSetting(config.protocol)),
          clientId: textSetting(config.clientId) || `node-red-${node.id}`,
          username: node.credentials?.username,
          password: node.credentials?.password,
          caFile: resolveFile(config.caFile),
          certFile: resolveFile(config.certFile),
          keyFile: resolveFile(config.keyFile),
          keepAliveSeconds: numberSetting(config.keepalive, 30, { min: 1, max: 65535 }),
        });
      if (config.spool !== false && textSetting(config.spool) !== 'false') {
        const dir = resolveFile(config.spoolDir) ?? path.join(userDir, 'greengrass-spool', node.id.replace(/[^\w.-]/g, '_'));
        spool = new DiskSpool(dir, {
          maxMessages: numberSetting(config.spoolMaxMessages, 100_000, { min: 1, max: 100_000_000 }),
          maxBytes: numberSetting(config.spoolMaxMB, 100, { min: 0.01, max: 1_000_000 }) * 1024 * 1024,
        });
      }
    } catch (err) {
      configError = errorMessage(err);
    }
    Object.assign(node, {
      events,
      transportName,
      description: transport?.description ?? url,
      state: configError ? 'error' : 'stopped',
      lastError: configError,
      queued: 0,
    });

    const isUp = () => transport?.state === 'connected';
    const queueChanged = () => {
      const dropped = spool?.dropped ?? 0;
      node.queued = spool?.length ?? 0;
      events.emit('queue', node.queued, dropped);
    };
    if (spool && transport) {
      const t = transport;
      // Spooled results always go with QoS 1: they leave the spool only once the broker has them.
      drainer = new SpoolDrainer(spool, (m) => t.publish(m.topic, m.payload, 1, m.destination as IpcDestination | undefined), isUp, queueChanged);
    }

    transport?.on('state', (state: ConnectionState, error?: string) => {
      node.state = state;
      node.lastError = error;
      if (state === 'connected') {
        node.log(`connected to ${node.description}${node.queued ? `; delivering ${node.queued} queued results` : ''}`);
        drainer?.kick();
      }
      events.emit('state', state, error);
    });

    function start() {
      if (!transport || configError) return;
      if (spool) {
        spoolReady = spool.open().then(() => {
          queueChanged();
          if (spool!.length) node.log(`${spool!.length} results from before the restart are queued in ${spool!.dir}`);
        }, (err) => {
          configError = `cannot open the spool folder: ${errorMessage(err)}`;
          node.error(configError);
        });
      }
      try {
        transport.start();
      } catch (err) {
        configError = errorMessage(err);
        node.state = 'error';
        node.lastError = configError;
        node.error(configError);
        events.emit('state', 'error', configError);
      }
    }

    async function stop() {
      drainer?.stop();
      if (transport) await transport.stop();
    }

    shareAmongUsers(node, start, stop);

    node.publish = async (topic, payload, qos, destination) => {
      if (configError || !transport) throw new Error(`connection settings are invalid: ${configError}`);
      if (!drainer) {
        await transport.publish(topic, payload, qos, destination);
        return 'sent';
      }
      await spoolReady;
      await drainer.submit({ topic, payload, qos, destination, at: Date.now() });
      return isUp() && node.queued <= 1 ? 'sent' : 'queued';
    };
  }

  RED.nodes.registerType('greengrass-connection', GreengrassConnection as unknown as (this: Node, def: NodeDef) => void, {
    credentials: { username: { type: 'text' }, password: { type: 'password' } },
  });
};
