/** Messages between ModelRunner (main thread) and inference-worker. */
export interface SessionOptions {
  executionProviders: string[];
  intraOpNumThreads: number;
  interOpNumThreads: number;
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

export type WorkerRequest =
  | { type: 'load'; id: number; model: Uint8Array; options: SessionOptions }
  | { type: 'run'; id: number; feeds: Record<string, WireTensor> }
  | { type: 'release'; id: number };

export type WorkerResponse =
  | { type: 'loaded'; id?: number; inputs: ValueInfo[]; outputs: ValueInfo[] }
  | { type: 'result'; id: number; outputs: Record<string, WireTensor>; ms: number }
  | { type: 'released'; id: number }
  | { type: 'error'; id: number; message: string };
