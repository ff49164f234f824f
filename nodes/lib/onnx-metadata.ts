/**
 * Reads an ONNX model's self-description (metadata_props) without onnxruntime, which does not
 * expose custom metadata to JavaScript. ModelProto is protobuf: we walk its top-level fields and
 * decode only field 14 (repeated StringStringEntryProto {key = 1, value = 2}).
 */
import { PreprocessSpec, validatePreprocessSpec } from './preprocess-spec';

const METADATA_PROPS_FIELD = 14;

class ProtoReader {
  pos = 0;
  constructor(private readonly buf: Uint8Array, private readonly end = buf.length) {}

  get done(): boolean {
    return this.pos >= this.end;
  }

  varint(): number {
    let result = 0;
    let multiplier = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Error('truncated varint');
      const byte = this.buf[this.pos++];
      result += (byte & 0x7f) * multiplier;
      if ((byte & 0x80) === 0) return result;
      multiplier *= 128;
    }
    throw new Error('malformed varint');
  }

  /** Returns [start, end) of a length-delimited field's bytes and moves past it. */
  lengthDelimited(): [number, number] {
    const length = this.varint();
    const start = this.pos;
    if (start + length > this.end) throw new Error('field runs past the end of the file');
    this.pos += length;
    return [start, start + length];
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0: this.varint(); break;
      case 1: this.advance(8); break;
      case 2: this.lengthDelimited(); break;
      case 5: this.advance(4); break;
      default: throw new Error(`unsupported protobuf wire type ${wireType}`);
    }
  }

  private advance(n: number): void {
    if (this.pos + n > this.end) throw new Error('field runs past the end of the file');
    this.pos += n;
  }
}

/** Returns the model's metadata_props as a plain object. Throws if the bytes are not a protobuf model. */
export function readOnnxMetadataProps(model: Uint8Array): Record<string, string> {
  if (model.length === 0) throw new Error('empty (0 bytes), not an ONNX model');
  const decoder = new TextDecoder('utf-8', { fatal: false });
  const props: Record<string, string> = {};
  const reader = new ProtoReader(model);
  let sawGraph = false;
  try {
    while (!reader.done) {
      const tag = reader.varint();
      const field = Math.floor(tag / 8);
      const wireType = tag & 7;
      if (field === 0) throw new Error('field number 0');
      if (field === 7) sawGraph = true;
      if (field === METADATA_PROPS_FIELD && wireType === 2) {
        const [start, end] = reader.lengthDelimited();
        const entry = new ProtoReader(model, end);
        entry.pos = start;
        let key = '';
        let value = '';
        while (!entry.done) {
          const entryTag = entry.varint();
          if ((entryTag & 7) === 2 && (entryTag >> 3 === 1 || entryTag >> 3 === 2)) {
            const [s, e] = entry.lengthDelimited();
            const text = decoder.decode(model.subarray(s, e));
            if (entryTag >> 3 === 1) key = text; else value = text;
          } else {
            entry.skip(entryTag & 7);
          }
        }
        if (key) props[key] = value;
      } else {
        reader.skip(wireType);
      }
    }
  } catch (err) {
    throw new Error(`not a valid ONNX model (${(err as Error).message})`);
  }
  if (!sawGraph) throw new Error('not a valid ONNX model (it has no graph)');
  return props;
}

export type ModelTask = 'classify' | 'detect';
export type DetectionLayout = 'yolov5' | 'yolov8' | 'end2end' | 'ssd';
export type BoxFormat = 'xyxy' | 'yxyx' | 'cxcywh';

/** How a detection model's outputs are laid out (the `detection` metadata key). */
export interface DetectionMetadata {
  layout?: DetectionLayout;
  /** Corner order of SSD-style box outputs. */
  boxes?: BoxFormat;
  /** Box coordinates are fractions (0..1) of the model input instead of its pixels. */
  normalized?: boolean;
}

