/** Matching message tensors to a model's declared input, and model outputs back to results. */
import { classify, Classification } from './classification';
import { describeTensor, firstNonFinite, TensorValue } from './tensor';
import type { ValueInfo } from './worker-protocol';

function describeInput(input: ValueInfo): string {
  return `"${input.name}" ${input.type ?? '?'} [${(input.shape ?? []).join(', ')}]`;
}

/** Throws a message naming both shapes when the tensor cannot feed the model input. */
export function checkInputFits(tensor: TensorValue, input: ValueInfo): void {
  const problem = `msg.payload: input tensor ${describeTensor(tensor)} does not fit the model input ${describeInput(input)}`;
  if (input.type && input.type !== tensor.type) throw new Error(`${problem}: wrong element type`);
  if (input.shape) {
    if (input.shape.length !== tensor.dims.length) throw new Error(`${problem}: wrong number of dimensions`);
    input.shape.forEach((d, i) => {
      if (typeof d === 'number' && d !== tensor.dims[i]) throw new Error(`${problem}: dimension ${i} must be ${d}`);
    });
  }
}

/**
 * A reloaded model must take what the serving one takes (ml-preprocess was set up for it): same
 * element type, same rank, the same fixed sizes, and no size fixed that was free before.
 */
export function checkReplacementInput(candidate: ValueInfo | undefined, serving: ValueInfo | undefined): void {
  if (!serving) return;
  if (!candidate) throw new Error(`it has no input; the serving model takes ${describeInput(serving)}`);
  const problem = `its input ${describeInput(candidate)} does not fit what the serving model takes, ${describeInput(serving)}`;
  // Frames already on their way are fed by name, and results read by name.
  if (candidate.name !== serving.name) throw new Error(`${problem}: named "${candidate.name}" instead of "${serving.name}" (redeploy to switch to it)`);
  if (candidate.type && serving.type && candidate.type !== serving.type) throw new Error(`${problem}: element type ${candidate.type} instead of ${serving.type}`);
  if (candidate.shape && serving.shape) {
    if (candidate.shape.length !== serving.shape.length) throw new Error(`${problem}: ${candidate.shape.length} dimensions instead of ${serving.shape.length}`);
    serving.shape.forEach((was, i) => {
      const now = candidate.shape![i];
      if (typeof now === 'number' && now !== was) throw new Error(`${problem}: dimension ${i} is ${now} instead of ${was}`);
    });
  }
}

/** A reloaded model's outputs keep the serving one's names, in order (results are read by name). */
export function checkReplacementOutputs(candidate: readonly ValueInfo[], serving: readonly ValueInfo[]): void {
  const names = (list: readonly ValueInfo[]) => list.map((o) => `"${o.name}"`).join(', ');
  if (names(candidate) !== names(serving)) {
    throw new Error(`its outputs ${names(candidate)} are not the serving model's ${names(serving)} (redeploy to switch to it)`);
  }
}

/** One classification per batch row of a [batch, classes] (or [classes]) output. */
export function classifyBatch(output: TensorValue, labels: string[] | undefined, k: number, outputName = 'output'): Classification[] {
  const dims = output.dims;
  const bad = firstNonFinite(output.data);
  if (bad) {
    const classes = dims[dims.length - 1];
    const label = labels?.[bad.index % classes];
    throw new Error(`the model's output "${outputName}" holds ${bad.value} at index ${bad.index}${label ? ` (class "${label}")` : ''}; expected finite scores. The input or the model is broken`);
  }
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
