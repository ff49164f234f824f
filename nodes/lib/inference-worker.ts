/**
 * Child process that owns the onnxruntime sessions of one model. It is a process, not a worker
 * thread, because onnxruntime-node's create and run are native calls that cannot be interrupted:
 * terminating a worker thread during one aborts the whole Node-RED process once the call returns,
 * whereas a process can always be killed. Started by ModelRunner with an IPC channel.
 */
import * as ort from 'onnxruntime-node';
import type { WorkerRequest, WorkerResponse, SessionOptions, ValueInfo } from './worker-protocol';

if (!process.send) throw new Error('inference-worker must be started by ModelRunner with an IPC channel');
const send = process.send.bind(process);

// Node-RED went away (even by SIGKILL): nothing will ever ask this process for anything again.
process.on('disconnect', () => process.exit(0));

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
  const created = await ort.InferenceSession.create(model, sessionOptions);
  const replaced = candidate;
  candidate = created;
  if (replaced) await replaced.release();
  return {
    type: 'prepared',
    id: 0,
    inputs: describeValues(created.inputNames, created.inputMetadata),
    outputs: describeValues(created.outputNames, created.outputMetadata),
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
      if (!serving) throw new Error('no model is loaded');
      const feeds: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(request.feeds)) feeds[name] = new ort.Tensor(t.type as ort.Tensor.Type, t.data as never, t.dims);
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
