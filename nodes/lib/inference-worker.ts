/**
 * Child process that owns the onnxruntime sessions of one model. It is a process, not a worker
 * thread, because onnxruntime-node's create and run are native calls that cannot be interrupted:
 * terminating a worker thread during one aborts the whole Node-RED process once the call returns,
 * whereas a process can always be killed. Started by ModelRunner with an IPC channel.
 */
import * as net from 'net';
import * as ort from 'onnxruntime-node';
import { DATA_FRAME_HEADER_BYTES, DATA_PIPE_FD } from './worker-protocol';
import type { WorkerRequest, WorkerResponse, SessionOptions, ValueInfo, WireTensor, PipedTensor } from './worker-protocol';

if (!process.send) throw new Error('inference-worker must be started by ModelRunner with an IPC channel');
const send = process.send.bind(process);

// Node-RED went away (even by SIGKILL): nothing will ever ask this process for anything again.
process.on('disconnect', () => process.exit(0));

/**
 * Tensor bytes of run requests on the data pipe (see PipedTensor): frames are cut out of the stream
 * as they complete and wait, by request id, for their run message (or it waits for them).
 */
class DataFrames {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private readonly frames = new Map<number, Uint8Array[]>();
  private readonly waiting = new Map<number, { count: number; resolve: (frames: Uint8Array[]) => void }>();

  constructor(fd: number) {
    const pipe = new net.Socket({ fd, readable: true, writable: false });
    pipe.on('data', (chunk: Buffer) => this.onData(chunk));
    pipe.on('error', () => process.exit(1)); // the runner sees the exit and starts a fresh worker
    pipe.unref();
  }

  /** The `count` frames of request `id`, in order. */
  take(id: number, count: number): Promise<Uint8Array[]> {
    return new Promise((resolve) => {
      this.waiting.set(id, { count, resolve });
      this.settle(id);
    });
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.buffered < DATA_FRAME_HEADER_BYTES) return;
      const head = this.peek(DATA_FRAME_HEADER_BYTES);
      const id = head.readUInt32LE(0);
      const length = head.readUInt32LE(4);
      if (this.buffered < DATA_FRAME_HEADER_BYTES + length) return;
      this.consume(DATA_FRAME_HEADER_BYTES);
      // A fresh buffer per frame: aligned for any element type, and owned by the tensor made of it.
      const bytes = new Uint8Array(length);
      this.consume(length, bytes);
      const list = this.frames.get(id) ?? [];
      list.push(bytes);
      this.frames.set(id, list);
      this.settle(id);
    }
  }

  private settle(id: number): void {
    const waiter = this.waiting.get(id);
    const list = this.frames.get(id);
    if (!waiter || !list || list.length < waiter.count) return;
    this.waiting.delete(id);
    this.frames.delete(id);
    waiter.resolve(list);
  }

  /** The first `n` buffered bytes, without consuming them. */
  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0];
    return Buffer.concat(this.chunks, this.buffered).subarray(0, n);
  }

  /** Drops (or copies into `into`) the first `n` buffered bytes. */
  private consume(n: number, into?: Uint8Array): void {
    let done = 0;
    while (done < n) {
      const chunk = this.chunks[0];
      const take = Math.min(chunk.length, n - done);
      if (into) into.set(chunk.subarray(0, take), done);
      done += take;
      if (take === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(take);
    }
    this.buffered -= n;
  }
}

const dataFrames = process.argv.includes('--data-pipe') ? new DataFrames(DATA_PIPE_FD) : undefined;

const ELEMENT_BYTES: Record<string, number> = { float32: 4, uint8: 1, int8: 1, int32: 4, int64: 8, float64: 8 };
const TYPED: Record<string, new (buffer: ArrayBufferLike, offset: number, length: number) => ArrayBufferView> = {
  float32: Float32Array, uint8: Uint8Array, int8: Int8Array, int32: Int32Array, int64: BigInt64Array, float64: Float64Array,
};

/** The request's inputs as onnxruntime tensors, their bytes taken from the message or the data pipe. */
async function feedsOf(request: Extract<WorkerRequest, { type: 'run' }>): Promise<Record<string, ort.Tensor>> {
  const entries = Object.entries(request.feeds);
  const piped = entries.filter(([, t]) => 'piped' in t).length;
  const frames = piped ? await (dataFrames ?? failNoPipe()).take(request.id, piped) : [];
  const feeds: Record<string, ort.Tensor> = {};
  let next = 0;
  for (const [name, t] of entries) {
    let data: unknown;
    if ('piped' in t) {
      const bytes = frames[next++];
      const size = ELEMENT_BYTES[t.type];
      const Ctor = TYPED[t.type];
      if (!Ctor || bytes.byteLength !== t.piped || bytes.byteLength % size !== 0) throw new Error(`input "${name}": ${bytes.byteLength} bytes on the data pipe for a ${t.type} tensor of ${t.piped} bytes`);
      data = new Ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
    } else {
      data = (t as WireTensor).data;
    }
    feeds[name] = new ort.Tensor(t.type as ort.Tensor.Type, data as never, (t as WireTensor | PipedTensor).dims);
  }
  return feeds;
}

