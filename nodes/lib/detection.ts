/**
 * Object detection without Node-RED: which output layout a model has, decoding its boxes, score
 * threshold, class filter, class-aware non-maximum suppression, and mapping the boxes back from
 * model input pixels to the frame's own pixels (undoing the ROI crop, cover crop, letterbox or
 * stretch that pre-processing did, see ResizeGeometry).
 *
 * Layouts (batch first; b = boxes, C = classes):
 * - yolov8:  one output [batch, 4 + C, b]: cx, cy, w, h, then one score per class (Ultralytics v8/v11);
 * - yolov5:  one output [batch, b, 5 + C]: cx, cy, w, h, objectness, then class scores;
 * - end2end: one output [batch, b, 6]: x1, y1, x2, y2, score, class (NMS already in the model);
 * - ssd:     separate outputs: boxes [batch, b, 4], scores [batch, b] with classes [batch, b], or
 *            scores [batch, b, C]; optionally a count [batch] of the valid rows.
 */
import type { BoxFormat, DetectionLayout, DetectionMetadata } from './onnx-metadata';
import type { ResizeGeometry } from './preprocess-spec';
import { firstNonFinite, TensorValue } from './tensor';

export type CoordinateUnits = 'auto' | 'normalized' | 'pixels';

export interface DetectionSettings {
  /** 'auto': the model's `detection` metadata, else worked out from the output shapes. */
  layout: DetectionLayout | 'auto';
  scoreThreshold: number;
  /** Boxes of the same class overlapping more than this (intersection over union) are merged. */
  iouThreshold: number;
  /** Merge overlapping boxes whatever their class: one object is one box even when two classes fire on it. */
  acrossClasses?: boolean;
  maxDetections: number;
  /** Class filter as written (labels or class numbers); empty keeps every class. */
  classes: string[];
  /** Corner order of SSD-style box outputs; unset: the metadata's, else yxyx (TensorFlow's). */
  boxes?: BoxFormat;
  /** 'auto': the metadata's `normalized`, else fractions when no kept box coordinate exceeds 1.5. */
  coordinates: CoordinateUnits;
}

export const DEFAULT_DETECTION: DetectionSettings = {
  layout: 'auto',
  scoreThreshold: 0.25,
  iouThreshold: 0.45,
  maxDetections: 100,
  classes: [],
  coordinates: 'auto',
};

/** A box in model input pixels (corners) before it is mapped to the frame. */
export interface Candidate {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  score: number;
  index: number;
}

export interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface Detection {
  label: string;
  score: number;
  index: number;
  /** Top left corner, width and height in whole pixels of the original frame. */
  box: Box;
  /** The item's track id, set by ml-track (shown as "#12 plastic 91%"). */
  track?: number;
  /** The detector's own label and score, when a classifier of crops named the box (ml-inference's "Name boxes with"). */
  detected?: { label: string; score: number };
}

export interface DetectionResult {
  detections: Detection[];
  count: number;
}

/** One annotation as node-red-node-annotate-image reads msg.annotations. */
export interface Annotation {
  type: 'rect';
  bbox: [number, number, number, number];
  label: string;
  stroke: string;
}

/** Which outputs to read, once the layout is known. */
export interface DecodePlan {
  layout: DetectionLayout;
  /** The single output of the yolov8, yolov5 and end2end layouts. */
  output?: string;
  /** SSD outputs. */
  boxes?: string;
  scores?: string;
  classes?: string;
  count?: string;
}

export interface OutputShape {
  name: string;
  dims: readonly number[];
}

const LAYOUT_NAMES: Record<DetectionLayout, string> = {
  yolov8: 'YOLOv8 [batch, 4 + classes, boxes]',
  yolov5: 'YOLOv5 [batch, boxes, 5 + classes]',
  end2end: 'end-to-end [batch, boxes, 6]',
  ssd: 'SSD (separate boxes, scores and classes outputs)',
};

const describe = (o: OutputShape) => `"${o.name}" [${o.dims.join(', ')}]`;

