/**
 * One ONNX model served by a worker thread: load, run, reload (keeping the old session when the new
 * file is broken) and close. Plain module so tests drive it without Node-RED.
 */
import { EventEmitter } from 'events';
import { promises as fs } from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { describeModel, ModelDescription, readOnnxMetadataProps } from './onnx-metadata';
import type { SessionOptions, ValueInfo, WireTensor, WorkerRequest, WorkerResponse } from './worker-protocol';
import { TensorValue } from './tensor';

export interface ModelInfo extends ModelDescription {
  path: string;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  bytes: number;
  loadedAt: Date;
}

export interface RunResult {
  outputs: Record<string, TensorValue>;
  /** Time inside session.run on the worker. */
  ms: number;
}

interface Pending {
  resolve(value: WorkerResponse): void;
  reject(err: Error): void;
}

export class ModelRunner extends EventEmitter {
  private worker?: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private current?: ModelInfo;
  private closed = false;

  constructor(readonly modelPath: string, private readonly options: SessionOptions) {
    super();
  }

  get info(): ModelInfo | undefined {
    return this.current;
  }

  /** Loads (or reloads) the model file. On failure the previous session, if any, stays in service. */
  async load(): Promise<ModelInfo> {
    if (this.closed) throw new Error('model runner is closed');
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(this.modelPath);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new Error(e.code === 'ENOENT' ? `model file not found: ${this.modelPath}` : `cannot read model file ${this.modelPath}: ${e.message}`);
    }
    let description: ModelDescription;
    try {
      description = describeModel(readOnnxMetadataProps(bytes));
    } catch (err) {
      throw new Error(`${path.basename(this.modelPath)} is ${(err as Error).message}`);
    }
    const model = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let response: WorkerResponse;
    try {
      response = await this.request({ type: 'load', id: 0, model, options: this.options }, [model.buffer as ArrayBuffer]);
    } catch (err) {
      throw new Error(`onnxruntime could not load ${path.basename(this.modelPath)}: ${(err as Error).message}`);
    }
    if (response.type !== 'loaded') throw new Error('unexpected worker response');
    this.current = {
      ...description,
      path: this.modelPath,
      inputs: response.inputs,
      outputs: response.outputs,
      bytes: bytes.byteLength,
      loadedAt: new Date(),
    };
    return this.current;
  }

  async run(feeds: Record<string, TensorValue>): Promise<RunResult> {
    if (!this.current) throw new Error('the model is not loaded');
    const wire: Record<string, WireTensor> = {};
    for (const [name, t] of Object.entries(feeds)) wire[name] = { type: t.type, dims: t.dims, data: t.data };
    const response = await this.request({ type: 'run', id: 0, feeds: wire });
    if (response.type !== 'result') throw new Error('unexpected worker response');
    const outputs: Record<string, TensorValue> = {};
    for (const [name, t] of Object.entries(response.outputs)) outputs[name] = t as unknown as TensorValue;
    return { outputs, ms: response.ms };
  }

  /** Releases the session and stops the worker thread. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const worker = this.worker;
    this.worker = undefined;
    this.current = undefined;
    if (worker) {
      for (const p of this.pending.values()) p.reject(new Error('model closed'));
      this.pending.clear();
      await worker.terminate();
    }
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(path.join(__dirname, 'inference-worker.js'));
    worker.unref();
    worker.on('message', (response: WorkerResponse) => {
      const id = response.id;
      if (id === undefined) return;
      const waiting = this.pending.get(id);
      if (!waiting) return;
      this.pending.delete(id);
      if (response.type === 'error') waiting.reject(new Error(response.message));
      else waiting.resolve(response);
    });
    const fail = (err: Error) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      this.current = undefined; // the session died with the worker; the next load starts a new one
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      if (!this.closed) this.emit('crashed', err);
    };
    worker.on('error', (err) => fail(new Error(`inference worker failed: ${err.message}`)));
    worker.on('exit', (code) => fail(new Error(`inference worker exited with code ${code}`)));
    this.worker = worker;
    return worker;
  }

  private request(message: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerResponse> {
    const worker = this.ensureWorker();
    const id = this.nextId++;
    message.id = id;
    return new Promise<WorkerResponse>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage(message, transfer);
    });
  }
}
