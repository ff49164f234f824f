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
 * A model is loaded in two steps so the caller can check the new session before it serves:
 * `prepare` creates a candidate beside the serving session, `commit` swaps it in, `discard` drops it.
 */
export type WorkerRequest =
  | { type: 'prepare'; id: number; model: Uint8Array; options: SessionOptions }
  | { type: 'commit'; id: number }
  | { type: 'discard'; id: number }
  | { type: 'run'; id: number; feeds: Record<string, WireTensor> };

export type WorkerResponse =
  | { type: 'prepared'; id: number; inputs: ValueInfo[]; outputs: ValueInfo[] }
  | { type: 'committed'; id: number }
  | { type: 'discarded'; id: number }
  | { type: 'result'; id: number; outputs: Record<string, WireTensor>; ms: number }
  | { type: 'error'; id: number; message: string };