function findSsdOutputs(outputs: OutputShape[]): DecodePlan | undefined {
  const byName = (pattern: RegExp, candidates: OutputShape[]) => candidates.find((o) => pattern.test(o.name));
  const boxCandidates = outputs.filter((o) => o.dims.length === 3 && o.dims[2] === 4);
  const boxes = byName(/box|loc/i, boxCandidates) ?? boxCandidates[0];
  if (!boxes) return undefined;
  const rows = boxes.dims[1];
  const rest = outputs.filter((o) => o !== boxes);
  const perBox = rest.filter((o) => o.dims[1] === rows && (o.dims.length === 2 || o.dims.length === 3));
  const count = byName(/num|count/i, rest.filter((o) => !perBox.includes(o))) ?? rest.find((o) => !perBox.includes(o) && o.dims.slice(1).every((d) => d === 1));
  const perClass = perBox.find((o) => o.dims.length === 3 && o.dims[2] > 1);
  if (perClass) return { layout: 'ssd', boxes: boxes.name, scores: perClass.name, count: count?.name };
  const flat = perBox.filter((o) => o.dims.length === 2 || o.dims[2] === 1);
  if (flat.length < 2) return undefined;
  let scores = byName(/score|conf|prob/i, flat);
  let classes = byName(/class|label|categor/i, flat.filter((o) => o !== scores));
  if (!scores) scores = flat.find((o) => o !== classes);
  if (!classes) classes = flat.find((o) => o !== scores);
  return { layout: 'ssd', boxes: boxes.name, scores: scores!.name, classes: classes!.name, count: count?.name };
}

/**
 * Decides how to read the outputs: the setting, else the metadata, else the shapes. `labelCount`
 * breaks ties (a [1, 84, 8400] output with 80 labels is YOLOv8). Throws naming the shapes seen.
 */
export function planDecoding(outputs: OutputShape[], layout: DetectionLayout | 'auto', meta?: DetectionMetadata, labelCount?: number): DecodePlan {
  const chosen = layout !== 'auto' ? layout : meta?.layout;
  const all = outputs.map(describe).join(', ');
  if (chosen === 'ssd' || (!chosen && outputs.length > 1)) {
    const plan = findSsdOutputs(outputs);
    if (plan) return plan;
    if (chosen === 'ssd') {
      throw new Error(`layout ${LAYOUT_NAMES.ssd}: expected a boxes output [batch, boxes, 4] and scores [batch, boxes] with classes [batch, boxes] (or scores [batch, boxes, classes]), but the model's outputs are ${all}`);
    }
  }
  const single = outputs.find((o) => o.dims.length === 3);
  if (!single) {
    throw new Error(`expected a detection output of three dimensions [batch, a, b]${chosen ? ` for layout ${LAYOUT_NAMES[chosen]}` : ''}, but the model's outputs are ${all}; for a classifier choose the classification output`);
  }
  const [, a, b] = single.dims;
  if (chosen) {
    const fits = chosen === 'yolov8' ? a > 4 : chosen === 'yolov5' ? b > 5 : b >= 6;
    if (!fits) throw new Error(`output ${describe(single)} does not have layout ${LAYOUT_NAMES[chosen]}`);
    return { layout: chosen, output: single.name };
  }
  let guess: DetectionLayout | undefined;
  if (labelCount !== undefined && a - 4 === labelCount && b - 5 !== labelCount) guess = 'yolov8';
  else if (labelCount !== undefined && b - 5 === labelCount && a - 4 !== labelCount) guess = 'yolov5';
  else if (b === 6 && a <= 1000) guess = 'end2end';
  else if (a < b && a > 4) guess = 'yolov8';
  else if (b > 5) guess = 'yolov5';
  if (!guess) throw new Error(`cannot tell the detection layout of output ${describe(single)}; choose the layout in the node's settings`);
  return { layout: guess, output: single.name };
}

/**
 * Resolves the class filter (labels, case-insensitive, or class numbers) to class indices.
 * Throws naming the setting, the unknown entry and the labels there are.
 */
