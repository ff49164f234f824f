/** Messages between ModelRunner (Node-RED's process) and inference-worker (a child process). */
export interface SessionOptions {
  executionProviders: string[];
  intraOpNumThreads: number;
  interOpNumThreads: number;
  /**
   * Let onnxruntime's threads busy-wait after a run for the next one. Off by default: at camera rates
   * (a run every few hundred ms) spinning burns several times the CPU of the run itself.
   */
  allowSpinning?: boolean;
}

export interface ValueInfo {
  name: string;
  type?: string;
  /** Fixed sizes as numbers, symbolic (dynamic) ones as their names. */
  shape?: (number | string)[];
}

export interface WireTensor {
  type: string;
  dims: number[];
  data: ArrayBufferView;
}

/**
 * A run input whose bytes come on the data pipe instead of inside the IPC message: the runner
 * writes, for each such input in the order of `feeds`, a frame [request id u32][byte length u32]
 * and the bytes (the rows of a batch one after the other). The IPC message itself would be one
 * more copy of every tensor on Node-RED's event loop (the V8 serialiser) and one more large buffer
 * for its garbage collector, per frame.
 */
export interface PipedTensor {
  type: string;
  dims: number[];
  piped: number;
}

/** The inference worker's file descriptor for tensor bytes (a pipe), when the runner opened one. */
export const DATA_PIPE_FD = 4;
export const DATA_FRAME_HEADER_BYTES = 8;

/**
 * A model is loaded in two steps so the caller can check the new session before it serves:
 * `prepare` creates a candidate beside the serving session, `commit` swaps it in, `discard` drops it.
 */
export type WorkerRequest =
  | { type: 'prepare'; id: number; model: Uint8Array; options: SessionOptions }
  | { type: 'commit'; id: number }
  | { type: 'discard'; id: number }
  | { type: 'run'; id: number; feeds: Record<string, WireTensor | PipedTensor> };

export type WorkerResponse =
  | { type: 'prepared'; id: number; inputs: ValueInfo[]; outputs: ValueInfo[]; warning?: string }
  | { type: 'committed'; id: number }
  | { type: 'discarded'; id: number }
  | { type: 'result'; id: number; outputs: Record<string, WireTensor>; ms: number }
  | { type: 'error'; id: number; message: string };