export interface ModelDescription {
  labels?: string[];
  preprocess?: PreprocessSpec;
  /** What the model does: our `task` key, or Ultralytics' (other values, e.g. "segment", kept as written). */
  task?: string;
  detection?: DetectionMetadata;
  /** What an Ultralytics export says about itself (imgsz is [height, width]). */
  ultralytics?: { imgsz?: [number, number]; stride?: number; task?: string };
  /** Problems found in the metadata; the model still loads, the user is told. */
  warnings: string[];
  props: Record<string, string>;
}

/**
 * Ultralytics writes `names` with Python's str() of a dict: {0: 'person', 1: "bob's"}. Reads that
 * (and a JSON object or list) into labels in class order; a class missing from the dict is named by
 * its number.
 */
export function parseClassNames(text: string): string[] {
  let pos = 0;
  const fail = (what: string): never => {
    throw new Error(`expected ${what} at character ${pos} of ${JSON.stringify(text.length > 60 ? `${text.slice(0, 60)}...` : text)}`);
  };
  const space = () => { while (pos < text.length && /\s/.test(text[pos])) pos++; };
  const literal = (): string => {
    const quote = text[pos];
    if (quote !== "'" && quote !== '"') fail('a quoted class name');
    let out = '';
    for (pos++; pos < text.length && text[pos] !== quote; pos++) {
      if (text[pos] !== '\\') { out += text[pos]; continue; }
      const next = text[++pos];
      const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"' };
      if (next in simple) out += simple[next];
      else if (next === 'x' || next === 'u' || next === 'U') {
        const length = next === 'x' ? 2 : next === 'u' ? 4 : 8;
        const code = parseInt(text.slice(pos + 1, pos + 1 + length), 16);
        if (!Number.isFinite(code)) fail('a hexadecimal escape');
        out += String.fromCodePoint(code);
        pos += length;
      } else out += `\\${next ?? ''}`;
    }
    if (pos >= text.length) fail(`a closing ${quote}`);
    pos++;
    return out;
  };
  const names = new Map<number, string>();
  space();
  const open = text[pos];
  if (open !== '{' && open !== '[') fail('{ or [');
  const close = open === '{' ? '}' : ']';
  pos++;
  for (let i = 0; ; i++) {
    space();
    if (text[pos] === close) { pos++; break; }
    let key = i;
    if (open === '{') {
      const keyText = text[pos] === "'" || text[pos] === '"' ? literal() : /^-?\d+/.exec(text.slice(pos))?.[0] ?? fail('a class number');
      if (!(text[pos - 1] === "'" || text[pos - 1] === '"')) pos += keyText.length;
      key = Number(keyText);
      if (!Number.isInteger(key) || key < 0 || key > 100_000) fail('a class number from 0');
      space();
      if (text[pos] !== ':') fail('":"');
      pos++;
      space();
    }
    names.set(key, literal());
    space();
    if (text[pos] === ',') pos++;
    else if (text[pos] !== close) fail(`"," or "${close}"`);
  }
  space();
  if (pos !== text.length) fail('the end');
  if (names.size === 0) throw new Error('no class names in it');
  const count = Math.max(...names.keys()) + 1;
  return Array.from({ length: count }, (_, i) => names.get(i) ?? String(i));
}

/** Ultralytics' imgsz: "[640, 640]" (height, width), "(480, 640)" or "640". */
function parseImageSize(text: string): [number, number] {
  const numbers = (text.match(/\d+/g) ?? []).map(Number);
  if (!/^\s*[[(]?\s*\d+\s*(,\s*\d+\s*)?[\])]?\s*$/.test(text) || numbers.some((n) => n < 1 || n > 8192)) {
    throw new Error(`expected [height, width] or one size in pixels, got ${JSON.stringify(text)}`);
  }
  return numbers.length === 1 ? [numbers[0], numbers[0]] : [numbers[0], numbers[1]];
}

const LAYOUTS: readonly DetectionLayout[] = ['yolov5', 'yolov8', 'end2end', 'ssd'];
const BOX_FORMATS: readonly BoxFormat[] = ['xyxy', 'yxyx', 'cxcywh'];

