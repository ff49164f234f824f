/** MQTT 5 publishing through aws-iot-device-sdk-v2 (AWS IoT Core, the Greengrass local broker, any broker). */
import { EventEmitter } from 'events';
import { io, mqtt, mqtt5 } from 'aws-iot-device-sdk-v2';
import { Backoff } from '../lib/backoff';
import { InFlightPublishes } from './in-flight';
import { RefusedError, SpooledMessage } from './spool';

export interface MqttOptions {
  url: string;
  clientId: string;
  username?: string;
  password?: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  keepAliveSeconds?: number;
  /** How long a QoS 1 publish may wait for its PUBACK. */
  ackTimeoutSeconds?: number;
  /** MQTT 5 (default) or 3.1.1 for brokers that only speak 3.1.1; both through aws-iot-device-sdk-v2. */
  protocol?: MqttProtocol;
}

export type MqttProtocol = 'mqtt5' | 'mqtt311';

export function parseProtocol(value: string): MqttProtocol {
  const v = value.trim().toLowerCase().replace(/^mqtt/, '').replace(/^v/, '');
  if (v === '' || v === '5') return 'mqtt5';
  if (v === '3.1.1' || v === '311' || v === '3') return 'mqtt311';
  throw new Error(`MQTT protocol "${value}" is not supported: expected 5 or 3.1.1`);
}

export interface BrokerAddress {
  host: string;
  port: number;
  tls: boolean;
}

export const DEFAULT_BROKER_URL = 'mqtt://127.0.0.1:1883';

export function parseBrokerUrl(url: string): BrokerAddress {
  let u: URL;
  try {
    u = new URL(url.trim() || DEFAULT_BROKER_URL);
  } catch {
    throw new Error(`broker URL "${url}" is not a URL: expected mqtt://host:port or mqtts://host:port`);
  }
  const scheme = u.protocol.replace(':', '').toLowerCase();
  const tls = scheme === 'mqtts' || scheme === 'ssl' || scheme === 'tls';
  if (!tls && scheme !== 'mqtt' && scheme !== 'tcp') {
    throw new Error(`broker URL scheme "${scheme}" is not supported: expected mqtt:// or mqtts://`);
  }
  if (u.username || u.password) throw new Error('put the broker user name and password in the connection credentials, not in the URL');
  const port = u.port ? Number(u.port) : tls ? 8883 : 1883;
  if (!(port >= 1 && port <= 65535)) throw new Error(`broker URL "${url}" has port ${u.port}: expected a port from 1 to 65535`);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (!host) throw new Error(`broker URL "${url}" has no host`);
  return { host, port, tls };
}

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'stopped';

type StateListener = (state: ConnectionState, error?: string) => void;

/** The part of each SDK client the transport needs. */
interface ClientAdapter {
  start(): void;
  publish(message: OutgoingMessage): Promise<void>;
  stop(): Promise<void>;
  /** The broker's announced maximum packet size (MQTT 5 CONNACK), when known. */
  maximumPacketSize?: number;
}

export type OutgoingMessage = Pick<SpooledMessage, 'topic' | 'payload' | 'qos' | 'expiresAt'>;

/** MQTT 5 PUBACK reason codes >= 128 are refusals, except "quota exceeded", which passes. */
const TRANSIENT_REASON_CODES = new Set([0x97]);

export class MqttTransport extends EventEmitter {
  readonly address: BrokerAddress;
  readonly protocol: MqttProtocol;
  state: ConnectionState = 'stopped';
  lastError?: string;
  private client?: ClientAdapter;
  /** The next attempt to set up TLS, after it failed. */
  private tlsRetry?: NodeJS.Timeout;
  private readonly tlsBackoff = new Backoff(1000, 30_000, 2);
  private readonly inFlight = new InFlightPublishes();

  constructor(private readonly options: MqttOptions) {
    super();
    this.address = parseBrokerUrl(options.url);
    this.protocol = options.protocol ?? 'mqtt5';
    if (Boolean(options.certFile) !== Boolean(options.keyFile)) {
      throw new Error('client certificate and private key files go together: set both or neither');
    }
  }

  get description(): string {
    return `${this.address.tls ? 'mqtts' : 'mqtt'}://${this.address.host}:${this.address.port}`;
  }

  private tlsContext(): io.ClientTlsContext | undefined {
    const { certFile, keyFile, caFile } = this.options;
    if (!this.address.tls) return undefined;
    const tlsOptions = certFile && keyFile
      ? io.TlsContextOptions.create_client_with_mtls_from_path(certFile, keyFile)
      : new io.TlsContextOptions();
    if (caFile) tlsOptions.override_default_trust_store_from_path(undefined, caFile);
    return new io.ClientTlsContext(tlsOptions);
  }

