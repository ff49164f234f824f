/**
 * Greengrass IPC through aws-iot-device-sdk-v2's greengrasscoreipc client: PublishToTopic (local
 * pub/sub) and PublishToIoTCore, over the nucleus's socket with the token it gives the component.
 */
import { EventEmitter } from 'events';
import { eventstream_rpc, greengrasscoreipc, io } from 'aws-iot-device-sdk-v2';
import { Backoff } from '../lib/backoff';
import { InFlightPublishes } from './in-flight';
import type { ConnectionState, OutgoingMessage } from './mqtt-transport';
import { IOT_CORE_MAX_PAYLOAD_BYTES } from './outgoing';
import { RefusedError } from './spool';

export const SOCKET_ENV = 'AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT';
export const TOKEN_ENV = 'SVCUID';

export type IpcDestination = 'local' | 'iotcore';

/** A request the nucleus has not answered by then counts as a lost connection (the SDK has no timeout). */
export const IPC_REQUEST_TIMEOUT_MS = 10_000;

/** True when this process runs as a Greengrass component (the nucleus set the IPC variables). */
export function runningAsComponent(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env[SOCKET_ENV] && env[TOKEN_ENV]);
}

/** auto: IPC when running as a Greengrass component, MQTT otherwise. */
export function chooseTransport(setting: string, env: NodeJS.ProcessEnv = process.env): 'ipc' | 'mqtt' {
  const value = setting.trim().toLowerCase() || 'auto';
  if (value === 'ipc' || value === 'mqtt') return value;
  if (value === 'auto') return runningAsComponent(env) ? 'ipc' : 'mqtt';
  throw new Error(`transport "${setting}" is not one of auto, ipc, mqtt`);
}

export class IpcTransport extends EventEmitter {
  state: ConnectionState = 'stopped';
  lastError?: string;
  readonly description: string;
  private client?: greengrasscoreipc.Client;
  private retryTimer?: NodeJS.Timeout;
  private readonly backoff = new Backoff(500, 15_000);
  private readonly inFlight = new InFlightPublishes();
  private stopped = true;
  /** Connections the nucleus closed during the CONNECT handshake, in a row. */
  private handshakeCloses = 0;