export function resolveClassFilter(classes: readonly string[], labels: readonly string[] | undefined): Set<number> | undefined {
  if (classes.length === 0) return undefined;
  const lower = labels?.map((l) => l.toLowerCase());
  const indices = new Set<number>();
  for (const entry of classes) {
    const at = lower?.indexOf(entry.toLowerCase()) ?? -1;
    if (at >= 0) indices.add(at);
    else if (/^\d+$/.test(entry) && (!labels || Number(entry) < labels.length)) indices.add(Number(entry));
    else {
      const known = labels ? `the model's labels are ${labels.slice(0, 12).join(', ')}${labels.length > 12 ? ` and ${labels.length - 12} more` : ''}` : 'the model has no labels, so use class numbers';
      throw new Error(`Expected classes to hold labels of the model or class numbers but received ${JSON.stringify(entry)}; ${known}`);
    }
  }
  return indices;
}

function checkFiniteOutput(name: string, t: TensorValue): void {
  const bad = firstNonFinite(t.data as ArrayLike<number>);
  if (bad) throw new Error(`the model's output "${name}" holds ${bad.value} at index ${bad.index}; expected finite numbers. The input or the model is broken`);
}

function need(outputs: Record<string, TensorValue>, name: string | undefined): TensorValue {
  const t = name === undefined ? undefined : outputs[name];
  if (!t) throw new Error(`the model did not return the output "${name}" its detection layout needs`);
  checkFiniteOutput(name!, t);
  return t;
}

const asNumber = (v: number | bigint) => (typeof v === 'bigint' ? Number(v) : v);

interface RowContext {
  threshold: number;
  allowed?: Set<number>;
  labelCount?: number;
}

function classCountCheck(output: string, dims: readonly number[], classes: number, layout: DetectionLayout, labelCount?: number): void {
  if (classes < 1) throw new Error(`output "${output}" [${dims.join(', ')}] leaves no class scores for layout ${LAYOUT_NAMES[layout]}`);
  if (labelCount !== undefined && labelCount !== classes) {
    throw new Error(`the model's output "${output}" [${dims.join(', ')}] holds ${classes} class scores per box (layout ${LAYOUT_NAMES[layout]}) but ${labelCount} labels were given; they must match one to one`);
  }
}

