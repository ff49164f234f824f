/**
 * A second stage for detections: each box named by a classifier of its crop. A detector trained to
 * find items may name them poorly (the conveyor detector: about half right), while a classifier
 * that sees the item at the frame's full resolution names it better. The crop rule is the one the
 * classifier was trained with (tools/train/train_crops.py), read from its `crop` metadata.
 */
import type { Detection } from './detection';
import { regionTensors } from './preprocess';
import type { PreprocessSpec, RegionOfInterest } from './preprocess-spec';
import type { TensorValue } from './tensor';

export interface CropRule {
  /** The box is grown by this factor around its centre (then clipped to the frame). */
  margin: number;
}

export const DEFAULT_CROP_RULE: CropRule = { margin: 1.15 };

/** The `crop` metadata of a classifier of crops; the default rule when it has none. */
export function cropRuleOf(props: Record<string, string>): CropRule {
  const text = props.crop;
  if (text === undefined) return DEFAULT_CROP_RULE;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`the naming model's "crop" metadata is not JSON: ${text.slice(0, 80)}`);
  }
  const margin = Number((value as { margin?: unknown })?.margin ?? DEFAULT_CROP_RULE.margin);
  if (!(margin >= 1 && margin <= 4)) throw new Error(`the naming model's "crop" metadata has margin ${JSON.stringify((value as { margin?: unknown })?.margin)}; expected a number from 1 to 4`);
  return { margin };
}

/** The part of the frame the classifier sees for a box, as fractions of the frame; undefined when nothing of it is left. */
export function cropRegion(box: Detection['box'], frame: { width: number; height: number }, rule: CropRule): RegionOfInterest | undefined {
  const cx = box.x + box.w / 2;
  const cy = box.y + box.h / 2;
  const left = Math.max(0, Math.round(cx - (box.w * rule.margin) / 2));
  const top = Math.max(0, Math.round(cy - (box.h * rule.margin) / 2));
  const right = Math.min(frame.width, Math.round(cx + (box.w * rule.margin) / 2));
  const bottom = Math.min(frame.height, Math.round(cy + (box.h * rule.margin) / 2));
  if (right - left < 2 || bottom - top < 2) return undefined;
  return { x: left / frame.width, y: top / frame.height, width: (right - left) / frame.width, height: (bottom - top) / frame.height };
}

/**
 * The classifier's input for each box (pre-processed as its metadata says), in the order of
 * `detections`; null for a box with nothing left inside the frame. The frame is decoded once for all boxes.
 */
export async function cropTensors(
  image: Buffer, detections: Detection[], frame: { width: number; height: number }, spec: PreprocessSpec, rule: CropRule,
): Promise<Array<TensorValue | null>> {
  const regions = detections.map((d) => cropRegion(d.box, frame, rule));
  const tensors = await regionTensors(image, regions.filter((r): r is RegionOfInterest => r !== undefined), spec);
  let next = 0;
  return regions.map((r) => (r ? tensors[next++] : null));
}

/** Gives each box the classifier's label and score, keeping the detector's in `detected`. */
export function applyNames(detections: Detection[], names: Array<{ label: string; score: number } | null>, labels?: readonly string[]): void {
  detections.forEach((d, i) => {
    const name = names[i];
    if (!name) return;
    d.detected = { label: d.label, score: d.score };
    d.label = name.label;
    d.score = name.score;
    const index = labels?.indexOf(name.label) ?? -1;
    if (index >= 0) d.index = index;
  });
}