function parseDetectionMetadata(text: string): DetectionMetadata {
  const raw = JSON.parse(text) as Record<string, unknown>;
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error('expected a JSON object {layout, boxes?, normalized?}');
  const meta: DetectionMetadata = {};
  if (raw.layout !== undefined) {
    if (!LAYOUTS.includes(raw.layout as DetectionLayout)) throw new Error(`"layout" must be one of ${LAYOUTS.join(', ')}, got ${JSON.stringify(raw.layout)}`);
    meta.layout = raw.layout as DetectionLayout;
  }
  if (raw.boxes !== undefined) {
    if (!BOX_FORMATS.includes(raw.boxes as BoxFormat)) throw new Error(`"boxes" must be one of ${BOX_FORMATS.join(', ')}, got ${JSON.stringify(raw.boxes)}`);
    meta.boxes = raw.boxes as BoxFormat;
  }
  if (raw.normalized !== undefined) {
    if (typeof raw.normalized !== 'boolean') throw new Error(`"normalized" must be true or false, got ${JSON.stringify(raw.normalized)}`);
    meta.normalized = raw.normalized;
  }
  return meta;
}

/**
 * Interprets the metadata keys our models carry: `labels`, `preprocess` and `detection` (JSON) and
 * `task`, and those Ultralytics' exporter writes: `names`, `task`, `imgsz`, `stride`. An Ultralytics
 * model without our `preprocess` key is pre-processed as Ultralytics does: detection models are
 * letterboxed to imgsz with grey (114) bars, classifiers centre-cropped; RGB, /255, NCHW.
 */
export function describeModel(props: Record<string, string>): ModelDescription {
  const description: ModelDescription = { warnings: [], props };
  if (props.labels !== undefined) {
    try {
      const labels = JSON.parse(props.labels);
      if (!Array.isArray(labels) || labels.length === 0 || !labels.every((l) => typeof l === 'string')) {
        throw new Error('expected a JSON array of class names');
      }
      description.labels = labels;
    } catch (err) {
      description.warnings.push(`metadata "labels" ignored: ${(err as Error).message}`);
    }
  }
  if (props.preprocess !== undefined) {
    try {
      description.preprocess = validatePreprocessSpec(JSON.parse(props.preprocess));
    } catch (err) {
      description.warnings.push(`metadata "preprocess" ignored: ${(err as Error).message}`);
    }
  }
  if (props.task !== undefined && props.task.trim()) description.task = props.task.trim().toLowerCase();
  if (props.detection !== undefined) {
    try {
      description.detection = parseDetectionMetadata(props.detection);
    } catch (err) {
      description.warnings.push(`metadata "detection" ignored: ${(err as Error).message}`);
    }
  }
  const ultralytics = props.names !== undefined || props.imgsz !== undefined;
  if (!ultralytics) return description;
  description.ultralytics = {};
  if (description.task) description.ultralytics.task = description.task;
  if (props.names !== undefined && !description.labels) {
    try {
      description.labels = parseClassNames(props.names);
    } catch (err) {
      description.warnings.push(`metadata "names" ignored: ${(err as Error).message}`);
    }
  }
  if (props.stride !== undefined) {
    const stride = Number(props.stride);
    if (Number.isInteger(stride) && stride > 0) description.ultralytics.stride = stride;
    else description.warnings.push(`metadata "stride" ignored: expected a whole number of pixels, got ${JSON.stringify(props.stride)}`);
  }
  if (props.imgsz !== undefined) {
    try {
      description.ultralytics.imgsz = parseImageSize(props.imgsz);
    } catch (err) {
      description.warnings.push(`metadata "imgsz" ignored: ${(err as Error).message}`);
    }
  }
  const size = description.ultralytics.imgsz;
  if (size && !description.preprocess) {
    const classify = description.task === 'classify';
    description.preprocess = validatePreprocessSpec({
      width: size[1], height: size[0], resize: classify ? 'cover' : 'contain', channels: 'RGB', layout: 'NCHW', dtype: 'float32',
      mean: [0, 0, 0], std: [255, 255, 255], ...(classify ? {} : { pad: [114, 114, 114] }),
    });
  }
  return description;
}
