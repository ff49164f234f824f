/** The pre-processing contract between a model and the nodes (the `preprocess` metadata key). */

export type ResizeMode = 'cover' | 'contain' | 'fill';
export type ChannelOrder = 'RGB' | 'BGR';
export type Layout = 'NCHW' | 'NHWC';
export type InputDtype = 'float32' | 'uint8';

/** A region of interest as fractions (0..1) of the frame, so it survives resolution changes. */
export interface RegionOfInterest {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface PreprocessSpec {
  width: number;
  height: number;
  resize: ResizeMode;
  channels: ChannelOrder;
  layout: Layout;
  dtype: InputDtype;
  mean: [number, number, number];
  std: [number, number, number];
  roi?: RegionOfInterest;
  /**
   * Colour of the letterbox bars for `contain`, 0..255 per channel (Ultralytics models expect grey
   * 114). Unset: the mean colour, so the bars normalise to zero.
   */
  pad?: [number, number, number];
}

/** A rectangle in pixels. */
export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/**
 * Exactly where the model input came from: the part of the (upright) frame that was used, after the
 * ROI and any `cover` crop (`source`, frame pixels), and where it landed in the model input after
 * resizing (`target`, model input pixels; smaller than the input when `contain` added bars).
 * A point maps back as  frameX = source.x + (inputX - target.x) * source.width / target.width.
 */
export interface ResizeGeometry {
  source: Rect;
  target: Rect;
}

export const DEFAULT_SPEC: PreprocessSpec = {
  width: 224,
  height: 224,
  resize: 'cover',
  channels: 'RGB',
  layout: 'NCHW',
  dtype: 'float32',
  mean: [0, 0, 0],
  std: [255, 255, 255],
};

function oneOf<T extends string>(name: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined || value === null || value === '') return fallback;
  if (typeof value === 'string') {
    const match = allowed.find((a) => a.toLowerCase() === value.toLowerCase());
    if (match) return match;
  }
  throw new Error(`"${name}" must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
}

function triple(name: string, value: unknown, fallback: [number, number, number], positive: boolean): [number, number, number] {
  if (value === undefined || value === null || value === '') return fallback;
  const list = typeof value === 'string' ? value.split(/[\s,]+/).filter(Boolean).map(Number) : value;
  if (typeof list === 'number' && Number.isFinite(list)) return [list, list, list];
  if (!Array.isArray(list) || list.length !== 3 || !list.every((v) => typeof v === 'number' && Number.isFinite(v))) {
    throw new Error(`"${name}" must be three numbers (R, G, B), got ${JSON.stringify(value)}`);
  }
  if (positive && list.some((v: number) => v <= 0)) throw new Error(`"${name}" values must be greater than 0`);
  return [list[0], list[1], list[2]];
}

function dimension(name: string, value: unknown): number {
  const n = typeof value === 'string' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 8192) {
    throw new Error(`"${name}" must be a whole number of pixels between 1 and 8192, got ${JSON.stringify(value)}`);
  }
  return n;
}

export function validateRoi(value: unknown): RegionOfInterest | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  const roi = value as Record<string, unknown>;
  const parts = ['x', 'y', 'width', 'height'].map((k) => Number(roi[k]));
  if (parts.some((v) => !Number.isFinite(v) || v < 0 || v > 1)) {
    throw new Error(`"roi" must be {x, y, width, height} as fractions of the frame between 0 and 1, got ${JSON.stringify(value)}`);
  }
  const [x, y, width, height] = parts;
  if (width <= 0 || height <= 0 || x + width > 1.000001 || y + height > 1.000001) {
    throw new Error(`"roi" must lie inside the frame with a non-zero size, got ${JSON.stringify(value)}`);
  }
  if (x === 0 && y === 0 && width === 1 && height === 1) return undefined;
  return { x, y, width, height };
}

/** Checks a spec from metadata, a dialog or a message; throws naming the offending field. */
export function validatePreprocessSpec(raw: unknown): PreprocessSpec {
  if (!raw || typeof raw !== 'object') throw new Error('pre-processing settings must be an object');
  const r = raw as Record<string, unknown>;
  const spec: PreprocessSpec = {
    width: dimension('width', r.width),
    height: dimension('height', r.height),
    resize: oneOf('resize', r.resize, ['cover', 'contain', 'fill'] as const, 'cover'),
    channels: oneOf('channels', r.channels, ['RGB', 'BGR'] as const, 'RGB'),
    layout: oneOf('layout', r.layout, ['NCHW', 'NHWC'] as const, 'NCHW'),
    dtype: oneOf('dtype', r.dtype, ['float32', 'uint8'] as const, 'float32'),
    mean: triple('mean', r.mean, [0, 0, 0], false),
    std: triple('std', r.std, [1, 1, 1], true),
  };
  const roi = validateRoi(r.roi);
  if (roi) spec.roi = roi;
  if (r.pad !== undefined && r.pad !== null && r.pad !== '') {
    const pad = triple('pad', r.pad, [0, 0, 0], false);
    if (pad.some((v) => v < 0 || v > 255)) throw new Error(`"pad" must be a colour of three values from 0 to 255 (R, G, B), got ${JSON.stringify(r.pad)}`);
    spec.pad = pad.map(Math.round) as [number, number, number];
  }
  return spec;
}

/** The tensor dimensions a spec produces for a batch of one. */
export function tensorDims(spec: PreprocessSpec): number[] {
  return spec.layout === 'NCHW' ? [1, 3, spec.height, spec.width] : [1, spec.height, spec.width, 3];
}

/** The region of interest in frame pixels (the whole frame without one). */
export function roiRect(sourceWidth: number, sourceHeight: number, roi: RegionOfInterest | undefined): Rect {
  if (!roi) return { x: 0, y: 0, width: sourceWidth, height: sourceHeight };
  const x = Math.min(sourceWidth - 1, Math.round(roi.x * sourceWidth));
  const y = Math.min(sourceHeight - 1, Math.round(roi.y * sourceHeight));
  const width = Math.max(1, Math.min(sourceWidth - x, Math.round(roi.width * sourceWidth)));
  const height = Math.max(1, Math.min(sourceHeight - y, Math.round(roi.height * sourceHeight)));
  return { x, y, width, height };
}

/**
 * Pure maths of the resize, done explicitly (not left to sharp's own cover/contain rounding) so
 * boxes can be mapped back exactly:
 * - fill: the region is stretched to the input;
 * - contain (letterbox): scaled by min(W/w, H/h), rounded to whole pixels and centred, bars
 *   around it (left/top bar = floor of half the spare pixels, as Ultralytics' LetterBox does);
 * - cover: the centred part of the region with the input's aspect ratio is cut out, then scaled.
 */
export function resizeGeometry(sourceWidth: number, sourceHeight: number, spec: Pick<PreprocessSpec, 'width' | 'height' | 'resize' | 'roi'>): ResizeGeometry {
  const region = roiRect(sourceWidth, sourceHeight, spec.roi);
  const full = { x: 0, y: 0, width: spec.width, height: spec.height };
  if (spec.resize === 'contain') {
    const scale = Math.min(spec.width / region.width, spec.height / region.height);
    const width = Math.max(1, Math.min(spec.width, Math.round(region.width * scale)));
    const height = Math.max(1, Math.min(spec.height, Math.round(region.height * scale)));
    return { source: region, target: { x: Math.floor((spec.width - width) / 2), y: Math.floor((spec.height - height) / 2), width, height } };
  }
  if (spec.resize === 'cover') {
    const scale = Math.max(spec.width / region.width, spec.height / region.height);
    const width = Math.max(1, Math.min(region.width, Math.round(spec.width / scale)));
    const height = Math.max(1, Math.min(region.height, Math.round(spec.height / scale)));
    const source = {
      x: region.x + Math.floor((region.width - width + 1) / 2),
      y: region.y + Math.floor((region.height - height + 1) / 2),
      width,
      height,
    };
    return { source, target: full };
  }
  return { source: region, target: full };
}