  start(): void {
    if (this.client || this.tlsRetry) return;
    let tlsCtx: io.ClientTlsContext | undefined;
    try {
      tlsCtx = this.tlsContext();
    } catch (err) {
      // The files may not be there yet (a provisioning script, a certificate rotation): a connection
      // failure like any other, retried, with results waiting in the spool meanwhile.
      this.lastError = `cannot set up TLS for ${this.description}: ${(err as Error).message} (check the certificate, key and CA file paths)`;
      this.setState('disconnected');
      this.tlsRetry = setTimeout(() => {
        this.tlsRetry = undefined;
        this.start();
      }, this.tlsBackoff.next());
      return;
    }
    this.tlsBackoff.reset();
    const onState: StateListener = (state, error) => {
      if (state === 'connected') this.lastError = undefined;
      else if (error) this.lastError = error;
      this.setState(state);
    };
    this.client = this.protocol === 'mqtt5'
      ? new Mqtt5Adapter(this.options, this.address, tlsCtx, onState)
      : new Mqtt311Adapter(this.options, this.address, tlsCtx, onState);
    this.setState('connecting');
    this.client.start();
  }

  /** The largest payload the broker takes on a topic: its maximum packet size less the PUBLISH overhead. */
  maxPayloadBytes(topic: string): number | undefined {
    const packet = this.client?.maximumPacketSize;
    return packet ? packet - Buffer.byteLength(topic) - 64 : undefined;
  }

  async publish(message: OutgoingMessage): Promise<void> {
    const client = this.client;
    if (!client) {
      throw new Error(this.tlsRetry ? `not connected to ${this.description}: ${this.lastError}` : `connection to ${this.description} is not started`);
    }
    if (this.state !== 'connected') {
      throw new Error(`not connected to ${this.description}${this.lastError ? `: ${this.lastError}` : ''}`);
    }
    await this.inFlight.track(message.topic, client.publish(message));
  }

  /** Stops the client and frees its native resources. */
  async stop(): Promise<void> {
    clearTimeout(this.tlsRetry);
    this.tlsRetry = undefined;
    this.tlsBackoff.reset();
    const client = this.client;
    this.client = undefined;
    if (!client) {
      this.setState('stopped'); // after a failed TLS set-up
      return;
    }
    await client.stop();
    this.inFlight.failAll(`the connection to ${this.description} was stopped first`);
    this.setState('stopped');
  }

  private setState(state: ConnectionState): void {
    if (this.state === state && state !== 'disconnected') return;
    this.state = state;
    this.emit('state', state, this.lastError);
  }
}

class Mqtt5Adapter implements ClientAdapter {
  private readonly client: mqtt5.Mqtt5Client;
  maximumPacketSize?: number;

  constructor(options: MqttOptions, address: BrokerAddress, tlsCtx: io.ClientTlsContext | undefined, onState: StateListener) {
    const connectProperties: mqtt5.ConnectPacket = {
      clientId: options.clientId,
      keepAliveIntervalSeconds: options.keepAliveSeconds ?? 30,
    };
    // The native client rejects keys that are present but undefined, so add credentials only when set.
    if (options.username) connectProperties.username = options.username;
    if (options.password) connectProperties.password = Buffer.from(options.password);
    this.client = new mqtt5.Mqtt5Client({
      hostName: address.host,
      port: address.port,
      ...(tlsCtx ? { tlsCtx } : {}),
      connectProperties,
      sessionBehavior: mqtt5.ClientSessionBehavior.RejoinPostSuccess,
      retryJitterMode: mqtt5.RetryJitterType.Full,
      minReconnectDelayMs: 500,
      maxReconnectDelayMs: 30_000,
      connackTimeoutMs: 10_000,
      ackTimeoutSeconds: options.ackTimeoutSeconds ?? 30,
      offlineQueueBehavior: mqtt5.ClientOperationQueueBehavior.FailQos0PublishOnDisconnect,
    });
    this.client.on('attemptingConnect', () => onState('connecting'));
    this.client.on('connectionSuccess', (event: mqtt5.ConnectionSuccessEvent) => {
      this.maximumPacketSize = event.settings?.maximumPacketSizeToServer;
      onState('connected');
    });
    this.client.on('connectionFailure', (event: mqtt5.ConnectionFailureEvent) => onState('disconnected', describeCrtError(event.error, event.connack?.reasonCode)));
    this.client.on('disconnection', (event: mqtt5.DisconnectionEvent) => onState('disconnected', describeCrtError(event.error)));
  }

  start(): void {
    this.client.start();
  }

