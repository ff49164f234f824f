/** MQTT 5 publishing through aws-iot-device-sdk-v2 (AWS IoT Core, the Greengrass local broker, any broker). */
import { EventEmitter } from 'events';
import { io, mqtt5 } from 'aws-iot-device-sdk-v2';

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
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (!host) throw new Error(`broker URL "${url}" has no host`);
  return { host, port, tls };
}

export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'stopped';

export class MqttTransport extends EventEmitter {
  readonly address: BrokerAddress;
  state: ConnectionState = 'stopped';
  lastError?: string;
  private client?: mqtt5.Mqtt5Client;

  constructor(private readonly options: MqttOptions) {
    super();
    this.address = parseBrokerUrl(options.url);
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
    if (this.client) return;
    let tlsCtx: io.ClientTlsContext | undefined;
    try {
      tlsCtx = this.tlsContext();
    } catch (err) {
      throw new Error(`cannot set up TLS for ${this.description}: ${(err as Error).message} (check the certificate, key and CA file paths)`);
    }
    const client = new mqtt5.Mqtt5Client({
      hostName: this.address.host,
      port: this.address.port,
      tlsCtx,
      connectProperties: {
        clientId: this.options.clientId,
        keepAliveIntervalSeconds: this.options.keepAliveSeconds ?? 30,
        username: this.options.username || undefined,
        password: this.options.password ? Buffer.from(this.options.password) : undefined,
      },
      sessionBehavior: mqtt5.ClientSessionBehavior.RejoinPostSuccess,
      retryJitterMode: mqtt5.RetryJitterType.Full,
      minReconnectDelayMs: 500,
      maxReconnectDelayMs: 30_000,
      connackTimeoutMs: 10_000,
      ackTimeoutSeconds: this.options.ackTimeoutSeconds ?? 30,
      offlineQueueBehavior: mqtt5.ClientOperationQueueBehavior.FailQos0PublishOnDisconnect,
    });
    client.on('attemptingConnect', () => this.setState('connecting'));
    client.on('connectionSuccess', () => {
      this.lastError = undefined;
      this.setState('connected');
    });
    client.on('connectionFailure', (event: mqtt5.ConnectionFailureEvent) => {
      this.lastError = describeCrtError(event.error, event.connack?.reasonCode);
      this.setState('disconnected');
    });
    client.on('disconnection', (event: mqtt5.DisconnectionEvent) => {
      this.lastError = describeCrtError(event.error);
      this.setState('disconnected');
    });
    this.client = client;
    this.setState('connecting');
    client.start();
  }

  async publish(topic: string, payload: Buffer | string, qos: 0 | 1): Promise<void> {
    const client = this.client;
    if (!client) throw new Error(`connection to ${this.description} is not started`);
    if (this.state !== 'connected') {
      throw new Error(`not connected to ${this.description}${this.lastError ? `: ${this.lastError}` : ''}`);
    }
    const result = await client.publish({
      topicName: topic,
      qos: qos === 1 ? mqtt5.QoS.AtLeastOnce : mqtt5.QoS.AtMostOnce,
      payload,
    });
    const puback = result as mqtt5.PubackPacket | undefined;
    if (puback && puback.reasonCode !== undefined && puback.reasonCode >= 128) {
      throw new Error(`broker ${this.description} refused the publish to ${topic}: reason code ${puback.reasonCode}${puback.reasonString ? ` (${puback.reasonString})` : ''}`);
    }
  }

  /** Stops the client and frees its native resources. */
  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (!client) return;
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
    client.close();
    this.setState('stopped');
  }

  private setState(state: ConnectionState): void {
    if (this.state === state && state !== 'disconnected') return;
    this.state = state;
    this.emit('state', state, this.lastError);
  }
}

function describeCrtError(error: unknown, reasonCode?: number): string | undefined {
  if (!error) return undefined;
  const e = error as { error_name?: string; message?: string };
  let text = e.message || String(error);
  if (/ECONNREFUSED|CONNECTION_REFUSED/i.test(text + (e.error_name ?? ''))) text += ' (nothing listens at that host and port)';
  if (reasonCode === 134 || reasonCode === 135) text += ' (the broker refused the user name, password or certificate)';
  return text;
}
