/** The tensor carried on messages between ml-preprocess and ml-inference (and across the worker). */
export type TensorType = 'float32' | 'uint8' | 'int8' | 'int32' | 'int64' | 'float64';
export type TensorData = Float32Array | Uint8Array | Int8Array | Int32Array | BigInt64Array | Float64Array;

export interface TensorValue {
  type: TensorType;
  dims: number[];
  data: TensorData;
}

/**
 * A batch handed over as its rows: N one-row tensors of one shape that run as one [N, ...] input.
 * The rows go to the inference worker one after the other, never copied together on the event loop.
 */
export interface RowsTensor {
  type: TensorType;
  dims: number[];
  rows: TensorData[];
}

/** What a model input may be given as. */
export type FeedTensor = TensorValue | RowsTensor;

const TYPED_ARRAYS: Record<TensorType, new (buffer: ArrayBufferLike, offset: number, length: number) => TensorData> = {
  float32: Float32Array,
  uint8: Uint8Array,
  int8: Int8Array,
  int32: Int32Array,
  int64: BigInt64Array,
  float64: Float64Array,
};

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/** The first NaN or ±Infinity in the data, if any (integer types never hold one). */
export function firstNonFinite(data: ArrayLike<number | bigint>): { index: number; value: number } | undefined {
  if (!(data instanceof Float32Array || data instanceof Float64Array)) return undefined;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return { index: i, value: data[i] };
  return undefined;
}

/**
 * Data made from image pixels (ml-preprocess) is finite by construction, so ml-inference need not
 * scan its 50,000+ values again for every frame. Only the very array is trusted: a copy, a JSON
 * round-trip or a tensor built elsewhere is checked.
 */
const finiteByConstruction = new WeakSet<object>();

export function markFinite(data: TensorData): void {
  finiteByConstruction.add(data);
}

/** Throws when a float tensor holds NaN or ±Infinity, which no model input should. */
export function checkFinite(tensor: TensorValue, field = 'msg.payload.data'): void {
  if (finiteByConstruction.has(tensor.data)) return;
  const bad = firstNonFinite(tensor.data);
  if (bad) throw new Error(`Expected finite tensor values but received ${bad.value} at index ${bad.index} of ${field}`);
}

const INTEGER_RANGES: Partial<Record<TensorType, [number, number]>> = {
  uint8: [0, 255],
  int8: [-128, 127],
  int32: [-2147483648, 2147483647],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

/** Plain-array data is converted, so check each value first rather than let it wrap or become 0. */
function checkPlainValues(values: unknown[], type: TensorType): void {
  const range = INTEGER_RANGES[type];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (typeof v !== 'number') {
      throw new Error(`msg.payload.data[${i}] must be a number (tensor type ${type}), got ${v === null ? 'null' : typeof v} ${JSON.stringify(v)}`);
    }
    if (range && !(Number.isInteger(v) && v >= range[0] && v <= range[1])) {
      throw new Error(`msg.payload.data[${i}] must be a whole number from ${range[0]} to ${range[1]} for tensor type ${type}, got ${v}`);
    }
  }
}

export function describeTensor(t: { type?: unknown; dims?: unknown }): string {
  return `${String(t.type)} [${Array.isArray(t.dims) ? t.dims.join(', ') : '?'}]`;
}

/**
 * Accepts what users put on msg.payload: our tensor object, an onnxruntime Tensor, or the same after
 * a JSON round-trip (data as a plain array or a serialised Buffer). Throws naming what is wrong.
 */
export function toTensorValue(value: unknown): TensorValue {
  if (!value || typeof value !== 'object' || Buffer.isBuffer(value)) {
    const got = Buffer.isBuffer(value) ? 'a Buffer (an image? pass it through ml-preprocess first)' : value === null ? 'null' : typeof value;
    throw new Error(`msg.payload must be a tensor {type, dims, data} from ml-preprocess, got ${got}`);
  }
  const v = value as Record<string, unknown>;
  const type = v.type as TensorType;
  if (!(type in TYPED_ARRAYS)) {
    throw new Error(`msg.payload.type: tensor type must be one of ${Object.keys(TYPED_ARRAYS).join(', ')}, got ${JSON.stringify(v.type)}`);
  }
  const dims = v.dims;
  if (!Array.isArray(dims) || dims.length === 0 || !dims.every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`msg.payload.dims must be an array of positive integers, got ${JSON.stringify(dims)}`);
  }
  const Ctor = TYPED_ARRAYS[type];
  let data: TensorData;
  const raw = v.data as unknown;
  if (raw instanceof Ctor) {
    data = raw;
  } else if (Array.isArray(raw)) {
    checkPlainValues(raw, type);
    data = type === 'int64' ? BigInt64Array.from(raw.map((x) => BigInt(x))) : (Ctor as unknown as { from(a: number[]): TensorData }).from(raw);
  } else if (ArrayBuffer.isView(raw)) {
    const bytes = raw as ArrayBufferView;
    const size = (Ctor as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    if (bytes.byteLength % size !== 0) throw new Error(`msg.payload.data has ${bytes.byteLength} bytes, not a whole number of ${type} values (${size} bytes each)`);
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    data = new Ctor(copy.buffer, 0, bytes.byteLength / size);
  } else {
    throw new Error(`msg.payload.data must be a typed array or an array of numbers, got ${raw === null ? 'null' : typeof raw}`);
  }
  const expected = elementCount(dims);
  if (data.length !== expected) {
    throw new Error(`msg.payload: tensor ${describeTensor(v)} needs ${expected} values but its data has ${data.length}`);
  }
  return { type, dims: dims.slice(), data };
}
