/**
 * Drawing results onto a frame with sharp: boxes with their labels and scores, or a classification
 * label, as an SVG overlay composited onto the JPEG (librsvg draws it; no canvas dependency).
 */
import sharp from 'sharp';
import { classColour, trackPrefix } from './detection';
import { describeReceived } from './red-types';

/** A box (or circle) to draw, in frame pixels. */
export interface Shape {
  kind: 'rect' | 'circle';
  x: number;
  y: number;
  w: number;
  h: number;
  label?: string;
  colour: string;
  lineWidth?: number;
}

export interface Overlay {
  shapes: Shape[];
  /** A classification: one label in a banner at the top left. */
  caption?: { text: string; colour: string };
}

export interface AnnotateOptions {
  /** Stroke width in pixels; 0 or unset: about 1/200 of the frame's shorter side, at least 2. */
  lineWidth?: number;
  /** Label text height in pixels; 0 or unset: about 1/25 of the shorter side, at least 12. */
  fontSize?: number;
  /** JPEG quality 1..100. */
  quality?: number;
}

const DEFAULT_STROKE = '#FFC000'; // node-red-node-annotate-image's default

const pct = (score: number) => `${Math.round(score * 100)}%`;
const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** A colour safe to put in an SVG attribute: #rgb / #rrggbb / a CSS colour name, else the default. */
function safeColour(value: unknown, fallback: string): string {
  return typeof value === 'string' && /^(#[0-9a-f]{3,8}|[a-z]{3,30})$/i.test(value.trim()) ? value.trim() : fallback;
}

/**
 * What to draw for a message: ml-inference's detections (msg.payload.detections, with ml-track's
 * track ids when it set them), else
 * msg.annotations in node-red-node-annotate-image's shape ({type, bbox | x y w h | r, label, stroke,
 * lineWidth}), else a classification ({label, score}). Throws saying what was expected.
 */
export function overlayFor(payload: unknown, annotations: unknown): Overlay {
  const p = payload as { detections?: unknown; label?: unknown; score?: unknown; index?: unknown; topK?: Array<{ index?: unknown }> } | null;
  if (p && typeof p === 'object' && Array.isArray(p.detections)) {
    const shapes = p.detections.map((d, i) => {
      const det = d as { label?: unknown; score?: unknown; index?: unknown; track?: unknown; box?: { x?: unknown; y?: unknown; w?: unknown; h?: unknown } };
      const b = det?.box;
      if (!b || ![b.x, b.y, b.w, b.h].every(finite)) {
        throw new Error(`msg.payload.detections[${i}].box must be {x, y, w, h} in pixels, got ${JSON.stringify(b)}`);
      }
      const label = `${trackPrefix(det.track)}${String(det.label ?? det.index ?? '')}${finite(det.score) ? ` ${pct(det.score)}` : ''}`.trim();
      return { kind: 'rect' as const, x: b.x as number, y: b.y as number, w: b.w as number, h: b.h as number, label, colour: classColour(finite(det.index) ? det.index : i) };
    });
    return { shapes };
  }
  if (Array.isArray(annotations)) {
    const shapes = annotations.map((a, i): Shape => {
      const ann = a as { type?: unknown; bbox?: unknown; x?: unknown; y?: unknown; w?: unknown; h?: unknown; r?: unknown; label?: unknown; stroke?: unknown; lineWidth?: unknown };
      const kind = ann?.type === 'circle' ? 'circle' : 'rect';
      let x: unknown, y: unknown, w: unknown, h: unknown;
      if (Array.isArray(ann?.bbox)) [x, y, w, h] = ann.bbox;
      else if (kind === 'circle') [x, y, w, h] = [Number(ann.x) - Number(ann.r), Number(ann.y) - Number(ann.r), 2 * Number(ann.r), 2 * Number(ann.r)];
      else [x, y, w, h] = [ann?.x, ann?.y, ann?.w, ann?.h];
      if (![x, y, w, h].every(finite)) {
        throw new Error(`msg.annotations[${i}] must have bbox [x, y, w, h] (or x, y, w, h; or x, y, r for a circle) in pixels, got ${JSON.stringify(a)}`);
      }
      return {
        kind, x: x as number, y: y as number, w: w as number, h: h as number,
        label: ann.label === undefined ? undefined : String(ann.label),
        colour: safeColour(ann.stroke, DEFAULT_STROKE),
        lineWidth: finite(ann.lineWidth) && ann.lineWidth > 0 ? ann.lineWidth : undefined,
      };
    });
    return { shapes };
  }
  if (p && typeof p === 'object' && typeof p.label === 'string') {
    const index = finite(p.index) ? p.index : finite(p.topK?.[0]?.index) ? (p.topK![0].index as number) : 0;
    return { shapes: [], caption: { text: `${p.label}${finite(p.score) ? ` ${pct(p.score)}` : ''}`, colour: classColour(index) } };
  }
  throw new Error(`Expected msg.payload to hold detections {detections: [...]} or a classification {label, score}, or msg.annotations a list of boxes, but msg.payload is ${describeReceived(payload)}`);
}

function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** Rough width of a label in a sans-serif font, for its background. */
const textWidth = (text: string, size: number) => Math.ceil(text.length * size * 0.6);

/** The overlay as SVG of the frame's size. */
export function overlaySvg(width: number, height: number, overlay: Overlay, options: AnnotateOptions = {}): string {
  const shorter = Math.min(width, height);
  const line = options.lineWidth || Math.max(2, Math.round(shorter / 200));
  const font = options.fontSize || Math.max(12, Math.round(shorter / 25));
  const pad = Math.max(2, Math.round(font / 5));
  const parts: string[] = [];
  const label = (text: string, x: number, y: number, colour: string) => {
    const w = textWidth(text, font) + 2 * pad;
    const h = font + 2 * pad;
    const left = Math.max(0, Math.min(width - w, x));
    const top = Math.max(0, Math.min(height - h, y));
    parts.push(`<rect x="${left}" y="${top}" width="${w}" height="${h}" fill="${colour}"/>`,
      `<text x="${left + pad}" y="${top + pad + font * 0.8}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif" font-size="${font}" fill="#FFFFFF">${escapeXml(text)}</text>`);
  };
  for (const s of overlay.shapes) {
    const lw = s.lineWidth ?? line;
    if (s.kind === 'circle') {
      parts.push(`<ellipse cx="${s.x + s.w / 2}" cy="${s.y + s.h / 2}" rx="${s.w / 2}" ry="${s.h / 2}" fill="none" stroke="${s.colour}" stroke-width="${lw}"/>`);
    } else {
      parts.push(`<rect x="${s.x}" y="${s.y}" width="${s.w}" height="${s.h}" fill="none" stroke="${s.colour}" stroke-width="${lw}"/>`);
    }
  }
  // Labels after every box, so no box is drawn over another's label.
  for (const s of overlay.shapes) {
    if (!s.label) continue;
    const h = font + 2 * pad;
    const lw = s.lineWidth ?? line;
    // Above the box when there is room, else just inside its top edge.
    const above = s.y - lw / 2 - h;
    label(s.label, Math.round(s.x - lw / 2), Math.round(above >= 0 ? above : s.y + lw / 2), s.colour);
  }
  if (overlay.caption) label(overlay.caption.text, 0, 0, overlay.caption.colour);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${parts.join('')}</svg>`;
}

/** The frame upright (EXIF orientation applied, as ml-preprocess sees it) with the overlay drawn, as JPEG. */
export async function annotateImage(image: Buffer, overlay: Overlay, options: AnnotateOptions = {}): Promise<{ image: Buffer; width: number; height: number }> {
  if (!Buffer.isBuffer(image) || image.length === 0) {
    throw new Error(`Expected the frame to annotate to be an image Buffer (JPEG, PNG, WebP...) but received ${describeReceived(image)}`);
  }
  let width: number;
  let height: number;
  try {
    const meta = await sharp(image).metadata();
    const swap = (meta.orientation ?? 1) >= 5; // EXIF orientations 5-8 swap width and height
    width = (swap ? meta.height : meta.width) ?? 0;
    height = (swap ? meta.width : meta.height) ?? 0;
    if (!width || !height) throw new Error('image has no size');
  } catch (err) {
    throw new Error(`the frame to annotate is not a decodable image (${(err as Error).message.split('\n')[0]}); expected JPEG, PNG or WebP bytes`);
  }
  const svg = overlaySvg(width, height, overlay, options);
  let out: Buffer;
  try {
    // Upright first (EXIF orientation), so the overlay's pixels are the frame's pixels as ml-preprocess measured them.
    out = await sharp(image, { limitInputPixels: 100_000_000 })
      .rotate()
      .composite([{ input: Buffer.from(svg), top: 0, left: 0 }])
      .jpeg({ quality: options.quality ?? 85, chromaSubsampling: '4:4:4' }) // thin coloured lines stay sharp
      .toBuffer();
  } catch (err) {
    throw new Error(`the frame to annotate is not a decodable image (${(err as Error).message.split('\n')[0]}); expected JPEG, PNG or WebP bytes`);
  }
  return { image: out, width, height };
}
