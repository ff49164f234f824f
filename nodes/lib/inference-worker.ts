/**
 * Worker thread that owns one onnxruntime session. InferenceSession.run in onnxruntime-node is a
 * synchronous native call, so it runs here and the Node-RED event loop stays free.
 */
import { parentPort } from 'worker_threads';
import * as ort from 'onnxruntime-node';
import type { WorkerRequest, WorkerResponse, SessionOptions, ValueInfo } from './worker-protocol';

if (!parentPort) throw new Error('inference-worker must run as a worker thread');
const port = parentPort;

let session: ort.InferenceSession | undefined;

function reply(message: WorkerResponse, transfer: ArrayBuffer[] = []): void {
  port.postMessage(message, transfer);
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

async function load(model: Uint8Array, options: SessionOptions): Promise<WorkerResponse> {
  const providers = options.executionProviders.length ? options.executionProviders : ['cpu'];
  const sessionOptions: ort.InferenceSession.SessionOptions = { executionProviders: providers, graphOptimizationLevel: 'all' };
  // 0 means "let onnxruntime choose" (one thread per core); onnxruntime rejects undefined.
  if (options.intraOpNumThreads > 0) sessionOptions.intraOpNumThreads = options.intraOpNumThreads;
  if (options.interOpNumThreads > 0) sessionOptions.interOpNumThreads = options.interOpNumThreads;
  const created = await ort.InferenceSession.create(model, sessionOptions);
  const previous = session;
  session = created;
  // Only release the old session once the new one is known to work.
  if (previous) await previous.release();
  return {
    type: 'loaded',
    inputs: describeValues(created.inputNames, created.inputMetadata),
    outputs: describeValues(created.outputNames, created.outputMetadata),
  };
}

port.on('message', async (request: WorkerRequest) => {
  const id = request.id;
  try {
    if (request.type === 'load') {
      reply({ ...(await load(request.model, request.options)), id });
    } else if (request.type === 'run') {
      if (!session) throw new Error('no model is loaded');
      const feeds: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(request.feeds)) feeds[name] = new ort.Tensor(t.type as ort.Tensor.Type, t.data as never, t.dims);
      const started = performance.now();
      const results = await session.run(feeds);
      const ms = performance.now() - started;
      const outputs: Record<string, { type: string; dims: number[]; data: ArrayBufferView }> = {};
      const transfer: ArrayBuffer[] = [];
      for (const [name, value] of Object.entries(results)) {
        const data = value.data as ArrayBufferView;
        outputs[name] = { type: value.type, dims: [...value.dims], data };
        if (data.buffer instanceof ArrayBuffer) transfer.push(data.buffer);
      }
      reply({ type: 'result', id, outputs, ms }, transfer);
    } else if (request.type === 'release') {
      if (session) await session.release();
      session = undefined;
      reply({ type: 'released', id });
    }
  } catch (err) {
    reply({ type: 'error', id, message: (err as Error).message || String(err) });
  }
});
