/**
 * greengrass-connection config node: one transport shared by every greengrass-publish node:
 * Greengrass IPC (local pub/sub and IoT Core through the nucleus), MQTT 5 / 3.1.1, or auto (IPC when
 * running as a Greengrass component, MQTT otherwise); and a disk spool so no result is lost while the
 * link is down. Started when the first user registers; survives redeploys of its users.
 */
import { EventEmitter } from 'events';
import * as os from 'os';
import * as path from 'path';
import { Backoff } from '../lib/backoff';
import { shareAmongUsers, SharedResourceNode } from '../lib/shared-resource';
import { errorMessage, Node, NodeAPI, NodeDef, numberSetting, textSetting } from '../lib/red-types';
import { chooseTransport, IpcTransport } from './ipc-transport';
import { ConnectionState, DEFAULT_BROKER_URL, MqttTransport, parseBrokerUrl, parseProtocol } from './mqtt-transport';
import { checkOutgoing, OutgoingCheck } from './outgoing';
import { DiskSpool, SpooledMessage, SpoolDrainer } from './spool';

export type Outcome = 'sent' | 'queued';

export interface PublishRequest extends OutgoingCheck {
  topic: string;
  payload: Buffer | string;
  qos: 0 | 1;
  /** IPC: local pub/sub or IoT Core. */
  destination?: 'local' | 'iotcore';
  /** Time-sensitive messages: dropped unsent after this (ms since epoch). */
  expiresAt?: number;
  /** Id of the publishing node: it reports the message if the server refuses it for good. */
  publisher?: string;
}

export interface DeadLetter {
  topic: string;
  reason: string;
  file: string;
  publisher?: string;
}

/** A 'deadletter' listener returns true when it reported the letter; `anyone` asks it to report one that is not its own. */
export type DeadLetterListener = (letter: DeadLetter, anyone: boolean) => boolean;

export interface GreengrassConnectionNode extends SharedResourceNode {
  /** 'state', 'queue' and 'deadletter' (DeadLetter) events for the publish nodes. */
  readonly events: EventEmitter;
  readonly description: string;
  readonly transportName: 'ipc' | 'mqtt';
  state: ConnectionState | 'error';
  lastError?: string;
  /** Results waiting in the spool. */
  queued: number;
  /** Spool counters for statuses: dropped (full), expired, dead-lettered, lost (unreadable). */
  spoolCounters(): { dropped: number; expired: number; deadLettered: number; lost: number } | undefined;
  /** Sends now, or (with the spool) stores durably and sends in order when the link is up. */
  publish(request: PublishRequest): Promise<Outcome>;
}

type Transport = MqttTransport | IpcTransport;

/** Process event emitted when the nucleus refuses the IPC token (see greengrass/app/run.js). */
export const TOKEN_REJECTED_EVENT = 'greengrass:ipc-token-rejected';

