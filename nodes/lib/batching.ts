/**
 * Micro-batching: frames that wait for the model together run as one batch along the first
 * dimension (when the model's batch dimension is dynamic), and the outputs are split back per frame.
 */
import { FeedTensor, TensorValue } from './tensor';
import type { ValueInfo } from './worker-protocol';

/** True when the model input takes any number of rows in its first dimension. */
export function hasDynamicBatch(input: ValueInfo): boolean {
  const first = input.shape?.[0];
  return first !== undefined && typeof first !== 'number';
}

/** Tensors of one row each, of the same type and shape, can share a run. */
export function sameRowShape(a: TensorValue, b: TensorValue): boolean {
  return a.type === b.type && a.dims[0] === 1 && b.dims[0] === 1 && a.dims.length === b.dims.length && a.dims.every((d, i) => d === b.dims[i]);
}

/** Splits items into runs: consecutive items whose tensors can be stacked share one, up to `max` rows. */
export function groupForBatches<T>(items: T[], tensorOf: (item: T) => TensorValue, max: number): T[][] {
  const groups: T[][] = [];
  for (const item of items) {
    const last = groups[groups.length - 1];
    if (last && last.length < max && sameRowShape(tensorOf(last[0]), tensorOf(item))) last.push(item);
    else groups.push([item]);
  }
  return groups;
}

/** One tensor of N rows from N one-row tensors. */
export function stackRows(tensors: TensorValue[]): TensorValue {
  if (tensors.length === 1) return tensors[0];
  const first = tensors[0];
  const rowLength = first.data.length;
  const Data = first.data.constructor as new (length: number) => TensorValue['data'];
  const data = new Data(rowLength * tensors.length);
  tensors.forEach((t, i) => (data as unknown as { set(a: ArrayLike<number | bigint>, offset: number): void }).set(t.data as ArrayLike<number | bigint>, i * rowLength));
  return { type: first.type, dims: [tensors.length, ...first.dims.slice(1)], data };
}

/** N one-row tensors as one model input of N rows, handed over row by row (no copy here). */
export function batchOfRows(tensors: TensorValue[]): FeedTensor {
  if (tensors.length === 1) return tensors[0];
  const first = tensors[0];
  return { type: first.type, dims: [tensors.length, ...first.dims.slice(1)], rows: tensors.map((t) => t.data) };
}

/** Row `row` of every output whose first dimension is the batch; other outputs are shared as they are. */
export function outputsOfRow(outputs: Record<string, TensorValue>, row: number, rows: number): Record<string, TensorValue> {
  if (rows === 1) return outputs;
  const mine: Record<string, TensorValue> = {};
  for (const [name, t] of Object.entries(outputs)) {
    if (t.dims[0] !== rows) {
      mine[name] = t;
      continue;
    }
    const rowLength = t.data.length / rows;
    mine[name] = { type: t.type, dims: [1, ...t.dims.slice(1)], data: t.data.subarray(row * rowLength, (row + 1) * rowLength) as TensorValue['data'] };
  }
  return mine;
}