  constructor(private readonly socketPath = process.env[SOCKET_ENV] ?? '', private readonly token = process.env[TOKEN_ENV] ?? '') {
    super();
    if (!socketPath) throw new Error(`Greengrass IPC needs ${SOCKET_ENV} (set by the nucleus for components): run this flow as a Greengrass component, or choose MQTT`);
    this.description = `Greengrass IPC (${socketPath})`;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    this.setState('connecting');
    const token = this.token;
    // A client connects once; every reconnect uses a new one.
    const client = greengrasscoreipc.createClient({
      hostName: this.socketPath,
      port: 0,
      socketOptions: new io.SocketOptions(io.SocketType.STREAM, io.SocketDomain.LOCAL, 5000),
      connectTransform: async (options) => {
        options.message.payload = JSON.stringify({ authToken: token });
        return options.message;
      },
    });
    this.client = client;
    client.on('disconnection', (event) => {
      if (this.client !== client) return;
      this.client = undefined;
      // The SDK: a client must always be closed, or its native resources leak.
      client.close().catch(() => undefined);
      this.lastError = event?.reason ? String(event.reason) : 'the nucleus closed the IPC connection';
      this.setState('disconnected');
      this.scheduleReconnect();
    });
    client.connect().then(
      () => {
        if (this.client !== client) return;
        this.backoff.reset();
        this.handshakeCloses = 0;
        this.lastError = undefined;
        this.setState('connected');
      },
      (err: Error & { type?: unknown }) => {
        if (this.client !== client) return;
        this.client = undefined;
        // The nucleus answered the CONNECT without accepting it: the token (SVCUID) is not valid, and
        // retrying with it cannot help; the nucleus gives a fresh one when it restarts the component.
        // Its IPC server closes the connection right after that answer, so the client often reports the
        // close instead: twice in a row during the handshake counts as a refusal too.
        const closedInHandshake = err?.type === eventstream_rpc.RpcErrorType.NetworkError && /connection closed/i.test(err.message);
        this.handshakeCloses = closedInHandshake ? this.handshakeCloses + 1 : 0;
        const refused = err?.type === eventstream_rpc.RpcErrorType.HandshakeError || this.handshakeCloses >= 2;
        this.lastError = refused
          ? `the nucleus refused the component's IPC token (${err.message})`
          : `${err.message}${/refused|ENOENT|no such file/i.test(err.message) ? ' (is the nucleus running?)' : ''}`;
        this.setState('disconnected');
        client.close().catch(() => undefined);
        if (refused) this.emit('rejected', this.lastError);
        this.scheduleReconnect();
      },
    );
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connect();
    }, this.backoff.next());
  }

  maxPayloadBytes(_topic: string, destination?: string): number | undefined {
    return destination === 'iotcore' ? IOT_CORE_MAX_PAYLOAD_BYTES : undefined;
  }

  async publish({ topic, payload, qos, destination }: OutgoingMessage & { destination?: string }): Promise<void> {
    const client = this.client;
    if (!client || this.state !== 'connected') {
      throw new Error(`not connected to ${this.description}${this.lastError ? `: ${this.lastError}` : ''}`);
    }
    const operation = destination === 'iotcore' ? 'PublishToIoTCore' : 'PublishToTopic';
    let request: Promise<unknown>;
    if (destination === 'iotcore') {
      request = client.publishToIoTCore({
        topicName: topic,
        qos: qos === 1 ? greengrasscoreipc.model.QOS.AT_LEAST_ONCE : greengrasscoreipc.model.QOS.AT_MOST_ONCE,
        payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
      });
    } else {
      // The nucleus's JsonMessage.message is a map: only JSON objects go as JSON, the rest as bytes.
      const json = typeof payload === 'string' ? tryParseJson(payload) : undefined;
      const isObject = json !== null && typeof json === 'object' && !Array.isArray(json);
      request = client.publishToTopic({
        topic,
        publishMessage: isObject ? { jsonMessage: { message: json } } : { binaryMessage: { message: payload } },
      });
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`the nucleus did not answer ${operation} ${topic} within ${IPC_REQUEST_TIMEOUT_MS / 1000} s`)), IPC_REQUEST_TIMEOUT_MS);
    });
    try {
      await this.inFlight.track(topic, Promise.race([request, timeout]));
    } catch (err) {
      if (err instanceof Error && /did not answer/.test(err.message)) {
        request.catch(() => undefined);
        this.dropClient(client, err.message);
        throw err;
      }
      const text = `${operation} ${topic} failed: ${describeIpcError(err)}`;
      // Only a lost connection is worth retrying as such. Anything else is the nucleus's answer to this
      // message: its modelled errors (UnauthorizedError, InvalidArgumentsError, ServiceError), an error
      // shape the SDK's model does not list for the operation (PublishToTopic's InvalidArgumentsError),
      // or "InternalServerError" for a request it cannot read. The spool sets those aside after 3 tries.
      const type = (err as { type?: unknown })?.type;
      const transient = type === eventstream_rpc.RpcErrorType.NetworkError || type === eventstream_rpc.RpcErrorType.InterruptionError
        || type === eventstream_rpc.RpcErrorType.ClientStateError || type === undefined;
      throw transient ? new Error(text) : new RefusedError(text);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Gives up on a client that stopped answering: close it and connect afresh. */
  private dropClient(client: greengrasscoreipc.Client, reason: string): void {
    if (this.client !== client) return;
    this.client = undefined;
    this.lastError = reason;
    client.close().catch(() => undefined);
    this.setState('disconnected');
    this.scheduleReconnect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const client = this.client;
    this.client = undefined;
    if (client) await client.close().catch(() => undefined);
    this.inFlight.failAll(`the connection to ${this.description} was stopped first`);
    this.setState('stopped');
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    this.emit('state', state, this.lastError);
  }
}

function tryParseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function describeIpcError(err: unknown): string {
  const e = err as { message?: string; serviceError?: { message?: string } };
  const detail = e.serviceError?.message ?? e.message ?? String(err);
  return /unauthori[sz]ed|not authorized|access/i.test(detail)
    ? `${detail} (the component's recipe must allow this topic in accessControl)`
    : detail;
}
