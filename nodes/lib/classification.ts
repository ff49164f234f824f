/** Turning a model's output vector into a labelled prediction. */

export interface Prediction {
  label: string;
  score: number;
  index: number;
}

export interface Classification {
  label: string;
  score: number;
  topK: Prediction[];
}

/** Numerically stable softmax (subtracts the max before exponentiating). */
export function softmax(values: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) if (values[i] > max) max = values[i];
  const out = new Float64Array(values.length);
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    out[i] = Math.exp(values[i] - max);
    sum += out[i];
  }
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

/** True when the vector already is a probability distribution (a model with a softmax layer). */
export function isProbabilityVector(values: ArrayLike<number>, tolerance = 1e-3): boolean {
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    if (!(values[i] >= 0 && values[i] <= 1)) return false;
    sum += values[i];
  }
  return Math.abs(sum - 1) <= tolerance;
}

export function topK(probabilities: ArrayLike<number>, labels: readonly string[] | undefined, k: number): Prediction[] {
  const indices = Array.from({ length: probabilities.length }, (_, i) => i);
  indices.sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  return indices.slice(0, Math.max(1, Math.min(k, indices.length))).map((index) => ({
    label: labels?.[index] ?? String(index),
    score: Number(probabilities[index]),
    index,
  }));
}

/**
 * Classifies one output vector. `outputs` may be logits or probabilities ('auto' decides by
 * whether the values already form a distribution).
 */
export function classify(
  outputs: ArrayLike<number>,
  labels: readonly string[] | undefined,
  k: number,
  activation: 'auto' | 'softmax' | 'none' = 'auto',
): Classification {
  if (outputs.length === 0) throw new Error('the model returned an empty output');
  if (labels && labels.length !== outputs.length) {
    throw new Error(`the model outputs ${outputs.length} classes but ${labels.length} labels are configured; labels must match the model's outputs one to one`);
  }
  const useSoftmax = activation === 'softmax' || (activation === 'auto' && !isProbabilityVector(outputs));
  const probabilities = useSoftmax ? softmax(outputs) : Float64Array.from(outputs as ArrayLike<number>);
  const top = topK(probabilities, labels, k);
  return { label: top[0].label, score: top[0].score, topK: top };
}
