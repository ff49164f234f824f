/**
 * greengrass-connection config node: one MQTT 5 client shared by every greengrass-publish node,
 * connected when the first user registers and stopped when the last one leaves.
 */
import { EventEmitter } from 'events';
import * as path from 'path';
import { errorMessage, Node, NodeAPI, NodeDef, numberSetting, textSetting } from '../lib/red-types';
import { ConnectionState, DEFAULT_BROKER_URL, MqttTransport, parseProtocol } from './mqtt-transport';

export interface GreengrassConnectionNode extends Node {
  readonly events: EventEmitter;
  readonly description: string;
  state: ConnectionState | 'error';
  lastError?: string;
  register(user: Node): void;
  deregister(user: Node, done: () => void): void;
  publish(topic: string, payload: Buffer | string, qos: 0 | 1): Promise<void>;
}

module.exports = function (RED: NodeAPI) {
  function GreengrassConnection(this: GreengrassConnectionNode, config: NodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    const events = new EventEmitter();
    events.setMaxListeners(0);
    const users = new Set<string>();
    const resolveFile = (f: unknown) => {
      const value = textSetting(f);
      return value ? path.resolve(RED.settings.userDir || process.cwd(), value) : undefined;
    };
    const url = textSetting(config.url) || DEFAULT_BROKER_URL;
    let transport: MqttTransport | undefined;
    let configError: string | undefined;
    try {
      transport = new MqttTransport({
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
    } catch (err) {
      configError = errorMessage(err);
    }
    Object.assign(node, {
      events,
      description: transport?.description ?? url,
      state: configError ? 'error' : 'stopped',
      lastError: configError,
    });

    transport?.on('state', (state: ConnectionState, error?: string) => {
      node.state = state;
      node.lastError = error;
      if (state === 'connected') node.log(`connected to ${node.description}`);
      events.emit('state', state, error);
    });

    node.register = (user: Node) => {
      users.add(user.id);
      if (users.size === 1 && transport && !configError) {
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
    };

    node.deregister = (user: Node, done: () => void) => {
      users.delete(user.id);
      if (users.size === 0 && transport) transport.stop().then(done, done);
      else done();
    };

    node.publish = async (topic, payload, qos) => {
      if (configError || !transport) throw new Error(`connection settings are invalid: ${configError}`);
      return transport.publish(topic, payload, qos);
    };

    node.on('close', (_removed: boolean, done: () => void) => {
      users.clear();
      if (transport) transport.stop().then(done, done);
      else done();
    });
  }

  RED.nodes.registerType('greengrass-connection', GreengrassConnection as unknown as (this: Node, def: NodeDef) => void, {
    credentials: { username: { type: 'text' }, password: { type: 'password' } },
  });
};
