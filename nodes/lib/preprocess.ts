/** Image bytes -> model input tensor with sharp, following a PreprocessSpec exactly. */
import * as os from 'os';
import sharp from 'sharp';
import { readJpegHeader } from './jpeg-header';
import { Limiter, modelRoomGate } from './limiter';
import { PreprocessSpec, RegionOfInterest, ResizeGeometry, resizeGeometry, tensorDims } from './preprocess-spec';
import { markFinite, TensorValue } from './tensor';

// Frames are decoded on libvips threads; one is plenty per frame and leaves cores for inference.
sharp.concurrency(1);
sharp.cache(false);

/**
 * At most one decode per core at a time, shared by every ml-preprocess node: with many cameras,
 * more would only queue inside libuv's thread pool (slowing each frame) and hold more images in memory.
 */
const decodeSlots = new Limiter(Math.max(1, typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length), modelRoomGate);

export interface PreprocessResult {
  tensor: TensorValue;
  sourceWidth: number;
  sourceHeight: number;
  /** Where the input came from in the frame, to map model coordinates (boxes) back. */
  geometry: ResizeGeometry;
  ms: number;
}

/**
 * Pure maths: packed RGB pixels (HWC, 0..255) -> tensor values. For float32 each value is
 * (pixel - mean) / std per channel; for uint8 the raw pixels are kept (the graph normalises).
 */
export function pixelsToTensor(rgb: Uint8Array, width: number, height: number, spec: PreprocessSpec): TensorValue {
  const plane = width * height;
  if (rgb.length !== plane * 3) throw new Error(`expected ${plane * 3} RGB bytes for ${width}x${height}, got ${rgb.length}`);
  const order = spec.channels === 'RGB' ? [0, 1, 2] : [2, 1, 0];
  const dims = tensorDims({ ...spec, width, height });
  const asFloat = spec.dtype === 'float32';
  const data = asFloat ? new Float32Array(plane * 3) : new Uint8Array(plane * 3);
  let finite = true;
  for (let out = 0; out < 3; out++) {
    const src = order[out];
    // One lookup per value: the 256 possible results of (pixel - mean) / std for this channel, each
    // rounded to float32 just as when worked out per pixel; for uint8 the pixel itself.
    const table = asFloat ? new Float32Array(256) : new Uint8Array(256);
    for (let v = 0; v < 256; v++) table[v] = asFloat ? (v - spec.mean[src]) * (1 / spec.std[src]) : v;
    if (asFloat && !(table as Float32Array).every(Number.isFinite)) finite = false; // a std so small the values overflow
    if (spec.layout === 'NCHW') {
      const base = out * plane;
      for (let i = 0, j = src; i < plane; i++, j += 3) data[base + i] = table[rgb[j]];
    } else {
      for (let i = out, j = src; i < data.length; i += 3, j += 3) data[i] = table[rgb[j]];
    }
  }
  // Every value came from one of the tables: ml-inference need not look for NaN or Infinity again.
  if (finite) markFinite(data);
  return { type: spec.dtype, dims, data };
}

/**
 * Decodes, orients, crops, resizes and normalises one image. Throws a user-facing error on bad input.
 */
export function imageToTensor(image: Buffer, spec: PreprocessSpec, camera?: string, queuer?: string): Promise<PreprocessResult> {
  // With a camera named, a newer frame of it from the same queuer (an ml-preprocess node) replaces
  // its frame still waiting (SupersededError).
  return decodeSlots.run(() => decodeToTensor(image, spec), camera, queuer);
}

async function decodeToTensor(image: Buffer, spec: PreprocessSpec): Promise<PreprocessResult> {
  const started = performance.now();
  const { pipeline, sourceWidth, sourceHeight } = await openImage(image);
  const { tensor, geometry } = await pipelineToTensor(pipeline, sourceWidth, sourceHeight, spec);
  return { tensor, sourceWidth, sourceHeight, geometry, ms: performance.now() - started };
}

/**
 * One tensor per region of one image, decoding the image once: a frame with six boxes to name is
 * decoded once rather than six times. Regions are ROIs as in PreprocessSpec.roi; the tensors are
 * those imageToTensor would give for `{...spec, roi}`.
 */
export async function regionTensors(image: Buffer, regions: RegionOfInterest[], spec: PreprocessSpec): Promise<TensorValue[]> {
  if (!regions.length) return [];
  return decodeSlots.run(async () => {
    const { pipeline, sourceWidth, sourceHeight, depth } = await openImage(image);
    const tensors: TensorValue[] = [];
    if (depth !== 'uchar') {
      // 16-bit and float images (rare from cameras) are decoded per region: sharp's raw output
      // reduces them to 8 bits first, which imageToTensor does only after resizing.
      for (const roi of regions) {
        tensors.push((await pipelineToTensor(decoder(image), sourceWidth, sourceHeight, { ...spec, roi })).tensor);
      }
      return tensors;
    }
    // Decoded as it is stored (alpha kept): each region then goes through the very steps
    // imageToTensor takes (flatten, crop, resize, convert), so the results match.
    let decoded: { data: Buffer; info: sharp.OutputInfo };
    try {
      decoded = await pipeline.raw().toBuffer({ resolveWithObject: true });
    } catch (err) {
      throw undecodable(err);
    }
    const { data: pixels, info } = decoded;
    const raw = { width: info.width, height: info.height, channels: info.channels as 1 | 2 | 3 | 4 };
    // One region at a time: the decode slot is held for this frame, and libvips runs one thread per image anyway.
    for (const roi of regions) {
      tensors.push((await pipelineToTensor(sharp(pixels, { raw }), sourceWidth, sourceHeight, { ...spec, roi })).tensor);
    }
    return tensors;
  });
}

