/** Matching message tensors to a model's declared input, and model outputs back to results. */
import { classify, Classification } from './classification';
import { describeTensor, TensorValue } from './tensor';
import type { ValueInfo } from './worker-protocol';

/** Throws a message naming both shapes when the tensor cannot feed the model input. */
export function checkInputFits(tensor: TensorValue, input: ValueInfo): void {
  const expected = `${input.type ?? '?'} [${(input.shape ?? []).join(', ')}]`;
  const problem = `input tensor ${describeTensor(tensor)} does not fit the model input "${input.name}" ${expected}`;
  if (input.type && input.type !== tensor.type) throw new Error(`${problem}: wrong element type`);
  if (input.shape) {
    if (input.shape.length !== tensor.dims.length) throw new Error(`${problem}: wrong number of dimensions`);
    input.shape.forEach((d, i) => {
      if (typeof d === 'number' && d !== tensor.dims[i]) throw new Error(`${problem}: dimension ${i} must be ${d}`);
    });
  }
}

/** One classification per batch row of a [batch, classes] (or [classes]) output. */
export function classifyBatch(output: TensorValue, labels: string[] | undefined, k: number): Classification[] {
  const dims = output.dims;
  const classes = dims[dims.length - 1];
  const rows = dims.length === 1 ? 1 : dims.slice(0, -1).reduce((a, b) => a * b, 1);
  if (dims.length > 2 && rows !== dims[0]) {
    throw new Error(`output shape [${dims.join(', ')}] is not a classification output [batch, classes]; choose raw output`);
  }
  const data = output.data as Float32Array;
  const results: Classification[] = [];
  for (let r = 0; r < rows; r++) results.push(classify(data.subarray(r * classes, (r + 1) * classes), labels, k));
  return results;
}

/** Outputs as plain arrays, for "raw" mode and JSON-friendly messages. */
export function plainOutputs(outputs: Record<string, TensorValue>): Record<string, { type: string; dims: number[]; data: number[] }> {
  const plain: Record<string, { type: string; dims: number[]; data: number[] }> = {};
  for (const [name, t] of Object.entries(outputs)) {
    plain[name] = { type: t.type, dims: t.dims, data: Array.from(t.data as ArrayLike<number>, Number) };
  }
  return plain;
}
