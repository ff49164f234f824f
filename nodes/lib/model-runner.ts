/**
 * One ONNX model served by an inference worker (a child process, see inference-worker.ts): load,
 * check-then-swap reload, run with a timeout, restart after a crash, close. Plain module so tests
 * drive it without Node-RED.
 *
 * Every request goes through one chain, so the worker does one thing at a time and a run that
 * times out is the only one lost when its worker is replaced: the runs queued behind it go to the
 * fresh worker.
 */
import { ChildProcess, fork } from 'child_process';
import type { Socket } from 'net';
import { EventEmitter } from 'events';
import { promises as fs } from 'fs';
import * as path from 'path';
import { Backoff } from './backoff';
import { describeModel, ModelDescription, readOnnxMetadataProps } from './onnx-metadata';
import { DATA_FRAME_HEADER_BYTES, DATA_PIPE_FD } from './worker-protocol';
import type { PipedTensor, SessionOptions, ValueInfo, WireTensor, WorkerRequest, WorkerResponse } from './worker-protocol';
import { FeedTensor, TensorData, TensorValue } from './tensor';

/**
 * Tensors go to the worker on a pipe of their own (see PipedTensor), written straight from their
 * memory. Not on Windows, where a child cannot open an inherited pipe by its descriptor number; there
 * they travel inside the IPC message.
 */
const USE_DATA_PIPE = process.platform !== 'win32';

export interface ModelInfo extends ModelDescription {
  path: string;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  bytes: number;
  loadedAt: Date;
}

export interface RunResult {
  outputs: Record<string, TensorValue>;
  /** Time inside session.run in the worker. */
  ms: number;
}

export interface RunnerOptions {
  session: SessionOptions;
  /** A run taking longer fails and its worker is replaced. */
  runTimeoutMs?: number;
  /** Waits before restarting a crashed worker: doubles from the first to the second after each crash. */
  crashRestartDelayMs?: [number, number];
}

/** Called with the new model's description before it replaces the serving one; throwing refuses it. */
export type ModelCheck = (candidate: ModelInfo, serving: ModelInfo | undefined) => void | Promise<void>;

export const DEFAULT_RUN_TIMEOUT_MS = 10_000;

let liveWorkers = 0;
/** Inference worker processes started by any runner that have not exited yet. */
export function liveWorkerCount(): number {
  return liveWorkers;
}

export class RunnerClosedError extends Error {
  constructor() {
    super('the model was closed (redeployed or stopped) before it finished');
  }
}

class RunTimeoutError extends Error {}

/** One worker process and its outstanding requests. */
class WorkerProcess {
  readonly child: ChildProcess;
  /** The data pipe to the worker, when it has one. */
  private readonly data?: Socket;
  readonly startedAt = Date.now();
  /** Resolves once the process has exited, for whatever reason. */
  readonly exited: Promise<void>;
  private readonly pending = new Map<number, { resolve(r: WorkerResponse): void; reject(e: Error): void }>();
  private nextId = 1;
  private killedOnPurpose = false;