/** A sharp pipeline decoding image bytes, oriented as their EXIF says. */
function decoder(image: Buffer): sharp.Sharp {
  // failOn 'warning' rejects truncated or corrupt JPEGs instead of feeding grey pixels to the model.
  return sharp(image, { failOn: 'warning', limitInputPixels: 100_000_000 }).rotate();
}

/** A decoding pipeline for image bytes, the oriented size and the depth of a pixel value. */
async function openImage(image: Buffer): Promise<{ pipeline: sharp.Sharp; sourceWidth: number; sourceHeight: number; depth: string }> {
  if (!Buffer.isBuffer(image) || image.length === 0) {
    throw new Error(`msg.payload must be an image Buffer (JPEG, PNG, WebP...), got ${describeValue(image)}`);
  }
  try {
    const pipeline = decoder(image);
    // Read from the JPEG header when it can be (no trip through libvips), else by sharp.
    const jpeg = readJpegHeader(image);
    const meta = jpeg ?? (await sharp(image).metadata());
    const swap = (meta.orientation ?? 1) >= 5; // EXIF orientations 5-8 swap width and height
    const sourceWidth = (swap ? meta.height : meta.width) ?? 0;
    const sourceHeight = (swap ? meta.width : meta.height) ?? 0;
    if (!sourceWidth || !sourceHeight) throw new Error('image has no size');
    return { pipeline, sourceWidth, sourceHeight, depth: jpeg ? 'uchar' : (meta as sharp.Metadata).depth ?? 'uchar' };
  } catch (err) {
    throw undecodable(err);
  }
}

/** Crops, resizes, pads and normalises what `pipeline` yields (an image of sourceWidth x sourceHeight) as `spec` says. */
async function pipelineToTensor(
  pipeline: sharp.Sharp, sourceWidth: number, sourceHeight: number, spec: PreprocessSpec,
): Promise<{ tensor: TensorValue; geometry: ResizeGeometry }> {
  // The crop, scale and bars are worked out here rather than by sharp's fit modes, so that
  // msg.preprocess can say exactly where each model pixel came from.
  const geometry = resizeGeometry(sourceWidth, sourceHeight, spec);
  const { source, target } = geometry;
  // Letterbox bars and transparent pixels: the `pad` colour, else the mean colour so they normalise to zero.
  const [r, g, b] = spec.pad ?? spec.mean.map((v) => Math.max(0, Math.min(255, Math.round(spec.dtype === 'float32' ? v : 0))));
  // Transparency is flattened before resizing (libvips runs flatten first): a resize with alpha would
  // premultiply, so what a transparent pixel became would hang on whether and how the image is scaled.
  pipeline = pipeline.flatten({ background: { r, g, b } });
  if (source.x !== 0 || source.y !== 0 || source.width !== sourceWidth || source.height !== sourceHeight) {
    pipeline = pipeline.extract({ left: source.x, top: source.y, width: source.width, height: source.height });
  }
  pipeline = pipeline.resize(target.width, target.height, { fit: 'fill' });
  if (target.width !== spec.width || target.height !== spec.height) {
    pipeline = pipeline.extend({
      left: target.x,
      top: target.y,
      right: spec.width - target.x - target.width,
      bottom: spec.height - target.y - target.height,
      background: { r, g, b, alpha: 1 },
    });
  }
  pipeline = pipeline.removeAlpha().toColourspace('srgb');
  let pixels: Buffer;
  let info: sharp.OutputInfo;
  try {
    ({ data: pixels, info } = await pipeline.raw().toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw undecodable(err);
  }
  if (info.channels !== 3) {
    // Grey images stay single-band in some libvips paths; widen to RGB.
    const plane = info.width * info.height;
    const rgb = Buffer.alloc(plane * 3);
    for (let i = 0; i < plane; i++) rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = pixels[i * info.channels];
    pixels = rgb;
  }
  return { tensor: pixelsToTensor(pixels, info.width, info.height, spec), geometry };
}

function undecodable(err: unknown): Error {
  // libvips repeats its warnings line by line ("premature end of JPEG image" five times): once each.
  const reasons = [...new Set((err as Error).message.split('\n').map((l) => l.trim()).filter(Boolean))].join('; ');
  return new Error(`msg.payload is not a decodable image (${reasons}); expected JPEG, PNG or WebP bytes`);
}

export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Buffer.isBuffer(value)) return `an empty Buffer`;
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? `a string ("${value.slice(0, 40)}")` : typeof value;
}