/** Unique per device, so that devices of a fleet sharing one flow do not push each other off the broker. */
export function defaultClientId(nodeId: string, env: NodeJS.ProcessEnv = process.env): string {
  const device = env.AWS_IOT_THING_NAME || os.hostname() || 'node-red';
  return `${device}-nodered-${nodeId}`.replace(/[^\w.:-]/g, '_').slice(0, 128);
}

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
    /** Why the spool cannot be used (its folder is not writable, another process holds it). */
    let spoolError: string | undefined;
    let spoolRetry: NodeJS.Timeout | undefined;
    /** Between start() and stop(): an open or retry finishing after stop() leaves the spool alone. */
    let running = false;
    const spoolBackoff = new Backoff(2000, 60_000, 2);
    let maxPayloadSetting: number | undefined;
    try {
      transportName = chooseTransport(textSetting(config.transport));
      const maxKB = numberSetting(config.maxPayloadKB, 0, { min: 0, max: 262_144, name: 'maxPayloadKB' });
      maxPayloadSetting = maxKB > 0 ? maxKB * 1024 : undefined;
      transport = transportName === 'ipc'
        ? new IpcTransport()
        : new MqttTransport({
          url,
          protocol: parseProtocol(textSetting(config.protocol)),
          clientId: textSetting(config.clientId) || defaultClientId(node.id),
          username: node.credentials?.username,
          password: node.credentials?.password,
          caFile: resolveFile(config.caFile),
          certFile: resolveFile(config.certFile),
          keyFile: resolveFile(config.keyFile),
          keepAliveSeconds: numberSetting(config.keepalive, 30, { min: 1, max: 65535, name: 'keepalive' }),
        });
      const tlsFiles = [config.caFile, config.certFile, config.keyFile].filter((f) => textSetting(f));
      if (transportName === 'mqtt' && tlsFiles.length && !parseBrokerUrl(url).tls) {
        node.warn(`the CA, certificate and key files are not used: the broker URL ${url} is plain TCP; use mqtts:// for TLS`);
      }
      if (config.spool !== false && textSetting(config.spool) !== 'false') {
        const dir = resolveFile(config.spoolDir) ?? path.join(userDir, 'greengrass-spool', node.id.replace(/[^\w.-]/g, '_'));
        spool = new DiskSpool(dir, {
          maxMessages: numberSetting(config.spoolMaxMessages, 100_000, { min: 1, max: 100_000_000, name: 'spoolMaxMessages' }),
          maxBytes: numberSetting(config.spoolMaxMB, 100, { min: 0.01, max: 1_000_000, name: 'spoolMaxMB' }) * 1024 * 1024,
        });
        spool.onWarning = (text) => node.warn(text);
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
      node.queued = spool?.length ?? 0;
      events.emit('queue', node.queued);
    };
    node.spoolCounters = () => spool && { dropped: spool.dropped, expired: spool.expired, deadLettered: spool.deadLettered, lost: spool.lost };

    const sendNow = (m: SpooledMessage) => transport!.publish({ topic: m.topic, payload: m.payload, qos: m.qos, expiresAt: m.expiresAt, destination: m.destination });
    if (spool && transport) {
      // Spooled results always go with QoS 1: they leave the spool only once the broker has them.
      drainer = new SpoolDrainer(spool, (m) => sendNow({ ...m, qos: 1 }), isUp, {
        onChange: queueChanged,
        onWarning: (text) => node.warn(text),
        onDeadLetter: (m, reason, file) => {
          const letter: DeadLetter = { topic: m.topic, reason, file, publisher: m.publisher };
          // One report, by the node that published it so its Catch node sees it; by another publish
          // node if that one is gone; by the connection's log if none is left.
          const listeners = events.listeners('deadletter') as DeadLetterListener[];
          if (listeners.some((report) => report(letter, false))) return;
          if (listeners.length) listeners[0](letter, true);
          else node.error(`gave up on a message to ${m.topic}: ${reason}; it is kept in ${file}`);
        },
      });
    }

    transport?.on('rejected', (reason: string) => {
      node.error(`${reason}: no result can be delivered with it (results wait in the spool)`);
      // A Greengrass component's launcher (greengrass/app/run.js) listens for this and exits non-zero,
      // so that the nucleus restarts the component with a fresh token. Elsewhere the transport retries.
      (process as NodeJS.EventEmitter).emit(TOKEN_REJECTED_EVENT, reason);
    });

    transport?.on('state', (state: ConnectionState, error?: string) => {
      node.state = state;
      node.lastError = error;
      if (state === 'connected') {
        node.log(`connected to ${node.description}${node.queued ? `; delivering ${node.queued} queued results` : ''}`);
        drainer?.kick();
      }
      events.emit('state', state, error);
    });

    /** Opens the spool; while it cannot be (another process holds the folder, a disk not mounted yet), again with back-off. */
    function openSpool(): Promise<void> {
      return spool!.open().then(() => {
        if (!running) return; // stop() closes it
        if (spoolError) node.log(`the spool folder ${spool!.dir} is in use now`);
        spoolError = undefined;
        spoolBackoff.reset();
        queueChanged();
        if (spool!.length) node.log(`${spool!.length} results from before the restart are queued in ${spool!.dir}`);
        drainer!.start();
      }, (err) => {
        if (!running) return;
        const problem = `the spool folder cannot be used: ${errorMessage(err)}`;
        // Said once per cause, not at every retry.
        if (problem !== spoolError) node.error(`${problem}; results are sent without it while connected, and it is tried again`);
        spoolError = problem;
        spoolRetry = setTimeout(() => {
          spoolRetry = undefined;
          spoolReady = openSpool();
        }, spoolBackoff.next());
      });
    }

    function start() {
      if (!transport || configError) return;
      running = true;
      if (spool) {
        spoolError = undefined;
        spoolBackoff.reset();
        spoolReady = openSpool();
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
      running = false;
      drainer?.stop();
      clearTimeout(spoolRetry);
      spoolRetry = undefined;
      await spoolReady;
      await Promise.all([
        transport?.stop(),
        spool?.isOpen ? spool.close().catch((err) => node.warn(`closing the spool: ${errorMessage(err)}`)) : undefined,
      ]);
    }

    shareAmongUsers(node, start, stop);

    // A broker at *.amazonaws.com is AWS IoT Core: its topic and payload quotas apply to every message.
    const brokerIsIotCore = Boolean(transport) && /\.amazonaws\.com$/i.test(transport!.description.replace(/:\d+$/, ''));

    node.publish = async (request) => {
      if (configError || !transport) throw new Error(`connection settings are invalid: ${configError}`);
      const message: SpooledMessage = {
        topic: request.topic, payload: request.payload, qos: request.qos, destination: request.destination, at: Date.now(),
        expiresAt: request.expiresAt, publisher: request.publisher,
      };
      checkOutgoing(message, {
        allowReserved: request.allowReserved,
        iotCore: (request.destination === 'iotcore' && transportName === 'ipc') || brokerIsIotCore,
        maxPayloadBytes: maxPayloadSetting ?? transport.maxPayloadBytes(message.topic, message.destination),
      });
      if (!drainer) {
        await sendNow(message);
        return 'sent';
      }
      await spoolReady;
      if (spoolError || !spool!.isOpen) {
        // A spool that cannot be written must not stop delivery while the link is up.
        if (!isUp()) throw new Error(`${spoolError ?? 'the spool is closed'}, and ${node.description} is not connected: the result is lost`);
        await sendNow(message);
        return 'sent';
      }
      await drainer.submit(message);
      return isUp() && node.queued <= 1 ? 'sent' : 'queued';
    };
  }

  RED.nodes.registerType('greengrass-connection', GreengrassConnection as unknown as (this: Node, def: NodeDef) => void, {
    credentials: { username: { type: 'text' }, password: { type: 'password' } },
  });
};