/** Boxes of batch row `row` scoring at least the threshold, in model input units (corners). */
export function decodeCandidates(outputs: Record<string, TensorValue>, plan: DecodePlan, row: number, context: RowContext, boxFormat: BoxFormat = 'yxyx'): Candidate[] {
  const { threshold, allowed } = context;
  const found: Candidate[] = [];
  const keep = (index: number) => !allowed || allowed.has(index);
  if (plan.layout === 'yolov8' || plan.layout === 'yolov5' || plan.layout === 'end2end') {
    const t = need(outputs, plan.output);
    const [, a, b] = t.dims;
    const data = t.data as Float32Array;
    const base = row * a * b;
    if (plan.layout === 'yolov8') {
      const classes = a - 4;
      classCountCheck(plan.output!, t.dims, classes, 'yolov8', context.labelCount);
      // Class-major scan (memory order): the best class of every box.
      const best = new Float32Array(b).fill(-Infinity);
      const bestClass = new Int32Array(b);
      for (let c = 0; c < classes; c++) {
        const offset = base + (4 + c) * b;
        for (let i = 0; i < b; i++) {
          const v = data[offset + i];
          if (v > best[i]) { best[i] = v; bestClass[i] = c; }
        }
      }
      for (let i = 0; i < b; i++) {
        if (!(best[i] >= threshold) || !keep(bestClass[i])) continue;
        const cx = data[base + i], cy = data[base + b + i], w = data[base + 2 * b + i], h = data[base + 3 * b + i];
        found.push({ x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2, score: best[i], index: bestClass[i] });
      }
    } else if (plan.layout === 'yolov5') {
      const classes = b - 5;
      classCountCheck(plan.output!, t.dims, classes, 'yolov5', context.labelCount);
      for (let i = 0; i < a; i++) {
        const o = base + i * b;
        const objectness = data[o + 4];
        if (!(objectness >= threshold)) continue;
        let best = -Infinity;
        let index = 0;
        for (let c = 0; c < classes; c++) if (data[o + 5 + c] > best) { best = data[o + 5 + c]; index = c; }
        const score = objectness * best;
        if (!(score >= threshold) || !keep(index)) continue;
        const cx = data[o], cy = data[o + 1], w = data[o + 2], h = data[o + 3];
        found.push({ x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2, score, index });
      }
    } else {
      for (let i = 0; i < a; i++) {
        const o = base + i * b;
        const score = data[o + 4];
        const index = Math.round(data[o + 5]);
        if (!(score >= threshold) || index < 0 || !keep(index)) continue;
        found.push({ x1: data[o], y1: data[o + 1], x2: data[o + 2], y2: data[o + 3], score, index });
      }
    }
    return found;
  }
  // SSD-style separate outputs.
  const boxes = need(outputs, plan.boxes);
  const scores = need(outputs, plan.scores);
  const rows = boxes.dims[1];
  let valid = rows;
  if (plan.count && outputs[plan.count]) {
    const count = outputs[plan.count];
    const per = count.data.length / count.dims[0];
    valid = Math.max(0, Math.min(rows, Math.round(asNumber(count.data[row * per]))));
  }
  const boxData = boxes.data;
  const scoreData = scores.data;
  const perClass = scores.dims.length === 3 && scores.dims[2] > 1 ? scores.dims[2] : 0;
  if (perClass) classCountCheck(plan.scores!, scores.dims, perClass, 'ssd', context.labelCount);
  const classData = perClass ? undefined : need(outputs, plan.classes).data;
  for (let i = 0; i < valid; i++) {
    let score: number;
    let index: number;
    if (perClass) {
      score = -Infinity;
      index = 0;
      const o = (row * rows + i) * perClass;
      for (let c = 0; c < perClass; c++) if (asNumber(scoreData[o + c]) > score) { score = asNumber(scoreData[o + c]); index = c; }
    } else {
      score = asNumber(scoreData[row * rows + i]);
      index = Math.round(asNumber(classData![row * rows + i]));
    }
    if (!(score >= threshold) || index < 0 || !keep(index)) continue;
    const o = (row * rows + i) * 4;
    const v = [0, 1, 2, 3].map((k) => asNumber(boxData[o + k]));
    let corners: [number, number, number, number];
    if (boxFormat === 'yxyx') corners = [v[1], v[0], v[3], v[2]];
    else if (boxFormat === 'cxcywh') corners = [v[0] - v[2] / 2, v[1] - v[3] / 2, v[0] + v[2] / 2, v[1] + v[3] / 2];
    else corners = [v[0], v[1], v[2], v[3]];
    found.push({ x1: corners[0], y1: corners[1], x2: corners[2], y2: corners[3], score, index });
  }
  return found;
}

export function iou(a: Candidate, b: Candidate): number {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return union > 0 ? inter / union : 0;
}

/**
 * Greedy non-maximum suppression: highest score first; a box is dropped when it overlaps a kept box
 * of the same class (or, across classes, any kept box) by more than `iouThreshold`. At most `max`
 * boxes are kept.
 */
export function nonMaxSuppression(candidates: Candidate[], iouThreshold: number, max: number, acrossClasses = false): Candidate[] {
  const sorted = candidates.slice().sort((p, q) => q.score - p.score || p.index - q.index);
  const kept: Candidate[] = [];
  const keptByClass = new Map<number, Candidate[]>();
  for (const c of sorted) {
    if (kept.length >= max) break;
    const group = acrossClasses ? -1 : c.index;
    const same = keptByClass.get(group) ?? [];
    if (same.some((k) => iou(k, c) > iouThreshold)) continue;
    same.push(c);
    keptByClass.set(group, same);
    kept.push(c);
  }
  return kept;
}

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/**
 * A box from model input pixels to whole pixels of the frame: clipped to the part of the input the
 * frame filled (not the letterbox bars), then scaled and shifted back. Undefined when nothing is left.
 */