function failNoPipe(): never {
  throw new Error('a run sent its tensor on a data pipe this worker was not started with');
}

let serving: ort.InferenceSession | undefined;
let candidate: ort.InferenceSession | undefined;

function reply(message: WorkerResponse): void {
  send(message);
}

function describeValues(names: readonly string[], metadata: readonly ort.InferenceSession.ValueMetadata[] | undefined): ValueInfo[] {
  return names.map((name, i) => {
    const m = metadata?.[i] as (ort.InferenceSession.ValueMetadata & { type?: string; shape?: ReadonlyArray<number | string> }) | undefined;
    return {
      name,
      type: m && m.isTensor ? String(m.type) : undefined,
      shape: m && m.isTensor && m.shape ? m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : String(d))) : undefined,
    };
  });
}

async function prepare(model: Uint8Array, options: SessionOptions): Promise<WorkerResponse> {
  const providers = options.executionProviders.length ? options.executionProviders : ['cpu'];
  const sessionOptions: ort.InferenceSession.SessionOptions = { executionProviders: providers, graphOptimizationLevel: 'all' };
  // 0 means "let onnxruntime choose" (one thread per core); onnxruntime rejects undefined.
  if (options.intraOpNumThreads > 0) sessionOptions.intraOpNumThreads = options.intraOpNumThreads;
  if (options.interOpNumThreads > 0) sessionOptions.interOpNumThreads = options.interOpNumThreads;
  if (!options.allowSpinning) {
    // Session config keys (onnxruntime_session_options_config_keys.h), passed through by the Node binding.
    sessionOptions.extra = { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } };
  }
  let created: ort.InferenceSession;
  let warning: string | undefined;
  try {
    created = await ort.InferenceSession.create(model, sessionOptions);
  } catch (err) {
    const wanted = providers.filter((p) => p !== 'cpu');
    if (!wanted.length) throw err;
    // A GPU provider whose libraries this device lacks (the package bundles only the CPU one on
    // most platforms): the model still runs, on the CPU, as the setting promises. A model that
    // cannot load at all fails here again, with the CPU's error.
    created = await ort.InferenceSession.create(model, { ...sessionOptions, executionProviders: ['cpu'] });
    warning = `the ${wanted.join(', ')} execution provider is not available here (${String((err as Error).message).split('\n')[0]}): the model runs on the CPU`;
  }
  const replaced = candidate;
  candidate = created;
  if (replaced) await replaced.release();
  return {
    type: 'prepared',
    id: 0,
    inputs: describeValues(created.inputNames, created.inputMetadata),
    outputs: describeValues(created.outputNames, created.outputMetadata),
    warning,
  };
}

async function handle(request: WorkerRequest): Promise<WorkerResponse> {
  switch (request.type) {
    case 'prepare':
      return prepare(request.model, request.options);
    case 'commit': {
      if (!candidate) throw new Error('no prepared model to commit');
      const previous = serving;
      serving = candidate;
      candidate = undefined;
      if (previous) await previous.release();
      return { type: 'committed', id: 0 };
    }
    case 'discard': {
      const dropped = candidate;
      candidate = undefined;
      if (dropped) await dropped.release();
      return { type: 'discarded', id: 0 };
    }
    case 'run': {
      const feeds = await feedsOf(request); // first, so that its piped bytes are taken in any case
      if (!serving) throw new Error('no model is loaded');
      const started = performance.now();
      const results = await serving.run(feeds);
      const ms = performance.now() - started;
      const outputs: Record<string, { type: string; dims: number[]; data: ArrayBufferView }> = {};
      for (const [name, value] of Object.entries(results)) outputs[name] = { type: value.type, dims: [...value.dims], data: value.data as ArrayBufferView };
      return { type: 'result', id: 0, outputs, ms };
    }
  }
}

process.on('message', (request: WorkerRequest) => {
  handle(request).then(
    (response) => reply({ ...response, id: request.id }),
    (err) => reply({ type: 'error', id: request.id, message: (err as Error)?.message || String(err) }),
  );
});