  async publish({ topic, payload, qos, expiresAt }: OutgoingMessage): Promise<void> {
    const packet: mqtt5.PublishPacket = { topicName: topic, qos: qos === 1 ? mqtt5.QoS.AtLeastOnce : mqtt5.QoS.AtMostOnce, payload };
    // MQTT 5 message expiry: the broker also drops it unsent for subscribers that are away too long.
    if (expiresAt !== undefined) packet.messageExpiryIntervalSeconds = Math.max(1, Math.ceil((expiresAt - Date.now()) / 1000));
    let result: unknown;
    try {
      result = await this.client.publish(packet);
    } catch (err) {
      const text = describeCrtError(err) ?? String(err);
      // The client checks packets against the broker's limits before sending: no retry can pass.
      if (/VALIDATION|PACKET_TOO_LARGE|exceeds/i.test(text)) throw new RefusedError(`the publish to ${topic} breaks the broker's limits: ${text}`);
      throw new Error(text);
    }
    const puback = result as mqtt5.PubackPacket | undefined;
    if (puback && puback.reasonCode !== undefined && puback.reasonCode >= 128) {
      const text = `the broker refused the publish to ${topic}: reason code ${puback.reasonCode}${puback.reasonString ? ` (${puback.reasonString})` : ''}`;
      throw TRANSIENT_REASON_CODES.has(puback.reasonCode) ? new Error(text) : new RefusedError(text);
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 3000);
      client.once('stopped', () => {
        clearTimeout(timer);
        resolve();
      });
      try {
        client.stop();
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
    // Known upstream: a closed MQTT 5 client still holds three referenced native handles
    // (awslabs/aws-crt-nodejs#600), so a process that used one only ends through process.exit,
    // as Node-RED's shutdown does.
    client.close();
  }
}

/** MQTT 3.1.1: the SDK reconnects an established connection itself; the first connect is retried here. */
class Mqtt311Adapter implements ClientAdapter {
  private readonly connection: mqtt.MqttClientConnection;
  private retryTimer?: NodeJS.Timeout;
  private readonly backoff = new Backoff(500, 30_000, 2);
  private stopped = false;

  constructor(options: MqttOptions, address: BrokerAddress, tlsCtx: io.ClientTlsContext | undefined, private readonly onState: StateListener) {
    const config: mqtt.MqttConnectionConfig = {
      client_id: options.clientId,
      host_name: address.host,
      port: address.port,
      clean_session: false,
      keep_alive: options.keepAliveSeconds ?? 30,
      protocol_operation_timeout: (options.ackTimeoutSeconds ?? 30) * 1000,
      reconnect_min_sec: 1,
      reconnect_max_sec: 30,
      socket_options: new io.SocketOptions(io.SocketType.STREAM, io.SocketDomain.IPV4, 10_000),
      // Otherwise the SDK appends "?SDK=..." to the user name, which any broker but IoT Core rejects.
      disable_metrics: true,
    };
    if (tlsCtx) config.tls_ctx = tlsCtx;
    if (options.username) config.username = options.username;
    if (options.password) config.password = options.password;
    this.connection = new mqtt.MqttClient().new_connection(config);
    this.connection.on('connection_success', () => {
      this.backoff.reset();
      onState('connected');
    });
    this.connection.on('resume', () => onState('connected'));
    this.connection.on('interrupt', (error: unknown) => onState('disconnected', describeCrtError(error)));
    this.connection.on('connection_failure', (event: { error?: unknown }) => onState('disconnected', describeCrtError(event?.error)));
    this.connection.on('error', (error: unknown) => onState('disconnected', describeCrtError(error)));
  }

  start(): void {
    if (this.stopped) return;
    this.onState('connecting');
    this.connection.connect().catch((err: unknown) => {
      this.onState('disconnected', describeCrtError(err));
      if (this.stopped) return;
      this.retryTimer = setTimeout(() => this.start(), this.backoff.next());
    });
  }

  /** MQTT 3.1.1 has no message expiry and no refusal codes: the spool drops expired messages itself. */
  async publish({ topic, payload, qos }: OutgoingMessage): Promise<void> {
    await this.connection.publish(topic, payload, qos === 1 ? mqtt.QoS.AtLeastOnce : mqtt.QoS.AtMostOnce, false);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    // disconnect() also releases the native connection once it completes.
    await Promise.race([this.connection.disconnect().catch(() => undefined), new Promise((r) => setTimeout(r, 3000))]);
  }
}

export function describeCrtError(error: unknown, reasonCode?: number): string | undefined {
  if (!error) return undefined;
  const e = error as { error_name?: string; message?: string };
  let text = e.message || String(error);
  if (/ECONNREFUSED|CONNECTION_REFUSED/i.test(text + (e.error_name ?? ''))) text += ' (nothing listens at that host and port)';
  if (/DECODE_PROTOCOL_ERROR|UNSUPPORTED_PROTOCOL/i.test(text + (e.error_name ?? ''))) text += ' (the broker may only speak MQTT 3.1.1: set the protocol to 3.1.1)';
  if (reasonCode === 134 || reasonCode === 135) text += ' (the broker refused the user name, password or certificate)';
  return text;
}