export function toFramePixels(c: Candidate, geometry: ResizeGeometry): Box | undefined {
  const { source, target } = geometry;
  const sx = source.width / target.width;
  const sy = source.height / target.height;
  const fx = (x: number) => source.x + (clamp(x, target.x, target.x + target.width) - target.x) * sx;
  const fy = (y: number) => source.y + (clamp(y, target.y, target.y + target.height) - target.y) * sy;
  const x = Math.round(fx(Math.min(c.x1, c.x2)));
  const y = Math.round(fy(Math.min(c.y1, c.y2)));
  const w = Math.round(fx(Math.max(c.x1, c.x2))) - x;
  const h = Math.round(fy(Math.max(c.y1, c.y2))) - y;
  return w > 0 && h > 0 ? { x, y, w, h } : undefined;
}

export interface DetectInput {
  outputs: Record<string, TensorValue>;
  plan: DecodePlan;
  /** The model input's size in pixels (normalised coordinates are fractions of it). */
  inputSize: { width: number; height: number };
  /** From msg.preprocess; without it boxes stay in model input pixels. */
  geometry?: ResizeGeometry;
  labels?: readonly string[];
  meta?: DetectionMetadata;
}

/** Every step for each batch row: decode, threshold, filter, NMS, map back; sorted by score. */
export function detect(input: DetectInput, settings: DetectionSettings, allowed?: Set<number>): DetectionResult[] {
  const { outputs, plan, inputSize, labels, meta } = input;
  const first = plan.output ?? plan.boxes!;
  const batch = outputs[first]?.dims[0] ?? 1;
  const geometry = input.geometry ?? { source: { x: 0, y: 0, ...inputSize }, target: { x: 0, y: 0, ...inputSize } };
  const boxFormat = settings.boxes ?? meta?.boxes ?? 'yxyx';
  const results: DetectionResult[] = [];
  for (let row = 0; row < batch; row++) {
    let candidates = decodeCandidates(outputs, plan, row, { threshold: settings.scoreThreshold, allowed, labelCount: labels?.length }, boxFormat);
    const normalized = settings.coordinates === 'normalized'
      || (settings.coordinates === 'auto' && (meta?.normalized ?? (candidates.length > 0 && candidates.every((c) => Math.max(Math.abs(c.x1), Math.abs(c.y1), Math.abs(c.x2), Math.abs(c.y2)) <= 1.5))));
    if (normalized) {
      candidates = candidates.map((c) => ({ ...c, x1: c.x1 * inputSize.width, x2: c.x2 * inputSize.width, y1: c.y1 * inputSize.height, y2: c.y2 * inputSize.height }));
    }
    // Boxes wholly inside the letterbox bars are no boxes; the rest go through NMS, at most max of them.
    const placed = candidates.filter((c) => toFramePixels(c, geometry) !== undefined);
    const detections: Detection[] = nonMaxSuppression(placed, settings.iouThreshold, settings.maxDetections, settings.acrossClasses).map((c) => ({
      label: labels?.[c.index] ?? String(c.index),
      score: c.score,
      index: c.index,
      box: toFramePixels(c, geometry)!,
    }));
    results.push({ detections, count: detections.length });
  }
  return results;
}

/** Distinct colours by class number (the same class always gets the same colour). */
const PALETTE = ['#FF3838', '#2C99A8', '#FF9D97', '#00C2FF', '#FF701F', '#344593', '#FFB21D', '#6473FF', '#CFD231', '#0018EC',
  '#48F90A', '#8438FF', '#92CC17', '#520085', '#3DDB86', '#CB38FF', '#1A9334', '#FF95C8', '#00D4BB', '#FF37C7'];

export function classColour(index: number): string {
  return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

/** "#12 " for a detection ml-track gave track 12, else nothing. */
export function trackPrefix(track: unknown): string {
  return typeof track === 'number' && Number.isFinite(track) ? `#${track} ` : '';
}

/** msg.annotations for node-red-node-annotate-image (and our own annotate node). */
export function toAnnotations(detections: readonly Detection[]): Annotation[] {
  return detections.map((d) => ({
    type: 'rect',
    bbox: [d.box.x, d.box.y, d.box.w, d.box.h],
    label: `${trackPrefix(d.track)}${d.label} ${Math.round(d.score * 100)}%`,
    stroke: classColour(d.index),
  }));
}
