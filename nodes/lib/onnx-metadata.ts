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

export interface ModelDescription {
  labels?: string[];
  preprocess?: PreprocessSpec;
  /** Problems found in the metadata; the model still loads, the user is told. */
  warnings: string[];
  props: Record<string, string>;
}

/** Interprets the metadata keys our models carry: `labels` and `preprocess` (both JSON). */
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
  return description;
}
