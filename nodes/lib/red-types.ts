/** The slice of Node-RED's runtime API the nodes use (keeps @types/node-red out of the dependencies). */
export interface NodeMessage {
  [key: string]: unknown;
  _msgid?: string;
  payload?: unknown;
  topic?: string;
}

export type SendFunction = (msg: NodeMessage | (NodeMessage | NodeMessage[] | null)[] | null) => void;
export type DoneFunction = (err?: Error) => void;

export interface NodeStatus {
  fill?: 'red' | 'green' | 'yellow' | 'blue' | 'grey';
  shape?: 'ring' | 'dot';
  text?: string;
}

export interface Node {
  id: string;
  type: string;
  name?: string;
  credentials?: Record<string, string | undefined>;
  on(event: 'input', handler: (msg: NodeMessage, send: SendFunction, done: DoneFunction) => void | Promise<void>): void;
  on(event: 'close', handler: (removed: boolean, done: () => void) => void): void;
  send(msg: NodeMessage | (NodeMessage | NodeMessage[] | null)[] | null): void;
  status(status: NodeStatus | Record<string, never>): void;
  log(msg: unknown): void;
  warn(msg: unknown): void;
  error(err: unknown, msg?: NodeMessage): void;
  debug(msg: unknown): void;
}

export interface NodeDef {
  id: string;
  type: string;
  name?: string;
  [key: string]: unknown;
}

export interface NodeAPI {
  nodes: {
    createNode(node: Node, def: NodeDef): void;
    registerType(type: string, ctor: (this: Node, def: NodeDef) => void, opts?: { credentials?: Record<string, { type: 'text' | 'password' }>; settings?: Record<string, unknown> }): void;
    getNode(id: string): Node | null;
  };
  settings: { userDir?: string; [key: string]: unknown };
  util: {
    cloneMessage<T>(msg: T): T;
    getMessageProperty(msg: NodeMessage, expr: string): unknown;
    setMessageProperty(msg: NodeMessage, expr: string, value: unknown, createMissing?: boolean): boolean;
  };
  log: { info(m: string): void; warn(m: string): void; error(m: string): void };
  /** Node-RED's event bus (comms events among others); absent in some test stubs. */
  events?: {
    on(event: string, listener: (...args: any[]) => void): unknown;
    removeListener?(event: string, listener: (...args: any[]) => void): unknown;
    emit(event: string, ...args: unknown[]): unknown;
  };
}

/**
 * A text property. Node-RED replaces a property that is exactly ${VAR} with the variable's value but
 * leaves it as written when VAR is unset; that case means "not set" here, so node defaults apply.
 */
export function textSetting(value: unknown, env: NodeJS.ProcessEnv = process.env): string {
  if (value === undefined || value === null) return '';
  const text = String(value).trim();
  // Node-RED substitutes a property that is exactly ${NAME}; ${NAME:-default} is ours (shell-like):
  // the variable when set and not empty, else the default.
  const withDefault = /^\$\{(\w+):-([^}]*)\}$/.exec(text);
  if (withDefault) return (env[withDefault[1]] || withDefault[2]).trim();
  return /^\$\{[^}]+\}$/.test(text) ? '' : text;
}

/**
 * Numbers from the editor arrive as strings, or unset ${ENV} references (see textSetting). With
 * `name` (the setting's property name) the error says which setting is wrong.
 */
export function numberSetting(value: unknown, fallback: number, { min = -Infinity, max = Infinity, name }: { min?: number; max?: number; name?: string } = {}): number {
  value = typeof value === 'string' ? textSetting(value) : value;
  if (value === undefined || value === null || value === '') return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new Error(name
      ? `Expected ${name} to be a number from ${min} to ${max} but received ${JSON.stringify(value)}`
      : `expected a number between ${min} and ${max}, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** A setting that must be one of a few words; unset gives the fallback, anything else is refused. */
export function choiceSetting<T extends string>(value: unknown, allowed: readonly T[], fallback: T, name: string): T {
  const text = typeof value === 'string' ? textSetting(value) : value;
  if (text === undefined || text === null || text === '') return fallback;
  if (allowed.includes(text as T)) return text as T;
  throw new Error(`Expected ${name} to be one of ${allowed.join(', ')} but received ${JSON.stringify(value)}`);
}

/** What a value is, for "but received ..." in error messages: null, an array, a string ("..."), number 42. */
export function describeReceived(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return 'an array';
  if (Buffer.isBuffer(value)) return `a Buffer of ${value.length} bytes`;
  if (typeof value === 'string') return `a string (${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value)})`;
  if (typeof value === 'object') return 'an object';
  return `${typeof value} ${String(value)}`;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