  constructor(onUnexpectedExit: (err: Error) => void) {
    // execArgv: [] keeps the parent's flags (--inspect, test runner options) out of the worker.
    this.child = fork(path.join(__dirname, 'inference-worker.js'), USE_DATA_PIPE ? ['--data-pipe'] : [], {
      serialization: 'advanced',
      execArgv: [],
      // fd 3 the IPC channel, fd 4 (DATA_PIPE_FD) the data pipe.
      stdio: USE_DATA_PIPE ? ['ignore', 'inherit', 'inherit', 'ipc', 'pipe'] : ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    if (USE_DATA_PIPE) {
      const data = this.child.stdio[DATA_PIPE_FD] as Socket | null;
      if (data) {
        // A broken pipe means the worker is gone: its exit reports that, and fails what waits.
        data.on('error', () => undefined);
        data.unref(); // pending writes and requests keep the process alive, not the pipe itself
        this.data = data;
      }
    }
    liveWorkers++;
    this.keepProcessAlive(false);
    this.child.on('message', (response: WorkerResponse) => {
      const waiting = this.pending.get(response.id);
      if (!waiting) return; // the answer to a request that already timed out
      this.pending.delete(response.id);
      this.keepProcessAlive(this.pending.size > 0);
      if (response.type === 'error') waiting.reject(new Error(response.message));
      else waiting.resolve(response);
    });
    this.exited = new Promise((resolve) => {
      let finished = false;
      const finish = (err: Error) => {
        if (finished) return;
        finished = true;
        liveWorkers--;
        this.rejectAll(err);
        if (!this.killedOnPurpose) onUnexpectedExit(err);
        resolve();
      };
      this.child.once('exit', (code, signal) => finish(new Error(`the inference worker stopped unexpectedly (${signal ? `signal ${signal}` : `exit code ${code}`})`)));
      // 'error' without 'exit' means the process could not be started at all.
      this.child.on('error', (err) => { if (this.child.pid === undefined) finish(new Error(`the inference worker could not start: ${err.message}`)); });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** True when tensors can go on the data pipe. */
  get hasDataPipe(): boolean {
    return this.data !== undefined;
  }

  /**
   * Sends `message`; `piped` holds, per PipedTensor of the message in order, the pieces of its bytes
   * to write on the data pipe.
   */
  request(message: WorkerRequest, timeoutMs?: number, piped: ArrayBufferView[][] = []): Promise<WorkerResponse> {
    const id = this.nextId++;
    message.id = id;
    return new Promise<WorkerResponse>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = <T>(fn: (v: T) => void) => (v: T) => { clearTimeout(timer); fn(v); };
      this.pending.set(id, { resolve: settle(resolve), reject: settle(reject) });
      this.keepProcessAlive(true);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.pending.delete(id);
          this.keepProcessAlive(this.pending.size > 0);
          reject(new RunTimeoutError(`no answer within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      const failToSend = (err: Error) => {
        const waiting = this.pending.get(id);
        this.pending.delete(id);
        this.keepProcessAlive(this.pending.size > 0);
        waiting?.reject(new Error(`cannot reach the inference worker: ${err.message}`));
      };
      try {
        this.child.send(message, (err) => { if (err) failToSend(err); });
        if (piped.length) this.writeData(id, piped);
      } catch (err) {
        failToSend(err as Error); // e.g. a value the IPC serialiser cannot copy
      }
    });
  }

  /** Frames [id u32][length u32] + bytes on the data pipe, straight from the tensors' memory. */
  private writeData(id: number, piped: ArrayBufferView[][]): void {
    const data = this.data;
    if (!data) throw new Error('this inference worker has no data pipe');
    data.cork();
    for (const pieces of piped) {
      const head = Buffer.allocUnsafe(DATA_FRAME_HEADER_BYTES);
      head.writeUInt32LE(id, 0);
      head.writeUInt32LE(pieces.reduce((sum, p) => sum + p.byteLength, 0), 4);
      data.write(head);
      for (const p of pieces) if (p.byteLength) data.write(new Uint8Array(p.buffer, p.byteOffset, p.byteLength));
    }
    data.uncork();
  }

  /**
   * An idle worker must not keep Node-RED (or a script) running on its own; one with work in hand
   * must, or whoever awaits the answer would be left hanging when nothing else is scheduled.
   */
  private keepProcessAlive(alive: boolean): void {
    const channel = (this.child as unknown as { channel?: { ref(): void; unref(): void } }).channel;
    if (alive) {
      this.child.ref();
      channel?.ref();
    } else {
      this.child.unref();
      channel?.unref();
    }
  }

  /** SIGKILL: the worker holds no state worth saving and may be stuck in native code. */
  kill(reason: Error): Promise<void> {
    this.killedOnPurpose = true;
    this.rejectAll(reason);
    this.child.ref(); // until it has exited, so close() resolves
    this.data?.destroy();
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    return this.exited;
  }

  private rejectAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    if (!this.killedOnPurpose) this.keepProcessAlive(false);
  }
}

/** The most bytes one data pipe frame can announce. */
const MAX_FRAME_BYTES = 0xffffffff;

/** The run message's inputs, and the pieces to write on the data pipe for those that go there (exported for tests). */
export function wireFeeds(feeds: Record<string, FeedTensor>, dataPipe: boolean): { wire: Record<string, WireTensor | PipedTensor>; piped: ArrayBufferView[][] } {
  const wire: Record<string, WireTensor | PipedTensor> = {};
  const piped: ArrayBufferView[][] = [];
  for (const [name, t] of Object.entries(feeds)) {
    const pieces: TensorData[] = 'rows' in t ? t.rows : [t.data];
    const bytes = pieces.reduce((sum, p) => sum + p.byteLength, 0);
    if (dataPipe && bytes <= MAX_FRAME_BYTES) {
      wire[name] = { type: t.type, dims: t.dims, piped: bytes };
      piped.push(pieces);
      continue;
    }
    let data: TensorData;
    if (pieces.length === 1) {
      // A view into a larger buffer would send the whole buffer to the worker.
      const d = pieces[0];
      data = d.byteOffset === 0 && d.byteLength === d.buffer.byteLength ? d : (d.slice() as TensorData);
    } else {
      const joined = new Uint8Array(bytes);
      let at = 0;
      for (const p of pieces) {
        joined.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), at);
        at += p.byteLength;
      }
      const Ctor = pieces[0].constructor as unknown as { new (buffer: ArrayBuffer, offset: number, length: number): TensorData; BYTES_PER_ELEMENT: number };
      data = new Ctor(joined.buffer, 0, bytes / Ctor.BYTES_PER_ELEMENT);
    }
    wire[name] = { type: t.type, dims: t.dims, data };
  }
  return { wire, piped };
}

export class ModelRunner extends EventEmitter {
  private worker?: WorkerProcess;
  /** The model the worker serves, kept so a replaced or crashed worker can load it again. */
  private serving?: { info: ModelInfo; bytes: Uint8Array };
  private chain: Promise<unknown> = Promise.resolve();
  /** Set while a fresh worker is being started and given the serving model. */
  private restarting?: Promise<WorkerProcess>;
  private restartTimer?: { timer: NodeJS.Timeout; cancel(): void };
  private readonly crashBackoff: Backoff;
  private readonly longestRestartDelayMs: number;
  private closed = false;
  readonly runTimeoutMs: number;

  constructor(readonly modelPath: string, private readonly options: RunnerOptions) {
    super();
    this.runTimeoutMs = options.runTimeoutMs ?? DEFAULT_RUN_TIMEOUT_MS;
    const [minMs, maxMs] = options.crashRestartDelayMs ?? [500, 30_000];
    this.crashBackoff = new Backoff(minMs, maxMs, 2);
    this.longestRestartDelayMs = maxMs;
  }

  get info(): ModelInfo | undefined {
    return this.serving?.info;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The worker's process id, for diagnostics and tests. */
  get workerPid(): number | undefined {
    return this.worker?.pid;
  }

  /**
   * Loads (or reloads) the model file. `check` sees the new model before it serves; when the file
   * cannot be read, loaded or passes no check, the previous model, if any, stays in service.
   */
  async load(check?: ModelCheck): Promise<ModelInfo> {
    this.throwIfClosed();
    const file = path.basename(this.modelPath);
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(this.modelPath);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new Error(e.code === 'ENOENT' ? `model file not found: ${this.modelPath}` : `cannot read model file ${this.modelPath}: ${e.message}`);
    }
    this.throwIfClosed();
    let description: ModelDescription;
    try {
      description = describeModel(readOnnxMetadataProps(bytes));
    } catch (err) {
      throw new Error(`${file} is ${(err as Error).message}`);
    }
    const model = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return this.exclusively(async () => {
      const worker = await this.readyWorker(false);
      let prepared: WorkerResponse;
      try {
        prepared = await worker.request({ type: 'prepare', id: 0, model, options: this.options.session });
      } catch (err) {
        this.throwIfClosed();
        throw new Error(`onnxruntime could not load ${file}: ${(err as Error).message}`);
      }
      this.throwIfClosed();
      if (prepared.type !== 'prepared') throw new Error(`unexpected answer from the inference worker: ${prepared.type}`);
      const info: ModelInfo = {
        ...description, path: this.modelPath, inputs: prepared.inputs, outputs: prepared.outputs, bytes: bytes.byteLength, loadedAt: new Date(),
        warnings: prepared.warning ? [...description.warnings, prepared.warning] : description.warnings,
      };
      try {
        await check?.(info, this.serving?.info);
      } catch (err) {
        await worker.request({ type: 'discard', id: 0 }).catch(() => undefined);
        this.throwIfClosed();
        throw err;
      }
      this.throwIfClosed();
      await worker.request({ type: 'commit', id: 0 });
      this.throwIfClosed();
      this.serving = { info, bytes: model };
      return info;
    });
  }

  /** Runs the model; an input given as rows (a batch) runs as one tensor of those rows. */
  async run(feeds: Record<string, FeedTensor>): Promise<RunResult> {
    this.throwIfClosed();
    if (!this.serving) throw new Error('the model is not loaded');
    return this.exclusively(async () => {
      const worker = await this.readyWorker(true);
      const { wire, piped } = wireFeeds(feeds, worker.hasDataPipe);
      let response: WorkerResponse;
      try {
        response = await worker.request({ type: 'run', id: 0, feeds: wire }, this.runTimeoutMs, piped);
      } catch (err) {
        this.throwIfClosed();
        if (err instanceof RunTimeoutError) {
          this.replaceWorker(worker, 0, `a run took longer than ${this.runTimeoutMs} ms`);
          throw new Error(`inference did not finish within the run timeout (ml-model setting "Run timeout": ${this.runTimeoutMs} ms); the inference worker was restarted`);
        }
        if (this.worker !== worker) {
          throw new Error(`${(err as Error).message} during this inference; it will be restarted`);
        }
        throw err; // onnxruntime refused this input; the worker is fine
      }
      if (response.type !== 'result') throw new Error(`unexpected answer from the inference worker: ${response.type}`);
      const outputs: Record<string, TensorValue> = {};
      for (const [name, t] of Object.entries(response.outputs)) outputs[name] = t as unknown as TensorValue;
      return { outputs, ms: response.ms };
    });
  }

  /** Stops the worker and every timer; a closed runner never starts a worker again. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.restartTimer?.cancel();
    this.serving = undefined;
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.kill(new RunnerClosedError());
  }

  /** Runs `step` after every request made before it has finished. */
  private exclusively<T>(step: () => Promise<T>): Promise<T> {
    const result = this.chain.then(step);
    this.chain = result.catch(() => undefined);
    return result;
  }

  private throwIfClosed(): void {
    if (this.closed) throw new RunnerClosedError();
  }

  /** The worker to send to; with `needsModel`, one that serves the model (waiting for a restart). */
  private async readyWorker(needsModel: boolean): Promise<WorkerProcess> {
    this.throwIfClosed();
    if (this.restarting) return this.restarting;
    if (this.worker) return this.worker;
    if (needsModel) return this.restartAfter(this.crashBackoff.next(), 'the previous restart failed');
    return (this.worker = this.spawn());
  }

  private spawn(): WorkerProcess {
    this.throwIfClosed();
    const worker: WorkerProcess = new WorkerProcess((err) => this.onCrash(worker, err));
    return worker;
  }

  private onCrash(worker: WorkerProcess, err: Error): void {
    if (this.worker !== worker || this.closed) return;
    this.worker = undefined;
    if (!this.serving) return; // nothing to restore; the next load starts a worker
    // Only a worker that stayed up for the longest wait counts as recovered; one that dies after
    // every run keeps the growing wait.
    if (Date.now() - worker.startedAt > this.longestRestartDelayMs) this.crashBackoff.reset();
    const delayMs = this.crashBackoff.next();
    this.emit('worker-crashed', err, delayMs);
    this.restartAfter(delayMs, err.message).catch(() => undefined); // runs waiting for it report the failure
  }

  private replaceWorker(worker: WorkerProcess, delayMs: number, reason: string): void {
    if (this.worker === worker) this.worker = undefined;
    worker.kill(new Error(`the inference worker was replaced: ${reason}`)).catch(() => undefined);
    this.emit('worker-replaced', reason);
    this.restartAfter(delayMs, reason).catch(() => undefined);
  }

  /** Starts a fresh worker after `delayMs` and gives it the serving model. */
  private restartAfter(delayMs: number, reason: string): Promise<WorkerProcess> {
    if (this.restarting) return this.restarting;
    const serving = this.serving;
    let worker: WorkerProcess | undefined;
    // Deferred by one tick so `restarting` is set before anything inside can fail.
    const attempt: Promise<WorkerProcess> = Promise.resolve().then(async () => {
      try {
        if (delayMs > 0) await this.wait(delayMs);
        if (!serving) throw new Error('no model to restore');
        worker = this.worker = this.spawn();
        // A copy: the bytes stay here for the next restart.
        const prepared = await worker.request({ type: 'prepare', id: 0, model: serving.bytes, options: this.options.session });
        if (prepared.type !== 'prepared') throw new Error(`unexpected answer from the inference worker: ${prepared.type}`);
        await worker.request({ type: 'commit', id: 0 });
        this.throwIfClosed();
        this.emit('worker-restarted', reason);
        return worker;
      } catch (err) {
        if (worker && this.worker === worker) {
          // A worker without the model must not take runs; the next run tries again after a back-off.
          this.worker = undefined;
          await worker.kill(err as Error);
        }
        if (this.closed) throw new RunnerClosedError();
        throw new Error(`the inference worker could not be restarted (${reason}): ${(err as Error).message}`);
      } finally {
        if (this.restarting === attempt) this.restarting = undefined;
      }
    });
    this.restarting = attempt;
    return attempt;
  }

  private wait(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.restartTimer = undefined; resolve(); }, ms);
      this.restartTimer = { timer, cancel: () => { clearTimeout(timer); this.restartTimer = undefined; reject(new RunnerClosedError()); } };
    });
  }
}
